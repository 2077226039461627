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
from olmo_jax import runtime  # noqa: E402

runtime.init()  # before the imports that load JAX: on a CPU host JAX stays on the CPU, quietly

from olmo_jax.plan_options import plan_options  # noqa: E402

# name -> plan options (olmo_jax/plan_options.py, configs/train.py: plan.*)
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


def run_spec(size: str, opts: dict, remat: str | None = None, **train):
  """The RunSpec of a size for a target (bf16; model.remat and train.* as given)."""
  from olmo_jax import config as config_lib
  from olmo_jax import plan_compile
  from olmo_jax import train as train_lib
  c = config_lib.load_config_file(train_lib.DEFAULT_CONFIG, size)
  c.model.dtype = "bfloat16"
  if remat is not None:
    c.model.remat = remat
  c.plan.update(opts)
  c.train.update(train)
  return config_lib.resolve(plan_compile.for_target(c))


def chosen(size: str, opts: dict) -> dict:
  """The row of one size on one target: its defaults, or the first compiled fix that fits."""
  from olmo_jax import plan_compile
  c = run_spec(size, opts)
  target = plan_compile.build_target(opts["platform"], plan_options(c), opts.get("devices", 0))
  p = plan_compile.target_plan(c, target)
  seconds, micro, remat = p.compile_seconds, c.train.microbatch_size, c.model.remat
  if not p.fits:
    # the matrix keeps each target's device count
    for fix, q in plan_compile.compiled_candidates(c, p, target, same_devices=True):
      seconds += q.compile_seconds
      if q.fits:
        p, micro, remat = q, fix.microbatch, fix.remat
        break
  return {"size": size, "target": target.describe(), "source": p.source, "fits": p.fits,
          "gib_per_device": p.total / GIB, "microbatch": micro, "remat": remat,
          "collectives": p.collectives, "attention": p.attention,
          "compile_seconds": seconds}


# Targets of the pack column: one device each (a pack's replica axis spreads over more).
# A v5e chip: the first chip of a 2x2 host (libtpu names no 1x1 v5e topology).
PACK_TARGETS = {"1 x H100": TARGETS["1 x H100"],
                "TPU v5e chip": {"platform": "tpu", "topology": "v5e:2x2"}}


def largest_pack(size: str, opts: dict, microbatch: int = 1) -> dict:
  """The largest K of a pack of the size's runs (its published batch of 2,048-token
  sequences, accumulated over microbatches of `microbatch` sequences; bf16, the size's
  defaults otherwise) that compiles within one device of the target."""
  from olmo_jax import pack_plan, plan_compile
  c = run_spec(size, opts, microbatch_size=microbatch)
  target = plan_compile.build_target(opts["platform"], plan_options(c), opts.get("devices", 1))
  target = dataclasses.replace(target, devices=target.devices[:1])
  seen = {}

  def make(k):
    seen[k] = pack_plan.pack_plan(c, k, target)
    return seen[k]

  t0 = time.perf_counter()
  k = pack_plan.largest_k(make)
  best = seen.get(k)
  return {"size": size, "target": target.describe(), "largest_k": k,
          "batch": c.train.batch_size, "microbatch": c.train.microbatch_size,
          "gib_per_device": best.total / GIB if best else None,
          "first_over": min((n for n, p in seen.items() if not p.fits), default=None),
          "compiles": len(seen), "compile_seconds": time.perf_counter() - t0}


def _plan_at(opts: dict, seqs: int, remat: str):
  """The compiled 1B plan of one microbatch of `seqs` sequences on a target."""
  from olmo_jax import plan_compile
  c = run_spec("1B", opts, remat=remat, batch_size=seqs, microbatch_size=seqs)
  target = plan_compile.build_target(opts["platform"], plan_options(c), opts.get("devices", 0))
  return plan_compile.target_plan(c, target)


def max_batch(opts: dict, remat: str, max_compiles: int = 6) -> dict:
  """Largest global batch of 1B (sequences; microbatch = batch) that compiles within memory.

  A step's bytes grow linearly with its batch: plans at n and 2n sequences (n = the devices,
  each a batch shard) give the bytes per sequence; the predicted largest batch b is compiled,
  then the secant through the nearest plans that fit and do not, until a batch that fits
  sits next to one that does not (or `max_compiles` plans were compiled).
  """
  from olmo_jax import plan_compile
  c = run_spec("1B", opts)
  n = len(plan_compile.build_target(opts["platform"], plan_options(c),
                                    opts.get("devices", 0)).devices)
  p1 = _plan_at(opts, n, remat)
  seen = {n: p1}
  if p1.fits:
    seen[2 * n] = _plan_at(opts, 2 * n, remat)
  while len(seen) < max_compiles:
    fit = [b for b, p in seen.items() if p.fits]
    over = [b for b, p in seen.items() if not p.fits]
    lo, hi = max(fit, default=0), min(over, default=None)
    if not lo or (hi is not None and hi - lo <= n):
      break
    a, b = (lo, hi) if hi is not None else sorted(seen)[-2:]  # the secant through two plans
    per_seq = max((seen[b].total - seen[a].total) / (b - a), 1.0)
    guess = int(lo + (seen[lo].device_memory - seen[lo].total) / per_seq) // n * n
    if hi is not None:  # keep to the middle half of the bracket: it halves at worst
      quarter = (hi - lo) // 4 // n * n
      guess = min(max(guess, lo + quarter), hi - quarter)
    elif len(seen) > 2:  # the last guess fitted: memory grows slower than linearly, overshoot
      guess = max(guess, (lo + lo // 4) // n * n)
    guess = max(lo + n, guess if hi is None else min(guess, hi - n))
    seen[guess] = _plan_at(opts, guess, remat)
  fit = [b for b, p in seen.items() if p.fits]
  over = [b for b, p in seen.items() if not p.fits]
  best, hi = max(fit, default=0), min(over, default=None)
  return {"target": p1.target, "remat": remat, "max_batch_seqs": best, "first_over": hi,
          "tokens_per_step": best * c.train.seq_len,
          "confirmed": hi is not None and hi - best == n, "compiles": len(seen),
          "compile_seconds": sum(p.compile_seconds for p in seen.values())}


def _machine() -> str:
  """The CPU model and core count (compile times depend on them)."""
  model = platform.processor() or platform.machine()
  if os.path.exists("/proc/cpuinfo"):
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  return f"{model}, {os.cpu_count()} cores"


def _versions() -> str:
  from importlib import metadata
  out = []
  for pkg in ("jax-cuda12-plugin", "nvidia-cuda-nvcc-cu12", "libtpu"):
    try:
      out.append(f"{pkg} {metadata.version(pkg)}")
    except metadata.PackageNotFoundError:
      out.append(f"{pkg} not installed")
  return ", ".join(out)


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


def batch_table(rows: list[dict]) -> str:
  out = ["| target (1B, one microbatch) | remat | largest batch (sequences) | tokens per step | "
         "compiles |", "|---|---|---|---|---|"]
  for r in rows:
    seqs = f"{r['max_batch_seqs']}" + ("" if r["confirmed"] else
                                       f" ({r.get('first_over') or '-'} does not fit)")
    out.append(f"| {r['name']} | {r['remat']} | {seqs} | {r['tokens_per_step']:,} | "
               f"{r['compiles']} |")
  return "\n".join(out)


def summary_table(rows: list[dict], batches: list[dict]) -> str:
  """One line per target: each size's fit, GiB per device and microbatch; the largest batch."""
  sizes = list(dict.fromkeys(r["size"] for r in rows))
  cells = {(r["name"], r["size"]): r for r in rows}
  big = {b["name"]: b for b in batches}
  out = ["| target | " + " | ".join(sizes) + " | largest 1B batch, one microbatch |",
         "|---" * (len(sizes) + 2) + "|"]
  for name in TARGETS:
    line = []
    for size in sizes:
      r = cells.get((name, size))
      line.append("-" if r is None else
                  f"{'fits' if r['fits'] else 'does not fit'}: {r['gib_per_device']:.1f} GiB, "
                  f"microbatch {r['microbatch']}")
    b = big.get(name)
    line.append("-" if b is None else f"{b['max_batch_seqs']} x 2048 ({b['remat']} remat)")
    if any(x != "-" for x in line):
      out.append(f"| {name} | " + " | ".join(line) + " |")
  return "\n".join(out)


def pack_table(packs: list[dict]) -> str:
  """One line per pack target: the largest K of each size, its GiB per device and microbatch."""
  sizes = list(dict.fromkeys(r["size"] for r in packs))
  cells = {(r["name"], r["size"]): r for r in packs}
  out = ["| pack target | " + " | ".join(sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
  for name in PACK_TARGETS:
    line = []
    for size in sizes:
      r = cells.get((name, size))
      if r is None:
        line.append("-")
        continue
      gib = "" if r["gib_per_device"] is None else f", {r['gib_per_device']:.1f} GiB"
      over = "" if r["first_over"] is None else f" ({r['first_over']} does not fit)"
      line.append(f"K = {r['largest_k']}{over}{gib}; batch {r['batch']} in microbatches of "
                  f"{r['microbatch']}; {r['compiles']} compiles")
    if any(x != "-" for x in line):
      out.append(f"| {name} | " + " | ".join(line) + " |")
  return "\n".join(out)


def _emit(sink, row: dict) -> dict:
  """Prints a row as a JSON line (and writes it to the sink, when there is one)."""
  print(json.dumps(row), flush=True)
  if sink:
    sink.write(json.dumps(row) + "\n")
    sink.flush()
  return row


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sizes", nargs="*", default=["150M", "530M", "1B"],
                  help="sizes of the table (none: only --max_batch)")
  ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
  ap.add_argument("--max_batch", action="store_true", help="also the largest 1B batch")
  ap.add_argument("--max_batch_remat", default="full")
  ap.add_argument("--packs", nargs="*", default=None,
                  help="sizes of the pack column: the largest K of a pack (olmo_jax/pack.py) "
                       "on 1 x H100 and a TPU v5e chip, e.g. --packs 4M 20M 60M 150M")
  ap.add_argument("--pack_microbatch", type=int, default=1,
                  help="sequences per microbatch of each replica in the pack column (the "
                       "published batch is accumulated over them; default 1: the smallest "
                       "activations, so the largest K)")
  ap.add_argument("--out", default="", help="also write JSON lines here")
  ap.add_argument("--tables", default="", help="print the tables of a JSON-lines file and stop")
  a = ap.parse_args(argv)
  if a.pack_microbatch < 1:
    ap.error(f"--pack_microbatch {a.pack_microbatch} must be >= 1 (sequences per microbatch)")
  if a.tables and not os.path.isfile(a.tables):
    ap.error(f"--tables {a.tables}: no such file (JSON lines written by --out)")
  if a.tables:
    saved = [json.loads(line) for line in open(a.tables) if line.strip()]
    rows = [r for r in saved if "size" in r and not r.get("pack")]
    batches = [r for r in saved if "max_batch_seqs" in r]
    packs = [r for r in saved if r.get("pack")]
    if rows or batches:
      print(table(rows) + "\n\n" + (batch_table(batches) + "\n\n" if batches else "")
            + summary_table(rows, batches))
    if packs:
      print(pack_table(packs))
    return 0
  import jax
  sink = open(a.out, "a") if a.out else None
  print(f"# {_machine()}, jax {jax.__version__}, {_versions()}, {time.strftime('%Y-%m-%d')}",
        flush=True)
  rows = [_emit(sink, {"name": name, **chosen(size, TARGETS[name])})
          for size in a.sizes for name in a.targets]
  for size in a.packs or []:  # before any compile: each size's batch takes the microbatch
    try:
      batch = run_spec(size, PACK_TARGETS["1 x H100"]).train.batch_size
    except ValueError as e:
      ap.error(f"--packs {size}: {e}")
    if batch % a.pack_microbatch:
      ap.error(f"--pack_microbatch {a.pack_microbatch} must divide {size}'s batch of {batch} "
               "sequences")
  packs = [_emit(sink, {"name": name, "pack": True,
                          **largest_pack(size, opts, a.pack_microbatch)})
           for size in a.packs or [] for name, opts in PACK_TARGETS.items()]
  batches = [_emit(sink, {"name": name, **max_batch(TARGETS[name], a.max_batch_remat)})
             for name in a.targets] if a.max_batch else []
  if rows:
    print(table(rows))
  if packs:
    print(pack_table(packs))
  if batches:
    print(batch_table(batches))
  return 0


if __name__ == "__main__":
  sys.exit(main())
