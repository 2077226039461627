"""The compile matrix: the real train step compiled for GPU and TPU targets from this host.

For each size and target: the plan of the size's defaults in bf16 (compiled for the target's
compile-only devices); when it does not fit, the first setting found by the plan's compiled
search (microbatch, remat); then fits, GiB per device, the collectives and the compile time.
With --max_batch, also the largest global batch (tokens per step) of each target at 1B
without gradient accumulation (microbatch = batch), each checked by compiling it.

  python benchmarks/compile_matrix.py --sizes 150M 530M 1B --out matrix.jsonl
Prints a markdown table (docs/scaling.md holds the measured one) and writes JSON lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import olmo_jax  # noqa: E402,F401  (first: on a CPU host it keeps JAX on the CPU, quietly)

# name -> plan options (olmo_jax/plan.py, configs/train.py: plan.*)
TARGETS = {
    "1 x H100": {"platform": "gpu", "device_kind": "h100", "devices": 1},
    "8 x H100": {"platform": "gpu", "device_kind": "h100", "devices": 8},
    "2 hosts x 8 x H100": {"platform": "gpu", "device_kind": "h100", "devices": 16, "hosts": 2},
    "8 x A100 40 GB": {"platform": "gpu", "device_kind": "a100_40gb", "devices": 8},
    "TPU v5e 4x4": {"platform": "tpu", "topology": "v5e:4x4"},
    "TPU v5p 2x2x2": {"platform": "tpu", "topology": "v5p:2x2x2"},
    "TPU v6e 2x4": {"platform": "tpu", "topology": "v6e:2x4"},
    "2 slices x TPU v5e 4x4": {"platform": "tpu", "topology": "v5e:4x4", "slices": 2},
}
GIB = 1024 ** 3


def parts(size: str, opts: dict, **train):
  """(resolved config, model config, optimizer, step config) of a size for a target."""
  from olmo_jax import config as config_lib
  from olmo_jax import plan
  from olmo_jax import train as train_lib
  c = config_lib.load_config_file(train_lib.DEFAULT_CONFIG, size)
  c.model.dtype = "bfloat16"
  c.plan.update(opts)
  c.train.update(train)
  c = config_lib.resolve(plan.for_target(c))
  schedule, tx = train_lib.build_optimizer(c)
  return c, config_lib.model_config(c), tx, train_lib.build_step_config(c, schedule)


def chosen(size: str, opts: dict) -> dict:
  """The row of one size on one target: its defaults, or the first compiled fix that fits."""
  from olmo_jax import plan
  c, mcfg, tx, sc = parts(size, opts)
  target = plan.build_target(opts["platform"], plan.plan_options(c), opts.get("devices", 0))
  p = plan.target_plan(c, mcfg, tx, sc, target)
  seconds, micro, remat = p.compile_seconds, c.train.microbatch_size, mcfg.remat
  if not p.fits:
    ana = plan.analytic_plan(c, mcfg, tx, sc, platform=p.platform, num_devices=p.num_devices,
                             kind=p.device_kind, device_memory=0, peak=0)
    scale = p.activations / max(ana.activations, 1)
    for fix in plan.candidates(c, mcfg, tx, sc, p, scale):
      if fix.devices != p.num_devices:
        break  # the matrix keeps each target's device count
      c2, m2, s2 = fix.apply(c, mcfg, sc, p.num_devices)
      q = plan.target_plan(c2, m2, tx, s2, target)
      seconds += q.compile_seconds
      if q.fits:
        p, micro, remat = q, fix.microbatch, fix.remat
        break
  return {"size": size, "target": target.describe(), "source": p.source, "fits": p.fits,
          "gib_per_device": p.total / GIB, "microbatch": micro, "remat": remat,
          "collectives": p.collectives, "attention": p.attention,
          "compile_seconds": seconds}


def max_batch(opts: dict, remat: str, tries: int = 4) -> dict:
  """Largest global batch of 1B (sequences; microbatch = batch) that compiles within memory."""
  from olmo_jax import plan
  c, mcfg, tx, sc = parts("1B", opts, batch_size=64, microbatch_size=64)
  target = plan.build_target(opts["platform"], plan.plan_options(c), opts.get("devices", 0))
  n = len(target.devices)
  lo, hi, best = n, 4096, 0
  for _ in range(tries):  # bisection over multiples of the device count
    mid = max(n, (lo + hi) // 2 // n * n)
    c, mcfg, tx, sc = parts("1B", opts, batch_size=mid, microbatch_size=mid)
    c.model.remat = remat
    p = plan.target_plan(c, dataclasses.replace(mcfg, remat=remat), tx, sc, target)
    if p.fits:
      best, lo = mid, mid + n
    else:
      hi = mid - n
    if lo > hi:
      break
  return {"target": target.describe(), "remat": remat, "max_batch_seqs": best,
          "tokens_per_step": best * c.train.seq_len}


def table(rows: list[dict]) -> str:
  out = ["| size | target | fits | GiB / device | microbatch | remat | collectives | "
         "compile s |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    src = "" if r.get("source", "compiled") == "compiled" else f" ({r['source']})"
    coll = ", ".join(f"{k} {v}" for k, v in sorted(r["collectives"].items())) or "-"
    out.append(f"| {r['size']} | {r['name']} | {'yes' if r['fits'] else 'no'}{src} | "
               f"{r['gib_per_device']:.1f} | {r['microbatch']} | {r['remat']} | {coll} | "
               f"{r['compile_seconds']:.0f} |")
  return "\n".join(out)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", nargs="+", default=["150M", "530M", "1B"])
  ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
  ap.add_argument("--max_batch", action="store_true", help="also the largest 1B batch")
  ap.add_argument("--max_batch_remat", default="full")
  ap.add_argument("--out", default="", help="also write JSON lines here")
  a = ap.parse_args(argv)
  import jax
  rows = []
  sink = open(a.out, "a") if a.out else None
  print(f"# {platform.node()}, jax {jax.__version__}, {time.strftime('%Y-%m-%d')}", flush=True)
  for size in a.sizes:
    for name in a.targets:
      row = {"name": name, **chosen(size, TARGETS[name])}
      rows.append(row)
      print(json.dumps(row), flush=True)
      if sink:
        sink.write(json.dumps(row) + "\n")
        sink.flush()
  if a.max_batch:
    for name in a.targets:
      row = {"name": name, **max_batch(TARGETS[name], a.max_batch_remat)}
      print(json.dumps(row), flush=True)
      if sink:
        sink.write(json.dumps(row) + "\n")
        sink.flush()
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
