"""The compiled plan: the train step lowered and compiled over the abstract state (nothing is
allocated), for the devices at hand or for compile-only devices of a target
(olmo_jax/targets.py), and XLA's memory analysis read into a Plan (olmo_jax/plan.py).

`check` runs before a run allocates anything and stops it when the step cannot fit, with the
settings that would fit; `dry_run` is `python -m olmo_jax.train --dry_run`.
"""

from __future__ import annotations

import re
import time

import ml_collections

from olmo_jax import runtime
from olmo_jax.config import RunSpec
from olmo_jax.plan import (
  DEFAULT_KIND,
  GIB,
  PLATFORMS,
  Fix,
  Plan,
  PlanError,
  analytic_plan,
  candidates,
  local_device_memory,
  model_flops_per_token,
  peak_and_memory,
  shard_bytes,
  suggestions,
)
from olmo_jax.plan_options import plan_options, usable_fraction


def compiled_plan(compiled, abstract, shard, spec: RunSpec, mesh, *, source="compiled",
                  kind: str, device_memory: int, peak: float) -> Plan:
  """The plan of a compiled train step from XLA's memory analysis."""
  ma = compiled.memory_analysis()
  params = shard_bytes(abstract["params"], shard["params"])
  opt = shard_bytes(abstract["opt_state"], shard["opt_state"])
  temp = int(ma.temp_size_in_bytes)
  other = int(ma.argument_size_in_bytes) - params - opt + int(ma.output_size_in_bytes) \
      - int(ma.alias_size_in_bytes)
  n = mesh.devices.size
  opts = plan_options(spec)
  platform = runtime.device_platform(mesh.devices.flat[0])
  hlo = compiled.as_text() or ""
  return Plan(source, platform, kind, n, dict(mesh.shape), params, opt,
              temp, max(other, 0), device_memory,
              model_flops_per_token(spec) * spec.derived.tokens_per_step / n,
              spec.derived.tokens_per_step, peak, opts.mfu, collectives=collective_counts(hlo),
              attention=attention_kernel(hlo, spec.model.attention, platform),
              xla_flops=_xla_flops(compiled, n))


COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_COLLECTIVE_RE = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def collective_counts(hlo_text: str) -> dict[str, int]:
  """{HLO collective op: instructions of it in the compiled step} (an async pair counts once;
  a loop body, e.g. the scan over layers, counts once however often it runs)."""
  out: dict[str, int] = {}
  for op in _COLLECTIVE_RE.findall(hlo_text):
    out[op] = out.get(op, 0) + 1
  return out


def attention_kernel(hlo_text: str, impl: str, platform: str) -> str:
  """Which attention the compiled step runs: a fused kernel found in the HLO, else ours/XLA's."""
  if "__cudnn$fmha" in hlo_text:
    return "cudnn flash (fused kernel)"
  if "tpu_custom_call" in hlo_text and re.search(r"splash|flash", hlo_text):
    return "pallas flash/splash (Mosaic kernel)"
  if impl == "blocked" or (impl == "auto" and platform == "cpu"):
    return "blocked (olmo_jax/kernels/cpu.py)"
  return "xla (softmax(QK^T)V, fused by XLA)"


def _xla_flops(compiled, devices: int) -> float | None:
  """XLA's FLOP count of the step for all devices, or None where the backend reports none."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # some compile-only backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) * devices if flops else None



def compile_step(train_step, abstract, mesh, spec: RunSpec, options: dict | None = None):
  """Lowers and compiles the train step over abstract state and batch (nothing allocated).

  Traced under the mesh, so activations take the shardings of sharding.RULES; `options` are
  XLA compiler options for this compile only.
  """
  import jax
  import jax.numpy as jnp

  from olmo_jax import sharding
  t = spec.train
  batch = {"input_ids": jax.ShapeDtypeStruct((t.batch_size, t.seq_len + 1), jnp.int32,
                                             sharding=sharding.batch_sharding(mesh))}
  with sharding.activation_mesh(mesh):  # the model's activation constraints see the mesh
    return train_step.lower(abstract, batch).compile(compiler_options=options), batch


def _timed_compile(train_step, abstract, mesh, spec, options: dict | None = None):
  """(compiled step, seconds it took to lower and compile)."""
  t0 = time.perf_counter()
  compiled, _ = compile_step(train_step, abstract, mesh, spec, options)
  return compiled, time.perf_counter() - t0


# XLA:GPU without a device cannot autotune, and its default Triton GEMM tiling has no
# solution for some shapes (seen for every 530M step: d_model 1344); a run on the card
# autotunes. The step is then compiled with XLA's library GEMMs instead (at 150M on 1 x H100,
# microbatch 6, both ways give 35.94 GiB per device).
_NO_TRITON = {"xla_gpu_enable_triton_gemm": False}


def _target_compile(step, abstract, mesh, spec, target) -> tuple:
  """(compiled step, note) for a target; raises the compiler's error."""
  try:
    return _timed_compile(step, abstract, mesh, spec)[0], ""
  except Exception as e:
    if "No PTX compilation provider" in str(e):
      raise ImportError("XLA:GPU finds no ptxas (pip install nvidia-cuda-nvcc-cu12, as in "
                        "requirements.txt, or a CUDA toolkit)") from e
    if target.platform != "gpu" or "tile sizes" not in str(e):
      raise
  note = ("compiled with XLA's library GEMMs (xla_gpu_enable_triton_gemm=false): without a "
          "device XLA's default Triton GEMM tiling failed")
  return _timed_compile(step, abstract, mesh, spec, _NO_TRITON)[0], note




def _abstract_and_step(spec: RunSpec, mesh):
  from olmo_jax import trainer
  abstract, shard = trainer.state_shardings(mesh, spec.model, spec.optimizer,
                                            spec.step.policy.loss_scaling)
  return abstract, shard, trainer.make_train_step(spec.model, spec.optimizer, spec.step, mesh,
                                                  shard)


def check(spec: RunSpec, mesh, abstract, shard, train_step, *, print_fn=print,
          dry_run: bool = False, device: tuple[str, int] | None = None, source="compiled"):
  """Compiles the train step, computes its plan and returns the compiled step.

  Raises PlanError (before anything is allocated) when it does not fit and plan.check is on;
  with dry_run, prints the plan (and a warning when it does not fit) and returns None.
  device: (kind, bytes per device) for a mesh of compile-only devices; default: the local ones.
  """
  import jax
  opts = plan_options(spec)
  compiled, seconds = _timed_compile(train_step, abstract, mesh, spec)
  if device is None:  # the devices at hand
    kind, mem = local_device_memory(opts)
  else:
    kind, mem = device[0], int(device[1] * opts.headroom)
  peak = spec.train.peak_flops_per_device or peak_and_memory(kind, opts)[0]
  plan = compiled_plan(compiled, abstract, shard, spec, mesh, kind=kind, source=source,
                       device_memory=mem, peak=peak)
  plan.compile_seconds = seconds
  is_main = jax.process_index() == 0
  if dry_run or not plan.fits:
    msg = plan.format()
    if not plan.fits:
      ana = analytic_plan(spec, platform=plan.platform, num_devices=plan.num_devices,
                          kind=kind, device_memory=0, peak=0)
      scale = plan.activations / max(ana.activations, 1)
      fixes = suggestions(spec, plan, scale)
      msg += ("\n  would fit: " + "; or ".join(fixes) if fixes else
              "\n  no microbatch size, remat preset or device count tried would fit")
    if dry_run:
      if is_main:
        print_fn(msg + ("" if plan.fits else "\nWARNING: the plan does not fit the device "
                        "memory"))
      return None, plan
    if opts.check:
      raise PlanError(f"the train step does not fit the device memory "
                      f"({plan.total / GIB:,.2f} GiB > {plan.device_memory / GIB:,.2f} GiB "
                      f"usable); nothing was allocated. Set plan.check=False to try anyway.\n"
                      + msg)
    if is_main:
      print_fn("WARNING: " + msg)
  return compiled, plan


def dry_run(spec: RunSpec, *, print_fn=print) -> Plan:
  """`--dry_run`: the plan for the devices at hand, or compiled for the target in spec.plan."""
  import jax

  from olmo_jax import sharding
  opts = plan_options(spec)
  platform, here = target_platform(opts)
  devices = opts.devices or (jax.device_count() if platform == here else 0)
  if platform == here and devices == jax.device_count():
    mesh = sharding.make_mesh(spec.mesh.data, spec.mesh.fsdp, spec.mesh.tensor)
    abstract, shard, step = _abstract_and_step(spec, mesh)
    plan = check(spec, mesh, abstract, shard, step, print_fn=print_fn, dry_run=True)[1]
    return _write(plan, opts)
  try:
    target = build_target(platform, opts, devices)
    plan = target_plan(spec, target)
  except (ImportError, NotImplementedError, RuntimeError) as e:  # no compiler for it here
    why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    plan = _analytic_dry_run(spec, platform, devices, opts, why, print_fn)
  else:
    msg = plan.format()
    if not plan.fits:
      fixes = compiled_fixes(spec, plan, target)
      msg += ("\n  would fit (compiled for the target unless marked analytic): "
              + "; or ".join(fixes) if fixes
              else "\n  no microbatch size, remat preset or device count tried would fit")
      msg += "\nWARNING: the plan does not fit the device memory"
    if jax.process_index() == 0:
      print_fn(msg)
  return _write(plan, opts)


def for_target(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with model.platform = the plan's target platform where it is 'auto', so the
  step is traced with the target's kernels and default dtype, not those of this host."""
  opts = plan_options(config)
  if opts.platform in ("gpu", "tpu") and config.model.get("platform", "auto") == "auto":
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.platform = opts.platform
  return config


def target_platform(opts) -> tuple[str, str]:
  """(platform the plan is for, platform at hand); ValueError names a bad plan.* setting."""
  if opts.platform not in PLATFORMS:
    raise ValueError(f"plan.platform={opts.platform!r} must be one of {PLATFORMS}")
  here = runtime.resolve_platform()
  platform = here if opts.platform == "auto" else opts.platform
  if platform == "gpu" and platform != here and opts.devices <= 0:
    raise ValueError("plan.platform=gpu: also set plan.devices (the GPUs to plan for, over "
                     "plan.hosts hosts)")
  if platform == "tpu" and platform != here and not opts.topology:
    raise ValueError("plan.platform=tpu: also set plan.topology, e.g. v5e:4x4 or v5p:2x2x2 "
                     "(and plan.slices for several slices)")
  if platform == "cpu" and platform != here and opts.devices <= 0:
    raise ValueError("plan.platform=cpu: also set plan.devices (the devices to plan for)")
  return platform, here


def build_target(platform: str, opts, devices: int):
  """Compile-only devices for the plan's target (olmo_jax/targets.py)."""
  from olmo_jax import targets
  if platform == "gpu":
    return targets.gpu_target(opts.device_kind or DEFAULT_KIND["gpu"], devices, opts.hosts)
  if platform == "tpu":
    target = targets.tpu_target(opts.topology, opts.slices)
    if opts.devices and opts.devices != len(target.devices):
      raise ValueError(f"plan.topology={opts.topology!r} x plan.slices={opts.slices} has "
                       f"{len(target.devices)} chips, not plan.devices={opts.devices}")
    return target
  raise NotImplementedError(f"no compile-only {platform} devices")


def _write(plan: Plan, opts) -> Plan:
  import jax
  if opts.output and jax.process_index() == 0:
    from data_pipeline import atomic
    atomic.write_json(opts.output, plan.to_json())
  return plan


def _analytic_dry_run(spec: RunSpec, platform, devices, opts, why, print_fn) -> Plan:
  import jax
  kind = opts.device_kind or DEFAULT_KIND[platform]
  peak, mem = peak_and_memory(kind, opts)
  peak = spec.train.peak_flops_per_device or peak
  note = (f"analytic estimate: no compiler for {platform} is installed here ({why}); "
          "activations from the remat preset, checked against compiled figures")
  plan = analytic_plan(spec, platform=platform, num_devices=devices, kind=kind,
                       device_memory=int(mem * usable_fraction(opts, platform)), peak=peak,
                       note=note)
  msg = plan.format()
  if not plan.fits:
    fixes = suggestions(spec, plan, 1.0)
    msg += ("\n  would fit: " + "; or ".join(fixes) if fixes else "")
    msg += "\nWARNING: the plan does not fit the device memory"
  if jax.process_index() == 0:
    print_fn(msg)
  return plan


def target_mesh(spec: RunSpec, target):
  """The run's mesh over a target's compile-only devices (slices/hosts outermost)."""
  import numpy as np
  from jax.sharding import Mesh

  from olmo_jax import sharding
  shape = sharding.mesh_shape(spec.mesh.data, spec.mesh.fsdp, spec.mesh.tensor,
                              len(target.devices))
  batch_shards = shape[0] * shape[1]
  if spec.train.microbatch_size % batch_shards:
    raise ValueError(f"train.microbatch_size={spec.train.microbatch_size} must be divisible by "
                     f"the {batch_shards} batch shards of the mesh (mesh.data * mesh.fsdp)")
  return Mesh(np.array(target.devices, dtype=object).reshape(shape), sharding.MESH_AXES)


# XLA:TPU's refusals: "Used 20.5G of 15.75G hbm" or "... HLO temporaries (1.99T) exceeds
# available HBM (15.75G)"; the first figure is what the step needs.
_TPU_USED = re.compile(r"(?:Used |required for [^(]*\()([\d.]+)([KMGT])?")


def _failed_compile_plan(e, spec: RunSpec, abstract, shard, mesh, target, mem,
                         peak) -> Plan:
  """The plan of a step the target's compiler did not compile.

  XLA:TPU's RESOURCE_EXHAUSTED is the hardware's answer (compiled, does not fit, with XLA's
  total); any other compiler error leaves the analytic estimate, its note naming the
  compiler's first line.
  """
  used = _TPU_USED.search(str(e))
  opts = plan_options(spec)
  if "RESOURCE_EXHAUSTED" not in str(e) or not used:
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return analytic_plan(spec, platform=target.platform,
                         num_devices=len(target.devices), kind=target.device_kind,
                         device_memory=mem, peak=peak,
                         note=f"analytic estimate: the {target.platform} compiler did not "
                              f"compile this step ({first[:160]})")
  params = shard_bytes(abstract["params"], shard["params"])
  opt = shard_bytes(abstract["opt_state"], shard["opt_state"])
  scale = {None: 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
  total = int(float(used.group(1)) * scale[used.group(2)])
  return Plan("compiled", target.platform, target.device_kind, len(target.devices),
              dict(mesh.shape), params, opt, max(total - params - opt, 0), 0, mem,
              model_flops_per_token(spec) * spec.derived.tokens_per_step / len(target.devices),
              spec.derived.tokens_per_step, peak, opts.mfu, oom_total=max(total, mem + 1),
              attention=attention_kernel("", spec.model.attention, target.platform),
              note="XLA refused the step: RESOURCE_EXHAUSTED (activations = the rest of "
                   "XLA's total)")


def target_plan(spec: RunSpec, target) -> Plan:
  """The compiled plan of the train step for a target's compile-only devices."""
  opts = plan_options(spec)
  mesh = target_mesh(spec, target)
  abstract, shard, step = _abstract_and_step(spec, mesh)
  peak = spec.train.peak_flops_per_device or peak_and_memory(target.device_kind, opts)[0]
  mem = int((opts.device_memory_gb * 1e9 or target.device_memory)
            * usable_fraction(opts, target.platform))
  t0 = time.perf_counter()
  try:
    compiled, note = _target_compile(step, abstract, mesh, spec, target)
  except ImportError:
    raise
  except Exception as e:  # XLA:TPU refuses a step over the chip's HBM, as on the hardware
    plan = _failed_compile_plan(e, spec, abstract, shard, mesh, target, mem, peak)
    plan.compile_seconds, plan.target = time.perf_counter() - t0, target.describe()
    return plan
  plan = compiled_plan(compiled, abstract, shard, spec, mesh, kind=target.device_kind,
                       device_memory=mem, peak=peak)
  plan.compile_seconds, plan.target = time.perf_counter() - t0, target.describe()
  plan.note = "; ".join(x for x in (plan.note, note) if x)
  return plan


def compiled_candidates(spec: RunSpec, plan: Plan, target, *,
                        same_devices: bool = False):
  """(Fix, its compiled plan for the target or None) in the analytic search's order.

  Candidates come from the analytic search, scaled to agree with `plan` (for a step XLA
  refused: XLA's total less the state); a change of device count keeps the GPUs per host;
  TPU topologies are not derived, so such a fix comes with None (analytic only).
  same_devices: stop at the first fix that changes the device count.
  """
  ana = analytic_plan(spec, platform=plan.platform, num_devices=plan.num_devices,
                      kind=plan.device_kind, device_memory=0, peak=0)
  scale = plan.activations / max(ana.activations, 1)
  for fix in candidates(spec, plan, scale):
    if same_devices and fix.devices != plan.num_devices:
      return
    t = _fix_target(fix, plan, target)
    if t is None:
      yield fix, None
      continue
    yield fix, target_plan(fix.apply(spec, plan.num_devices), t)


def compiled_fixes(spec: RunSpec, plan: Plan, target, *, limit: int = 3,
                   max_compiles: int = 6) -> list[str]:
  """Up to `limit` settings that fit, each checked by compiling it for the target."""
  out, compiles = [], 0
  for fix, p in compiled_candidates(spec, plan, target):
    flags = fix.flags(spec, plan.num_devices)
    if p is None:
      out.append(f"{flags} (analytic)")
    else:
      compiles += 1
      if p.fits:
        out.append(f"{flags} ({p.total / GIB:,.1f} GiB)")
    if len(out) >= limit or compiles >= max_compiles:
      break
  return out


def _fix_target(fix: Fix, plan: Plan, target):
  """The target for a fix's device count: the same one, more GPU hosts, or None (TPU)."""
  if fix.devices == plan.num_devices:
    return target
  if target.platform != "gpu":
    return None
  from olmo_jax import targets
  per_host = plan.num_devices // target.hosts
  hosts = max(1, fix.devices // per_host)
  return targets.gpu_target(target.device_kind, fix.devices, hosts)
