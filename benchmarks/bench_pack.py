"""Packed training (olmo_jax/pack.py): tokens/s per replica for K replicas in one program.

Two measurements, each a comparison within one run:

  python benchmarks/bench_pack.py --sizes 4M 20M --ks 1 2 4 8 16 --seq_len 128 --batch 8
      The ladder shapes (50,304-row embedding, float32 on CPU) at a shorter sequence: the
      separate run's jitted step (trainer.make_train_step), then the packed step of K
      replicas; seconds per step, tokens/s per replica and in all, and MFU where the
      device's peak is known (GPU/TPU). --until_oom doubles K until the device runs out of
      memory and reports the largest K that fitted.
  python benchmarks/bench_pack.py --demo
      The datadecide-demo grid (configs/datadecide/demo.py) trained packed and with
      --no-pack, one after the other in fresh workdirs: wall and CPU seconds of each, the
      largest difference between their results tables, and both recommendations.

Prints the machine (CPU model, devices), the date and the load average beside the figures.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from olmo_jax import runtime  # noqa: E402

runtime.init()  # before the imports that load JAX: on a CPU host JAX stays on the CPU, quietly

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from olmo_jax import config as config_lib  # noqa: E402
from olmo_jax import model as model_lib  # noqa: E402
from olmo_jax import optim, pack, sizes, trainer  # noqa: E402
from olmo_jax.plan import out_of_memory  # noqa: E402


def machine() -> str:
  cpu = "?"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  load = " ".join(f"{x:.2f}" for x in os.getloadavg())
  return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; CPU {cpu}, {os.cpu_count()} "
          f"cores, load average {load}; devices {jax.devices()}")


def build(size: str, batch: int, seq_len: int):
  """(model config, optimizer, step config) of a ladder shape at this batch and sequence."""
  s = sizes.get_size(size)
  cfg = model_lib.ModelConfig(d_model=s.d_model, n_heads=s.n_heads, n_layers=s.n_layers,
                              max_seq_len=seq_len, dtype=config_lib.default_dtype())
  schedule = optim.make_schedule(1e-3, 10, 1000, 0.1)
  tx = optim.make_optimizer(schedule)
  return cfg, tx, trainer.StepConfig(loss_chunk_tokens=trainer.default_loss_chunk(),
                                     lr_schedule=schedule)


def seconds_per_step(size: str, k: int, batch: int, seq_len: int, steps: int,
                     mode: str = "auto") -> float:
  """Mean seconds per step over `steps` steps after two untimed ones; k=0: the separate
  run's own step (no replica axis)."""
  return timed_steps(*build(size, batch, seq_len), k, batch, seq_len, steps, mode)


def timed_steps(cfg, tx, step_cfg, k: int, batch: int, seq_len: int, steps: int,
                mode: str = "auto") -> float:
  """seconds_per_step of a model config (k=0: the separate run's step)."""

  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (max(k, 1), batch, seq_len + 1))
  init = trainer.state_init_fn(cfg, tx, 0)
  if k == 0:
    state = jax.jit(init)()
    step, b = trainer.make_train_step(cfg, tx, step_cfg), {"input_ids": ids[0].astype("int32")}
  else:  # K copies of one init, built on the device (the values do not change the time)
    state = jax.jit(lambda: jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *x.shape)),
                                         init()))()
    step = pack.make_packed_step(cfg, tx, step_cfg, mode=mode)
    b = {"input_ids": ids.astype("int32")}
  b = jax.device_put(b)
  for _ in range(2):
    state, m = step(state, b)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, b)
  jax.block_until_ready(m)
  return (time.perf_counter() - t0) / steps


def sweep(size: str, ks: list[int], batch: int, seq_len: int, steps: int, until_oom: bool,
          mode: str = "auto"):
  """Rows {size, k, s_per_step, tok_s_replica, tok_s, mfu}; k=0 is the separate run."""
  cfg, _, _ = build(size, batch, seq_len)
  fpt = sizes.flops_per_token(cfg.d_model, cfg.n_layers, seq_len,
                              sizes.non_embedding_params(cfg.d_model, cfg.n_layers))
  peak = trainer.device_peak_flops()
  rows, k_list, i = [], [0, *ks], 0
  while i < len(k_list):
    k = k_list[i]
    try:
      t = seconds_per_step(size, k, batch, seq_len, steps, mode)
    except Exception as e:  # noqa: BLE001 (an accelerator's out-of-memory error ends the sweep)
      if not out_of_memory(e):
        raise
      print(f"{size} K={k}: out of memory; the largest K that fitted: {rows[-1]['k']}")
      break
    n = max(k, 1) * batch * seq_len
    row = {"size": size, "k": k, "batch": batch, "seq_len": seq_len, "s_per_step": t,
           "tok_s_replica": batch * seq_len / t, "tok_s": n / t,
           "mfu": n / t * fpt / peak if peak else None}
    rows.append(row)
    print(_fmt(row, rows[0]), flush=True)
    if until_oom and i == len(k_list) - 1:
      k_list.append(k * 2)
    i += 1
  return rows


def _fmt(row: dict, separate: dict) -> str:
  k = "separate" if row["k"] == 0 else f"K={row['k']}"
  mfu = f", MFU {100 * row['mfu']:.1f}%" if row["mfu"] is not None else ""
  return (f"{row['size']:>4} {k:>9}: {1e3 * row['s_per_step']:8.1f} ms/step, "
          f"{row['tok_s_replica']:10,.0f} tok/s per replica "
          f"({row['tok_s_replica'] / separate['tok_s_replica']:.2f}x the separate run), "
          f"{row['tok_s']:12,.0f} tok/s in all ({row['tok_s'] / separate['tok_s']:.2f}x){mfu}")


def run_demo(config: str, workdir: str, no_pack: bool) -> dict:
  """Wall and CPU seconds (this process's children) of the demo study in a fresh workdir."""
  cmd = [sys.executable, "-m", "olmo_jax.datadecide", "--config", config,
         "--workdir", workdir, "--workers", "2", *(["--no-pack"] if no_pack else [])]
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  with open(os.path.join(workdir, "report", "recommendation.json")) as f:
    rec = json.load(f)
  return {"wall_s": wall, "cpu_s": cpu, "best_recipe": rec["best_recipe"]}


def steps_alone(workdir: str, workers: int, steps: int = 10) -> tuple[float, dict]:
  """(wall seconds, per-size seconds per step) of the study's training steps alone: each
  size's separate-run step timed here, times its steps and its cells, spread over `workers`
  (no start-up, compilation, data, checkpoints or scoring): the floor under either arm."""

  cells: dict[str, list[dict]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, "cells", "*", "*", "*", "config.json"))):
    with open(path) as f:
      cells.setdefault(path.split(os.sep)[-3], []).append(json.load(f))
  total, per_step = 0.0, {}
  for size, cfgs in cells.items():
    c = ml_collections.ConfigDict(cfgs[0])
    mcfg = config_lib.model_config(c)
    schedule = optim.make_schedule(c.train.lr, 10, c.train.steps, 0.1)
    sc = trainer.StepConfig(loss_chunk_tokens=trainer.default_loss_chunk(), lr_schedule=schedule)
    t = timed_steps(mcfg, optim.make_optimizer(schedule), sc, 0, c.train.batch_size,
                    c.train.seq_len, steps)
    per_step[size] = t
    total += t * sum(x["train"]["steps"] for x in cfgs)
  return total / workers, per_step


def demo(config: str) -> None:
  """The demo grid packed and unpacked, one after the other; tables compared."""
  root = tempfile.mkdtemp(prefix="bench_pack_demo_")
  out = {}
  for name, no_pack in (("packed", False), ("--no-pack", True)):
    out[name] = run_demo(config, os.path.join(root, name), no_pack)
    print(f"{name:>9}: {out[name]['wall_s']:7.1f} s wall, {out[name]['cpu_s']:7.1f} CPU s; best "
          f"recipe {out[name]['best_recipe']}; load average {os.getloadavg()[0]:.2f}", flush=True)
  keys = ["recipe", "size", "seed", "step", "task", "metric"]
  a, b = (pd.read_csv(os.path.join(root, n, "results.csv")).sort_values(keys)
          .reset_index(drop=True) for n in out)
  assert a[keys].equals(b[keys]), "the two runs scored different checkpoints"
  diff = np.abs(a["value"].to_numpy() - b["value"].to_numpy())
  rel = diff / np.maximum(np.abs(b["value"].to_numpy()), 1e-12)
  print(f"results tables: {len(a)} rows; largest difference {diff.max():.3g} (relative "
        f"{rel.max():.3g}); same recommendation: "
        f"{out['packed']['best_recipe'] == out['--no-pack']['best_recipe']}")
  print(f"packed is {out['--no-pack']['wall_s'] / out['packed']['wall_s']:.2f}x faster in wall "
        f"time and {out['--no-pack']['cpu_s'] / out['packed']['cpu_s']:.2f}x in CPU time")
  floor, per_step = steps_alone(os.path.join(root, "packed"), workers=2)
  steps = ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in per_step.items())
  print(f"the training steps alone (each size's step timed here: {steps}; x its steps and "
        f"cells, over 2 workers): {floor:.1f} s wall, the floor of either arm; above it: "
        f"packed {out['packed']['wall_s'] - floor:.1f} s, --no-pack "
        f"{out['--no-pack']['wall_s'] - floor:.1f} s; load average {os.getloadavg()[0]:.2f}")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", nargs="+", default=["4M", "20M"])
  p.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8, 16])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=128)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--until_oom", action="store_true")
  p.add_argument("--mode", default="auto", choices=("auto", "vmap", "map"),
                 help="how the pack runs its replicas (olmo_jax/pack.py: default_mode)")
  p.add_argument("--demo", action="store_true")
  p.add_argument("--demo_config", default="configs/datadecide/demo.py",
                 help="the study --demo trains (default: the datadecide-demo grid)")
  a = p.parse_args()
  print(machine() + ("" if a.demo else f"; pack mode {a.mode}"))
  if a.demo:
    demo(a.demo_config)
    return
  for size in a.sizes:
    sweep(size, a.ks, a.batch, a.seq_len, a.steps, a.until_oom, a.mode)


if __name__ == "__main__":
  main()
