"""Training tokens/s on CPU: our trainer's step against a PyTorch reference, in the same run.

The reference is transformers' LlamaForCausalLM of the same shape (the ladder's HF class:
untied head, SwiGLU hidden 4d, 50304 embedding rows), float32, torch.optim.AdamW with the
same hyperparameters, global-norm clipping 1.0, on the same token batches and thread count.

Each measurement runs in a fresh process, set up as its users run it (ours with the
host-memory settings `python -m olmo_jax.train` applies on CPU, see olmo_jax/hostmem.py;
torch as installed), so neither inherits the other's threads or allocator state. A third
column runs torch under the same host-memory settings as ours, for reference. Rounds
alternate between the three so machine noise hits all; ratios are of medians.

  python benchmarks/bench_train_cpu.py [--sizes 4M 20M] [--batch 8] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

THREADS = int(os.environ.get("BENCH_THREADS", os.cpu_count() or 2))


def build_jax(size: str, batch: int, seq_len: int):
  import jax
  import jax.numpy as jnp

  from olmo_jax import model as M
  from olmo_jax import optim, sharding, sizes, trainer

  s = sizes.get_size(size)
  cfg = M.ModelConfig(d_model=s.d_model, n_heads=s.n_heads, n_layers=s.n_layers,
                      max_seq_len=seq_len)
  tx = optim.make_optimizer(peak_lr=1e-3, warmup_steps=10, total_steps=1000)
  step_cfg = trainer.StepConfig(loss_chunk_tokens=trainer.default_loss_chunk())
  state, step = trainer.setup(cfg, tx, step_cfg, sharding.make_mesh())
  box = {"state": state}

  def run(ids_np):
    batch = {"input_ids": jnp.asarray(ids_np)}
    box["state"], metrics = step(box["state"], batch)
    return metrics

  def block(metrics):
    jax.block_until_ready(metrics)

  return run, block


def build_torch(size: str, batch: int, seq_len: int):
  import torch
  import transformers

  from olmo_jax import sizes

  torch.set_num_threads(THREADS)
  torch.manual_seed(0)
  s = sizes.get_size(size)
  config = transformers.LlamaConfig(
      vocab_size=sizes.EMBEDDING_SIZE, hidden_size=s.d_model, intermediate_size=4 * s.d_model,
      num_hidden_layers=s.n_layers, num_attention_heads=s.n_heads,
      num_key_value_heads=s.n_heads, max_position_embeddings=seq_len, rms_norm_eps=1e-6,
      rope_theta=10_000.0, tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
  model = transformers.LlamaForCausalLM(config).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
                          weight_decay=0.05)

  def run(ids_np):
    ids = torch.from_numpy(ids_np).long()
    logits = model(input_ids=ids[:, :-1]).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             ids[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss

  return run, lambda loss: float(loss.detach())


def time_steps(run, block, batches) -> float:
  """Seconds per step over `batches`, blocking on the last step's result."""
  t0 = time.perf_counter()
  out = None
  for b in batches:
    out = run(b)
  block(out)
  return (time.perf_counter() - t0) / len(batches)


WORKERS = {  # name -> (builder, apply our host-memory settings)
    "olmo_jax": ("jax", True),
    "torch": ("torch", False),
    "torch_same_malloc": ("torch", True),
}


def make_batches(batch: int, seq_len: int, steps: int):
  import numpy as np
  rng = np.random.default_rng(0)
  return [rng.integers(0, 50280, (batch, seq_len + 1), dtype=np.int32) for _ in range(steps)]


def worker(name: str, size: str, batch: int, seq_len: int, steps: int, warmup: int) -> None:
  """Builds one implementation, warms it up, prints seconds per step over `steps` steps."""
  kind, tuned = WORKERS[name]
  if tuned:
    from olmo_jax import hostmem
    hostmem.keep_freed_memory(force=True)
  run, block = (build_jax if kind == "jax" else build_torch)(size, batch, seq_len)
  batches = make_batches(batch, seq_len, steps)
  for i in range(warmup):  # compile, then let the allocator reach its steady state
    time_steps(run, block, batches[i % steps:i % steps + 1])
  print(f"{time_steps(run, block, batches):.6f}", flush=True)


def bench(size: str, batch: int, seq_len: int, rounds: int, steps: int, warmup: int) -> dict:
  # A fresh process per measurement, one alive at a time: on this kind of machine an idle
  # process's memory makes the others' page faults dearer, which would skew the comparison.
  times = {k: [] for k in WORKERS}
  for _ in range(rounds):
    for name in WORKERS:
      out = subprocess.run(
          [sys.executable, os.path.abspath(__file__), "--worker", name, "--sizes", size,
           "--batch", str(batch), "--seq-len", str(seq_len), "--steps", str(steps),
           "--warmup", str(warmup)],
          stdout=subprocess.PIPE, text=True, check=True).stdout
      times[name].append(float(out.split()[-1]))
  tokens = batch * seq_len
  res = {k: tokens / statistics.median(v) for k, v in times.items()}
  res["ratio"] = res["olmo_jax"] / res["torch"]
  res["ratio_same_malloc"] = res["olmo_jax"] / res["torch_same_malloc"]
  return res


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", nargs="+", default=["4M", "20M"])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq-len", type=int, default=256)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--warmup", type=int, default=4, help="untimed steps first (compile, settle)")
  p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.worker:
    return worker(a.worker, a.sizes[0], a.batch, a.seq_len, a.steps, a.warmup)
  print(f"CPU training throughput, batch {a.batch} x {a.seq_len} tokens, float32, "
        f"{THREADS} threads, median of {a.rounds} rounds x {a.steps} steps after {a.warmup} "
        f"untimed")
  print(f"{'size':>5} | {'olmo_jax tok/s':>14} | {'torch tok/s':>11} | ratio | "
        f"{'torch, our malloc settings':>26} | ratio")
  for size in a.sizes:
    r = bench(size, a.batch, a.seq_len, a.rounds, a.steps, a.warmup)
    print(f"{size:>5} | {r['olmo_jax']:>14,.0f} | {r['torch']:>11,.0f} | {r['ratio']:.2f}x | "
          f"{r['torch_same_malloc']:>26,.0f} | {r['ratio_same_malloc']:.2f}x", flush=True)


if __name__ == "__main__":
  main()
