"""Training throughput and MFU of ladder sizes on one GPU (bf16), cuDNN vs XLA attention.

Uses only the model/trainer library (no data pipeline): random token batches of full
sequence length 2048. MFU counts 6N + attention FLOPs per token against the device's dense
bf16 peak. Writes a JSON line per configuration to --out as well as printing a table.

  python benchmarks/bench_train_gpu.py --sizes 150M 530M 1B --out results.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from olmo_jax import model as M
from olmo_jax import optim, sharding, sizes, trainer

# Per-device microbatch (sequences of 2048) and remat preset that fit 80 GB in bf16.
PLAN = {"150M": (16, "none"), "300M": (16, "dots_saveable"), "530M": (16, "dots_saveable"),
        "750M": (8, "dots_saveable"), "1B": (8, "dots_saveable")}


def bench_one(size: str, micro: int, remat: str, attention: str, steps: int) -> dict:
  s = sizes.get_size(size)
  cfg = M.ModelConfig(d_model=s.d_model, n_heads=s.n_heads, n_layers=s.n_layers,
                      dtype="bfloat16", remat=remat, attention=attention)
  tx = optim.make_optimizer(peak_lr=1e-3, warmup_steps=10, total_steps=1000)
  mesh = sharding.make_mesh()
  step_cfg = trainer.StepConfig(loss_chunk_tokens=trainer.default_loss_chunk())
  state, step = trainer.setup(cfg, tx, step_cfg, mesh)
  bsh = sharding.batch_sharding(mesh)
  n = jax.device_count() * micro
  rng = np.random.default_rng(0)
  batch = trainer.put_batch({"input_ids": rng.integers(0, 50280, (n, 2049), dtype=np.int32)},
                            bsh)
  t0 = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / steps
  tps = n * 2048 / dt
  fpt = sizes.flops_per_token(s.d_model, s.n_layers, 2048, s.published_params)
  peak = trainer.device_peak_flops()
  mem = jax.devices()[0].memory_stats() or {}
  return {"size": size, "attention": attention, "remat": remat, "batch": n,
          "step_s": dt, "tokens_per_s": tps, "mfu": tps * fpt / (peak * jax.device_count())
          if peak else None, "compile_s": compile_s, "loss": float(m["loss"]),
          "peak_mem_gb": mem.get("peak_bytes_in_use", 0) / 2**30,
          "device": jax.devices()[0].device_kind}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", nargs="+", default=["150M", "530M", "1B"])
  p.add_argument("--attention", nargs="+", default=["cudnn", "xla"])
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--out", default="")
  a = p.parse_args()
  rows = []
  print(f"{'size':>5} {'attn':>6} {'remat':>14} {'batch':>5} {'step s':>7} {'tok/s':>10} "
        f"{'MFU':>6} {'mem GB':>7}")
  for size in a.sizes:
    micro, remat = PLAN[size]
    for attn in a.attention:
      try:
        r = bench_one(size, micro, remat, attn, a.steps)
      except Exception as e:  # an unsupported kernel must not hide the other rows
        r = {"size": size, "attention": attn, "error": f"{type(e).__name__}: {e}"[:500]}
        print(f"{size:>5} {attn:>6} failed: {r['error'][:200]}", flush=True)
      else:
        print(f"{size:>5} {attn:>6} {remat:>14} {r['batch']:>5} {r['step_s']:>7.3f} "
              f"{r['tokens_per_s']:>10,.0f} {100 * (r['mfu'] or 0):>5.1f}% "
              f"{r['peak_mem_gb']:>7.1f}", flush=True)
      rows.append(r)
  if a.out:
    with open(a.out, "w") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
