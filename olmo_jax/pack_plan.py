"""Plans for packs: the packed step (olmo_jax/pack.py) compiled ahead of time, for the devices
at hand or for a target that is not (olmo_jax/targets.py), as olmo_jax/plan.py does for one run.

`pack_plan` lowers the packed step over abstract state and batches with a leading replica
axis of K and reads XLA's memory analysis: bytes per device, fits or not. `largest_k` doubles
K until the pack no longer fits (or the compiler refuses it), then bisects between the last
K that fit and the first that did not.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from olmo_jax import pack, plan, plan_compile, trainer
from olmo_jax.plan_options import plan_options


def packed_abstract(mcfg, tx, loss_scaling: bool, k: int, sh) -> trainer.State:
  """ShapeDtypeStructs of a packed train state: every leaf [K, ...] on the packed sharding."""
  shapes = jax.eval_shape(trainer.state_init_fn(mcfg, tx, 0, 1.0 if loss_scaling else None))
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct((k, *a.shape), a.dtype, sharding=sh),
                      shapes)


def compile_pack(cfg, mcfg, tx, step_cfg, k: int, devices):
  """(compiled packed step, abstract state, mesh) of K replicas over these devices."""
  mesh = pack.pack_mesh(k, devices)
  sh = pack.packed_sharding(mesh)
  abstract = packed_abstract(mcfg, tx, step_cfg.policy.loss_scaling, k, sh)
  t = cfg.train
  batch = {"input_ids": jax.ShapeDtypeStruct((k, t.batch_size, t.seq_len + 1), jnp.int32,
                                             sharding=sh)}
  step = pack.make_packed_step(mcfg, tx, step_cfg, sh)
  return step.lower(abstract, batch).compile(), abstract, mesh


def pack_plan(cfg, mcfg, tx, step_cfg, k: int, target=None) -> plan.Plan:
  """The compiled plan of a pack of K replicas of `cfg` (per device: params, optimizer state,
  temporaries; FLOPs and tokens of all K replicas), for `target` or the local devices."""
  opts = plan_options(cfg)
  if target is None:
    devices, (kind, mem) = jax.devices(), plan.local_device_memory(opts)
  else:
    devices, kind = target.devices, target.device_kind
    mem = int(opts.device_memory_gb * 1e9 or target.device_memory)
  peak = cfg.train.peak_flops_per_device or plan.peak_and_memory(kind, opts)[0]
  compiled, abstract, mesh = compile_pack(cfg, mcfg, tx, step_cfg, k, devices)
  shard = jax.tree.map(lambda a: a.sharding, abstract)
  p = plan_compile.compiled_plan(compiled, abstract, shard, cfg, mesh, kind=kind,
                         device_memory=int(mem * opts.headroom), peak=peak)
  p.flops_per_step *= k
  p.tokens_per_step *= k
  p.note = "; ".join(x for x in (p.note, f"a pack of {k} replicas on a 'replica' mesh axis") if x)
  if target is not None:
    p.target = target.describe()
  return p


def fits(make_plan: Callable[[int], plan.Plan], k: int) -> bool:
  """Whether the plan of K fits; a compiler that refuses it (out of memory) says no."""
  try:
    return make_plan(k).fits
  except Exception as e:  # noqa: BLE001 (XLA:TPU refuses a step over the chip's HBM)
    if "RESOURCE_EXHAUSTED" in str(e) or "hbm" in str(e).lower():
      return False
    raise


def largest_k(make_plan: Callable[[int], plan.Plan], limit: int = 4096) -> int:
  """The largest K (<= limit) whose pack fits: doubling, then bisection; 0 when K=1 does not."""
  if not fits(make_plan, 1):
    return 0
  lo = 1
  while lo * 2 <= limit and fits(make_plan, lo * 2):
    lo *= 2
  hi = min(lo * 2, limit + 1)
  while hi - lo > max(1, lo // 8):  # to within 1/8: each compile of a large pack is slow
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(make_plan, mid) else (lo, mid)
  return lo
