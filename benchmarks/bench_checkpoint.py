"""How long a training step is blocked by an async checkpoint of the 150M train state (CPU).

Builds the 150M ladder model's full train state (params + AdamW mu/nu, ~2.3 GB float32),
then in one run:
  1. a synchronous save (olmo_jax.checkpoint_manager.Checkpointer(async_save=False)): the time the
     loop would stop for;
  2. an async save: the time `save()` blocks the loop (device->host copy), the time the
     next step takes while the write proceeds in the background (against a step without a
     save), and the time until the checkpoint is committed.
Target: async blocking time < 10% of the synchronous save.

  python benchmarks/bench_checkpoint.py [--size 150M] [--dir /tmp/bench_ckpt] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from olmo_jax import runtime  # noqa: E402

runtime.init()  # first, before JAX loads: a host without accelerators runs on its CPU


def build_state(size: str):
  """The sharded train state of a ladder size on the local devices, and a donated step fn."""
  import jax

  from olmo_jax import model as model_lib
  from olmo_jax import optim, sharding, sizes, trainer
  s = sizes.get_size(size)
  cfg = model_lib.ModelConfig(d_model=s.d_model, n_heads=s.n_heads, n_layers=s.n_layers)
  tx = optim.make_optimizer(peak_lr=1e-3, warmup_steps=10, total_steps=100)
  mesh = sharding.make_mesh()
  state = trainer.init_state(mesh, cfg, tx, seed=0)
  jax.block_until_ready(state)

  # Stands in for the train step: touches every byte of the state and donates it, as the
  # real jitted step does, so a save that still referenced the buffers would be caught.
  def step_fn(st):
    return jax.tree.map(lambda x: x + 1 if x.dtype.kind in "iu" else x * 1.0000001, st)
  step_fn = jax.jit(step_fn, donate_argnums=0)
  return state, step_fn


def nbytes(state) -> int:
  import jax
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="150M")
  p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-prepare", dest="prepare", action="store_false",
                 help="skip Checkpointer.prepare: the first async save allocates its buffers")
  a = p.parse_args(argv)
  import jax

  root = a.dir or tempfile.mkdtemp(prefix="bench_ckpt_")
  state, step_fn = build_state(a.size)
  gb = nbytes(state) / 1e9
  print(f"{a.size} train state: {gb:.2f} GB on {jax.device_count()} {jax.default_backend()} "
        f"device(s); writing under {root}")

  def run_step(st):
    st = step_fn(st)
    jax.block_until_ready(st)
    return st

  state = run_step(state)  # compile
  state, t_step = timed(lambda: run_step(run_step(state)))
  t_step /= 2

  times = time_saves(a, root, state, run_step, t_step)
  print_summary(a, gb, t_step, *times)
  if a.dir is None:
    shutil.rmtree(root, ignore_errors=True)
  return 0


def time_saves(a, root: str, state, run_step, t_step: float):
  """(sync, async-blocking, next-step, commit) seconds of saves 1..a.repeats (save 0 warms)."""
  from olmo_jax import checkpoint_manager

  data = {"position": 0}
  # One manager of each kind for the whole run, as in training: the async one reuses its
  # host staging buffers from the second save on (the first save allocates them).
  sync_ckpt = checkpoint_manager.Checkpointer(os.path.join(root, "sync"), every=1, keep=1,
                                      async_save=False)
  async_ckpt = checkpoint_manager.Checkpointer(os.path.join(root, "async"), every=1, keep=1,
                                       async_save=True)
  if a.prepare:
    async_ckpt.prepare(state)  # allocates the host staging buffers in the background
    async_ckpt._staging._preparing.join()  # (done during compile/first steps in a real run)
  sync_times, block_times, next_steps, commit_times = [], [], [], []
  for r in range(a.repeats + 1):
    _, t_sync = timed(lambda: sync_ckpt.save(r + 1, state, data))
    t0 = time.perf_counter()
    async_ckpt.save(r + 1, state, data)
    t_block = time.perf_counter() - t0
    state, t_next = timed(lambda: run_step(state))  # the step right after, write in flight
    async_ckpt.wait()
    t_commit = time.perf_counter() - t0
    print(f"  save {r}: sync {t_sync:.2f} s | async save() blocks {t_block:.3f} s, next step "
          f"{t_next:.3f} s (alone {t_step:.3f} s), committed after {t_commit:.2f} s"
          + ("  [allocates the staging buffers]" if r == 0 and not a.prepare else ""))
    if r:
      sync_times.append(t_sync)
      block_times.append(t_block)
      next_steps.append(t_next)
      commit_times.append(t_commit)
  sync_ckpt.close()
  async_ckpt.close()
  return sync_times, block_times, next_steps, commit_times


def print_summary(a, gb: float, t_step: float, sync_times, block_times, next_steps,
                  commit_times) -> None:
  sync, block = float(np.median(sync_times)), float(np.median(block_times))
  stall = max(0.0, float(np.median(next_steps)) - t_step)
  print(f"synchronous save (median):   {sync:.2f} s ({gb / sync:.2f} GB/s, incl. the "
        "CRC32 manifest)")
  print(f"async save, blocking part:   {block:.3f} s (median of saves 1..{a.repeats})")
  print(f"  next step alone / with the write in flight: {t_step:.3f} s / "
        f"{float(np.median(next_steps)):.3f} s")
  print(f"  time to commit in the background: {float(np.median(commit_times)):.2f} s")
  ratio = block / sync
  print(f"async blocking / synchronous save = {100 * ratio:.1f}% (target < 10%): "
        f"{'OK' if ratio < 0.1 else 'MISSED'}; counting the next step's slowdown from the "
        f"background write too: {100 * (block + stall) / sync:.1f}%")


if __name__ == "__main__":
  sys.exit(main())
