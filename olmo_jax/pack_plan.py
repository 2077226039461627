"""Plans for packs: the packed step (olmo_jax/pack.py) compiled ahead of time, for the devices
at hand or for a target that is not (olmo_jax/targets.py), as olmo_jax/plan.py does for one run.

`pack_plan` lowers the packed step over abstract state and batches with a leading replica
axis of K and reads XLA's memory analysis: bytes per device, fits or not. `largest_k` finds
the largest K that fits in a few compiles: bytes grow linearly with K, so two plans predict
it and each further plan refines the line (a secant search inside the bracket).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from olmo_jax import pack, plan, plan_compile, trainer
from olmo_jax.config import RunSpec
from olmo_jax.plan_options import plan_options, usable_fraction


def packed_abstract(mcfg, tx, loss_scaling: bool, k: int, sh) -> trainer.State:
  """ShapeDtypeStructs of a packed train state: every leaf [K, ...] on the packed sharding."""
  shapes = jax.eval_shape(trainer.state_init_fn(mcfg, tx, 0, 1.0 if loss_scaling else None))
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct((k, *a.shape), a.dtype, sharding=sh),
                      shapes)


def lower_pack(spec: RunSpec, k: int, devices):
  """(lowered packed step, abstract state, mesh) of K replicas over these devices."""
  mesh = pack.pack_mesh(k, devices)
  sh = pack.packed_sharding(mesh)
  abstract = packed_abstract(spec.model, spec.optimizer, spec.step.policy.loss_scaling, k, sh)
  t = spec.train
  batch = {"input_ids": jax.ShapeDtypeStruct((k, t.batch_size, t.seq_len + 1), jnp.int32,
                                             sharding=sh)}
  step = pack.make_packed_step(spec.model, spec.optimizer, spec.step, sh)
  return step.lower(abstract, batch), abstract, mesh


def pack_plan(spec: RunSpec, k: int, target=None) -> plan.Plan:
  """The compiled plan of a pack of K replicas of `spec` (per device: params, optimizer state,
  temporaries; FLOPs and tokens of all K replicas), for `target` or the local devices.

  A step the target's compiler refuses for memory (XLA:TPU's RESOURCE_EXHAUSTED) gives a plan
  that does not fit, with XLA's figure as its total (plan.Plan.oom_total)."""
  opts = plan_options(spec)
  if target is None:  # usable bytes, as a run's plan counts them (plan.local_device_memory)
    devices, (kind, mem) = jax.devices(), plan.local_device_memory(opts)
  else:
    devices, kind = target.devices, target.device_kind
    mem = int((opts.device_memory_gb * 1e9 or target.device_memory)
              * usable_fraction(opts, target.platform))
  peak = spec.train.peak_flops_per_device or plan.peak_and_memory(kind, opts)[0]
  lowered, abstract, mesh = lower_pack(spec, k, devices)
  shard = jax.tree.map(lambda a: a.sharding, abstract)
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001 (XLA:TPU refuses a step over the chip's HBM)
    if not plan.out_of_memory(e) or target is None:
      raise
    p = plan_compile._failed_compile_plan(e, spec, abstract, shard, mesh, target, mem, peak)
    if not p.oom_total:  # no figure in the message: refused all the same
      raise
  else:
    p = plan_compile.compiled_plan(compiled, abstract, shard, spec, mesh, kind=kind,
                                   device_memory=mem, peak=peak)
  p.flops_per_step *= k
  p.tokens_per_step *= k
  p.note = "; ".join(x for x in (p.note, f"a pack of {k} replicas on a 'replica' mesh axis") if x)
  if target is not None:
    p.target = target.describe()
  return p


def largest_k(make_plan: Callable[[int], plan.Plan], limit: int = 4096,
              max_compiles: int = 7) -> int:
  """The largest K (<= limit) whose pack fits; 0 when K=1 does not.

  A pack's bytes grow linearly with K (each replica brings its state and its activations):
  the plans of K=1 and K=2 give the bytes per replica, the predicted largest K is compiled,
  then the secant through the nearest plans, each guess kept inside the bracket of the K that
  fits and the K that does not, until they are within 1/16 of each other (or `max_compiles`
  plans were compiled). make_plan(k) returns a plan with its total bytes and the device's
  (a refused step: XLA's figure, Plan.oom_total) or raises the compiler's out-of-memory error.
  """
  seen: dict[int, plan.Plan | None] = {}

  def ok(k: int) -> bool:
    if k not in seen:
      try:
        seen[k] = make_plan(k)
      except Exception as e:  # noqa: BLE001 (a refusal without XLA's figure: does not fit)
        if not plan.out_of_memory(e):
          raise
        seen[k] = None
    return seen[k] is not None and seen[k].fits

  if not ok(1):
    return 0
  if limit == 1 or not ok(2):
    return 1
  while len(seen) < max_compiles:
    lo = max(k for k in seen if ok(k))
    hi = min((k for k in seen if not ok(k)), default=limit + 1)
    if hi - lo <= max(1, lo // 16):
      break
    guess = _secant_guess(seen, lo)
    step = max(1, lo // 16)
    if hi > limit:  # nothing over yet: at least just past the largest K that fits
      guess = min(max(guess, lo + step), limit)
    else:  # the middle half of the bracket: it halves at worst
      quarter = max(1, (hi - lo) // 4)
      guess = min(max(guess, lo + quarter), hi - quarter)
    ok(guess)
  return max(k for k in seen if ok(k))


def _secant_guess(seen: dict, lo: int) -> int:
  """The K whose bytes reach the device's memory on the line through two measured plans."""
  known = sorted(k for k, p in seen.items() if p is not None)
  below = [k for k in known if k <= lo]
  a, b = (below[-2:] if len(below) >= 2 else known[:2])
  per = max((seen[b].total - seen[a].total) / (b - a), 1.0)
  return int(lo + (seen[lo].device_memory - seen[lo].total) / per)
