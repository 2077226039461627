"""Ahead-of-time plan of a training run: memory per device, FLOPs, tokens/s, and whether it fits.

`python -m olmo_jax.train ... --dry_run` prints the plan without training; a normal run checks
the same plan first and stops before allocating anything when it cannot fit, printing the plan
and settings that would fit (instead of an allocator error halfway through the first step).

Where the figures come from (the plan's `source`):
  compiled   the real train step (same function, shardings, remat, dtype) is lowered and
             compiled over the abstract state (nothing is allocated), and XLA's memory
             analysis of the compiled step gives the argument, output and temporary bytes per
             device. For the devices at hand, a normal run then trains with that very
             executable. For a target not at hand (plan.platform=gpu with plan.device_kind,
             plan.devices and plan.hosts; plan.platform=tpu with plan.topology and
             plan.slices) it is compiled for compile-only devices (olmo_jax/targets.py).
             XLA:TPU refuses a step that does not fit (RESOURCE_EXHAUSTED, as on the chips);
             XLA:GPU compiles it anyway, so the plan compares the total with the card's memory.
  analytic   only when no compiler for the target is installed: params and optimizer state
             exact from the sharding rules (on an AbstractMesh), activations from the remat
             preset's saved tensors per layer; the tests pin this estimate against the
             compiled figures.

All byte counts are per device. With plan.output=FILE the plan is also written as JSON
(Plan.to_json: source, target, fits, bytes_per_device, collectives, attention, FLOPs, ...).

This module holds the Plan, the analytic estimate and the search for settings that would fit;
compiling the step for the devices at hand or for a target, `check` and `--dry_run` are
olmo_jax/plan_compile.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from olmo_jax import config, runtime
from olmo_jax.plan_options import plan_options, usable_fraction

GIB = 1024 ** 3

# Device memory (GB) and dense bf16 peak FLOP/s by device kind, for topologies not at hand.
DEVICE_MEMORY_GB = {"h200": 141, "h100": 80, "a100": 80, "a10": 24, "l4": 24, "tpu v4": 32,
                    "tpu v5 lite": 16, "tpu v5e": 16, "tpu v5p": 95, "tpu v6e": 32}
DEFAULT_KIND = {"gpu": "h100", "tpu": "tpu v5p", "cpu": "cpu"}
PLATFORMS = ("auto", "cpu", "gpu", "tpu")

# Activation bytes kept per token and layer for the backward pass, in units of d_model values
# of the compute dtype, by remat preset: the layer input always, then (by policy) the
# projections, attention output and the MLP's [up | gate]. Fitted to XLA's compiled memory
# analysis of the CPU step (float32, blocked attention); tests/test_plan.py pins the estimate
# against the compiled figures.
SAVED_PER_LAYER = {"none": 24.4, "dots_saveable": 15.5, "dots_with_no_batch_dims_saveable": 15.0,
                   "save_qkv_proj": 7.1, "full": 3.0}
# Live temporaries outside the saved activations (one layer's recompute and gradients, the
# loss's hidden-state gradient), same units.
WORKING_SET = 28.0
# The activation estimate against XLA:GPU's compiled figure (bfloat16, XLA attention), as
# (low, high) ratios: 0.98-1.06 of the compiled total from 150M to 1B (1, 8 and 16 GPUs;
# docs/scaling.md), down to 0.41 on models of a few million parameters (XLA:GPU's fixed work
# buffers); tests/test_targets.py pins it.
GPU_TOLERANCE = (0.4, 1.15)
# Bytes per attention score a layer keeps for the backward pass under XLA's attention without
# remat: float32 scores and probabilities (measured 7.5-8.0 on XLA:GPU, 150M and 530M).
XLA_SCORE_BYTES = 8
# Share of a layer's saved activations as wide as d_model (not split by tensor parallelism).
EMBED_SHARE = 0.2


# The trainer's exit code when the step does not fit the devices, for a run (stopped before
# allocating) and a `--dry_run` alike (2 is bad input, 1 a failed run).
EXIT_DOES_NOT_FIT = 3


def out_of_memory(e: BaseException) -> bool:
  """Whether a compiler's or a device's error says the step does not fit its memory (XLA's
  RESOURCE_EXHAUSTED, XLA:TPU's HBM figure, a GPU allocator's "out of memory")."""
  text = str(e)
  return ("RESOURCE_EXHAUSTED" in text or "hbm" in text.lower()
          or "out of memory" in text.lower())


def does_not_fit_line(plan: "Plan") -> str:
  """The last line of a `--dry_run` whose plan does not fit."""
  return (f"does not fit: {_size(plan.total)} per device > {_size(plan.device_memory)} usable "
          f"on {plan.num_devices} x {plan.device_kind}; exit code "
          f"{EXIT_DOES_NOT_FIT} (the plan above)")


class PlanError(ValueError):
  """The run cannot fit its devices; the message holds the plan and what would fit."""


@dataclasses.dataclass
class Plan:
  """Per-device memory and speed figures of one train step."""

  source: str  # compiled | analytic
  platform: str
  device_kind: str
  num_devices: int
  mesh: dict
  params: int  # bytes of the params shard
  opt_state: int  # bytes of the optimizer state shard
  activations: int  # temporaries of the step: activations, gradients, update buffers
  other: int  # batch, step counter, rng, outputs not aliased to inputs
  device_memory: int  # bytes available to the run on one device (0: unknown)
  flops_per_step: float  # model FLOPs per device per step (6N + attention)
  tokens_per_step: int  # global
  peak_flops: float  # per device, 0: unknown
  mfu: float
  note: str = ""
  target: dict = dataclasses.field(default_factory=dict)  # platform, kind, devices, hosts/slices
  collectives: dict = dataclasses.field(default_factory=dict)  # HLO op -> count in the step
  attention: str = ""  # the attention kernel the step lowered to
  xla_flops: float | None = None  # XLA's count for the step, all devices (None: not reported)
  compile_seconds: float = 0.0
  oom_total: int = 0  # XLA:TPU's figure for a step it refused (the breakdown is partial)

  @property
  def total(self) -> int:
    return self.oom_total or self.params + self.opt_state + self.activations + self.other

  @property
  def fits(self) -> bool:
    return not self.device_memory or self.total <= self.device_memory

  @property
  def tokens_per_s(self) -> float:
    if not self.peak_flops:
      return 0.0
    return self.mfu * self.peak_flops * self.tokens_per_step / self.flops_per_step

  def format(self) -> str:
    g = _size
    lines = [
        f"plan ({self.source}) for {self.num_devices} x {self.device_kind} ({self.platform}), "
        f"mesh {self.mesh}:",
        f"  params          {g(self.params)} per device",
        f"  optimizer state {g(self.opt_state)}",
        f"  activations and temporaries {g(self.activations)}",
        f"  other (batch, outputs) {g(self.other)}",
        f"  total           {g(self.total)} of "
        + (g(self.device_memory) if self.device_memory else "unknown") + " device memory"
        + ("" if self.fits else "  -> DOES NOT FIT"),
        f"  FLOPs per step  {self.flops_per_step:.3e} per device (6N + attention), "
        f"{self.tokens_per_step:,} tokens per step",
    ]
    if self.peak_flops:
      lines.append(f"  at {100 * self.mfu:.0f}% MFU of {self.peak_flops / 1e12:,.0f} TFLOP/s: "
                   f"{self.tokens_per_s:,.0f} tokens/s, "
                   f"{self.tokens_per_s / self.tokens_per_step:.3f} steps/s")
    else:
      lines.append(f"  no peak FLOP/s known for {self.device_kind}: set "
                   "train.peak_flops_per_device for a tokens/s figure")
    if self.collectives:
      lines.append("  collectives     " + ", ".join(f"{k} x{v}" for k, v in
                                                     sorted(self.collectives.items())))
    if self.attention:
      lines.append(f"  attention       {self.attention}")
    if self.compile_seconds:
      lines.append(f"  compiled in     {self.compile_seconds:.1f} s")
    if self.note:
      lines.append(f"  note: {self.note}")
    return "\n".join(lines)

  def to_json(self) -> dict:
    """The plan as a JSON-ready dict (bytes per device; FLOPs for the whole step)."""
    target = self.target or {"platform": self.platform, "device_kind": self.device_kind,
                             "devices": self.num_devices}
    return {
        "source": self.source, "target": {**target, "mesh": self.mesh},
        "fits": self.fits,
        "bytes_per_device": {"params": self.params, "optimizer": self.opt_state,
                             "activations": self.activations, "temp": self.other,
                             "total": self.total},
        "device_memory_bytes": self.device_memory,
        "collectives": self.collectives, "attention": self.attention,
        "model_flops_per_step": self.flops_per_step * self.num_devices,
        "xla_flops_per_step": self.xla_flops, "compile_seconds": self.compile_seconds,
        "tokens_per_step": self.tokens_per_step, "note": self.note}


# ----------------------------------------------------------------------------- pieces


def _size(b: int) -> str:
  return f"{b / GIB:,.2f} GiB" if b >= GIB else f"{b / 2**20:,.1f} MiB"


def shard_bytes(abstract_tree, shard_tree) -> int:
  import jax
  total = 0
  for a, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shard_tree)):
    total += math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
  return total


def peak_and_memory(kind: str, opts) -> tuple[float, int]:
  """(peak FLOP/s, memory bytes) of a device kind from the tables (or plan.device_memory_gb)."""
  from olmo_jax import trainer
  peak = trainer.peak_flops_entry(kind)[1]
  mem = int(opts.device_memory_gb * 1e9)
  if not mem:
    for key in sorted(DEVICE_MEMORY_GB, key=len, reverse=True):
      if key in kind:
        mem = int(DEVICE_MEMORY_GB[key] * 1e9)
        break
  return peak, mem


def host_memory_per_device() -> int:
  """CPU: the host's available memory shared by its local (possibly fake) devices."""
  import jax
  avail = 0
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          avail = int(line.split()[1]) * 1024
  except OSError:
    return 0
  return avail // max(1, jax.local_device_count())


def local_device_memory(opts) -> tuple[str, int]:
  """(device kind, usable bytes per device) of the devices at hand.

  On a GPU that is the allocator's own limit (`bytes_limit`: the memory fraction the run set,
  see memory_fraction), counted once; elsewhere the memory times plan.headroom."""
  import jax
  d = jax.local_devices()[0]
  platform = runtime.device_platform(d)
  if opts.device_memory_gb:
    return d.device_kind.lower(), int(opts.device_memory_gb * 1e9
                                      * usable_fraction(opts, platform))
  if d.platform == "cpu":
    return "cpu", int(host_memory_per_device() * opts.headroom)
  stats = d.memory_stats() or {}
  limit = int(stats.get("bytes_limit", 0))
  return d.device_kind.lower(), limit if platform == "gpu" else int(limit * opts.headroom)


def activation_estimate(mcfg, *, tokens: int, seq_len: int, micro_batch: int, platform: str,
                        param_bytes: int, vocab: int, loss_chunk: int, tensor: int = 1) -> int:
  """Analytic bytes of the step's temporaries per device (see SAVED_PER_LAYER).

  tokens: tokens of one microbatch on one device; param_bytes: float32 params shard.
  """
  s = 2 if mcfg.dtype in ("bfloat16", "float16") else 4
  unit = tokens * mcfg.d_model * s
  tp = EMBED_SHARE + (1 - EMBED_SHARE) / tensor  # heads and MLP are split over `tensor`
  saved = mcfg.n_layers * SAVED_PER_LAYER[mcfg.remat] * unit * tp
  work = WORKING_SET * unit * tp
  attn = 0
  impl = mcfg.attention
  if impl == "auto":  # model.attention: jax.nn.dot_product_attention's default is XLA's
    impl = "blocked" if platform == "cpu" else "xla"
  if impl == "xla":  # full [B, H, L, L] scores, kept per layer unless recomputed
    elems = micro_batch * mcfg.n_heads * seq_len * seq_len // tensor
    kept = mcfg.n_layers if mcfg.remat in ("none", "dots_saveable") else 0
    attn = elems * (2 * s + kept * XLA_SCORE_BYTES)
  elif impl == "blocked":  # one block of float32 scores at a time
    block = max(64, seq_len // 16)
    attn = 3 * micro_batch * mcfg.n_heads * block * seq_len * 4 // tensor
  chunk = min(loss_chunk or tokens, tokens)
  loss = (chunk * vocab * 4 + mcfg.d_model * vocab * 4) // tensor  # logits chunk, head grad
  return int(saved + work + attn + loss + param_bytes)  # + the gradient tree


def model_flops_per_token(spec: config.RunSpec) -> float:
  from olmo_jax import sizes
  return sizes.flops_per_token(spec.model.d_model, spec.model.n_layers, spec.train.seq_len,
                               spec.derived.non_embedding_params)



@functools.lru_cache(maxsize=64)
def _state_bytes(mcfg, tx, loss_scaling: bool, shape: tuple[int, int, int]) -> tuple[int, int]:
  """(params, optimizer state) bytes per device on an AbstractMesh of `shape`."""
  from jax.sharding import AbstractMesh

  from olmo_jax import sharding, trainer
  mesh = AbstractMesh(shape, sharding.MESH_AXES)
  abstract, shard = trainer.state_shardings(mesh, mcfg, tx, loss_scaling)
  return (shard_bytes(abstract["params"], shard["params"]),
          shard_bytes(abstract["opt_state"], shard["opt_state"]))


def analytic_plan(spec: config.RunSpec, *, platform: str, num_devices: int, kind: str,
                  device_memory: int, peak: float, note: str = "") -> Plan:
  """The analytic plan on an AbstractMesh of `num_devices` (no devices needed)."""
  from olmo_jax import sharding
  t, m, mcfg, step_cfg = spec.train, spec.mesh, spec.model, spec.step
  shape = sharding.mesh_shape(m.data, m.fsdp, m.tensor, num_devices)
  params, opt = _state_bytes(dataclasses.replace(mcfg, remat="none"), spec.optimizer,
                             step_cfg.policy.loss_scaling, shape)
  batch_shards = shape[0] * shape[1]
  micro_rows = max(1, t.microbatch_size // batch_shards)
  acts = activation_estimate(
      mcfg, tokens=micro_rows * t.seq_len, seq_len=t.seq_len, micro_batch=micro_rows,
      platform=platform, param_bytes=params, vocab=mcfg.embedding_size,
      loss_chunk=step_cfg.loss_chunk_tokens, tensor=shape[2])
  if step_cfg.microbatches > 1:
    acts += params  # the gradient accumulator
  batch = (t.batch_size // batch_shards) * (t.seq_len + 1) * 4
  return Plan("analytic", platform, kind, num_devices, dict(zip(sharding.MESH_AXES, shape)),
              params, opt, acts, batch, device_memory,
              model_flops_per_token(spec) * spec.derived.tokens_per_step / num_devices,
              spec.derived.tokens_per_step, peak, plan_options(spec).mfu, note)



@dataclasses.dataclass(frozen=True)
class Fix:
  """Settings that change where a step fits: devices (mesh.fsdp=-1 when changed), microbatch
  size and remat preset."""

  devices: int
  microbatch: int
  remat: str

  def flags(self, spec: config.RunSpec, num_devices: int) -> str:
    out = [f"{self.devices} devices (mesh.fsdp=-1)"] if self.devices != num_devices else []
    if self.microbatch != spec.train.microbatch_size:
      out.append(f"--config.train.microbatch_size={self.microbatch}")
    if self.remat != spec.model.remat:
      out.append(f"--config.model.remat={self.remat}")
    return " ".join(out)

  def apply(self, spec: config.RunSpec, num_devices: int) -> config.RunSpec:
    """The RunSpec with these settings (on other than `num_devices` devices, the mesh is
    mesh.data=1, mesh.fsdp=-1, mesh.tensor=1)."""
    changes = {"train.microbatch_size": self.microbatch, "model.remat": self.remat}
    if self.devices != num_devices:
      changes.update({"mesh.data": 1, "mesh.fsdp": -1, "mesh.tensor": 1})
    return config.replace_settings(spec, changes)


def candidates(spec: config.RunSpec, plan: Plan, scale: float) -> list[Fix]:
  """Settings under which the analytic plan (scaled to agree with `plan`) fits the device.

  In search order: the fewest devices first (these, then 2x, 4x, ... with mesh.fsdp=-1), and
  for each the remat presets with the largest microbatch that fits.
  """
  t, remat0 = spec.train, spec.model.remat
  if not plan.device_memory:
    return []
  presets = [remat0] + [r for r in ("dots_with_no_batch_dims_saveable", "save_qkv_proj",
                                    "full") if r != remat0]
  out = []
  for devices in [plan.num_devices] + [plan.num_devices * 2 ** k for k in range(1, 11)]:
    m = plan.mesh if devices == plan.num_devices else {"data": 1, "fsdp": devices, "tensor": 1}
    batch_shards = m["data"] * m["fsdp"]
    best = 0
    for remat in presets:
      mb = t.microbatch_size
      while mb > best:
        if mb % batch_shards:  # only microbatches that split over the batch shards
          mb = _smaller_microbatch(t.batch_size, mb, batch_shards)
          continue
        fix = Fix(devices, mb, remat)
        p = analytic_plan(fix.apply(spec, plan.num_devices), platform=plan.platform,
                          num_devices=devices, kind=plan.device_kind, device_memory=0, peak=0)
        same = fix == Fix(plan.num_devices, t.microbatch_size, remat0)  # known not to fit
        if not same and (p.params + p.opt_state + p.other + p.activations * scale
                         <= plan.device_memory):
          best = mb
          out.append(fix)
          break
        mb = _smaller_microbatch(t.batch_size, mb, batch_shards)
  return out


def _smaller_microbatch(batch: int, mb: int, shards: int) -> int:
  """The largest divisor of `batch` below mb that splits over `shards` (0: none).

  Every such divisor is tried, so the search finds the largest microbatch that fits (448
  sequences: 224, 112, 64, 56, 32, 28, 16, 14, 8, 7, 4, 2, 1 on one device).
  """
  nxt = mb - 1
  while nxt and (batch % nxt or nxt % shards):
    nxt -= 1
  return nxt


def suggestions(spec: config.RunSpec, plan: Plan, scale: float) -> list[str]:
  """Up to three analytic fixes, all on the fewest devices that fit (see `candidates`)."""
  fixes = candidates(spec, plan, scale)
  fixes = [f for f in fixes if fixes and f.devices == fixes[0].devices][:3]
  return [f.flags(spec, plan.num_devices) for f in fixes]
