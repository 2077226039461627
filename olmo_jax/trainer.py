"""The training library: sharded state init, the jitted step, the loop and its hooks.

The hot loop is pure JAX: the NNX model is split once into params and a pure `forward`, and
`train_step(state, batch) -> (state, metrics)` is a `jax.jit` over plain pytrees with the
state donated. The step is made of named parts: `make_gradient_fn` (loss and gradients over
microbatches), an `UpdatePolicy` (fp16 loss scaling and the rule for non-finite updates) and
the optax schedule, which reports the learning rate. The loop reads metrics one step late so
the host never blocks the device; logging, checkpointing, evaluation and signal handling are
`Hook`s with a period (the entry point chooses them), so nothing plugs into the loop's body.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from olmo_jax import model as model_lib
from olmo_jax import sharding
from olmo_jax.kernels import resolve_platform

State = dict[str, Any]

# Dense bf16 peak FLOP/s per device, for MFU.
PEAK_FLOPS = {
    "h200": 989e12, "h100": 989e12, "a100": 312e12, "a10": 125e12, "l4": 121e12,
    "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12,
    "tpu v5": 459e12, "tpu v6 lite": 918e12, "tpu v6e": 918e12,
}

LOSS_SCALE_PERIOD = 2000  # fp16: double the scale after this many finite steps
INITIAL_LOSS_SCALE = 2.0 ** 15  # fp16: the dynamic loss scale a fresh run starts from


def peak_flops_entry(device_kind: str) -> tuple[str, float]:
  """(PEAK_FLOPS key, dense bf16 FLOP/s) matching a device kind string; ("", 0.0) if unknown.

  Takes the kind as a string so that non-JAX callers (the PyTorch reference of
  benchmarks/bench_train_gpu.py, with torch.cuda.get_device_name) share the one table.
  """
  kind = device_kind.lower()
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):
    if key in kind:
      return key, PEAK_FLOPS[key]
  return "", 0.0


def device_peak_flops(device: jax.Device | None = None) -> float:
  """Peak dense bf16 FLOP/s of a device from its kind, or 0 when unknown (CPU)."""
  device = device or jax.devices()[0]
  return peak_flops_entry(device.device_kind)[1]


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss with train.nan_policy='stop'."""


@dataclasses.dataclass(frozen=True)
class UpdatePolicy:
  """How a step's gradients become an update: fp16 dynamic loss scaling and the NaN/Inf rule.

  nonfinite='stop': the host raises NonFiniteLossError when it reads a step whose loss or
  gradient norm is not finite (that state is never checkpointed); 'skip': such an update is
  dropped on the device (params and optimizer state kept) and the step is logged as skipped.
  With loss_scaling the device always drops overflowing updates and halves the scale; every
  `scale_period` finite steps in a row double it.
  """

  nonfinite: str = "stop"
  loss_scaling: bool = False
  scale_period: int = LOSS_SCALE_PERIOD
  initial_scale: float = INITIAL_LOSS_SCALE

  @staticmethod
  def scale_state(scale: float) -> State:
    """The state's "loss_scale" entry: {"scale": float32[], "good_steps": int32[]}."""
    return {"scale": jnp.float32(scale), "good_steps": jnp.int32(0)}

  def scale(self, state: State) -> jax.Array:
    """The factor the loss is multiplied by before differentiation."""
    return state["loss_scale"]["scale"] if self.loss_scaling else jnp.float32(1.0)

  def unscale(self, grads, scale):
    return jax.tree.map(lambda g: g / scale, grads)

  def apply(self, tx: optax.GradientTransformation, state: State, grads,
            loss) -> tuple[State, jax.Array, jax.Array]:
    """(state after the update, global gradient norm, finite) from unscaled gradients."""
    params = state["params"]
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    if self.nonfinite == "skip" or self.loss_scaling:
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
      new_params, opt_state = keep(new_params, params), keep(opt_state, state["opt_state"])
    new_state = dict(state, step=state["step"] + 1, params=new_params, opt_state=opt_state)
    if self.loss_scaling:
      new_state["loss_scale"] = self._next_scale(state["loss_scale"], finite)
    return new_state, grad_norm, finite

  def _next_scale(self, ls: State, finite) -> State:
    good = jnp.where(finite, ls["good_steps"] + 1, 0)
    grow = good >= self.scale_period
    scale = jnp.where(finite, jnp.where(grow, ls["scale"] * 2, ls["scale"]),
                      jnp.maximum(ls["scale"] / 2, 1.0))
    return {"scale": scale, "good_steps": jnp.where(grow, 0, good)}

  def check(self, step: int, host: dict[str, float]) -> None:
    """The host side of the rule, on the fetched metrics of `step` (pops "finite")."""
    if host.pop("finite", 1.0) and math.isfinite(host["loss"]):
      return
    if self.nonfinite == "stop":
      raise NonFiniteLossError(
          f"non-finite loss ({host['loss']}) or gradient norm ({host['grad_norm']}) at step "
          f"{step}; the last complete checkpoint is kept. Lower train.lr, enable train.z_loss, "
          f"or set train.nan_policy=skip to skip such updates.")
    host["skipped"] = 1.0


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the compiled train step needs besides the model config and the optimizer."""

  microbatches: int = 1
  z_loss: float = 0.0
  loss_chunk_tokens: int = 0  # > 0: fused chunked head + loss (no [B, L, V] logits); 0: dense
  policy: UpdatePolicy = dataclasses.field(default_factory=UpdatePolicy)
  # The optimizer's own schedule (optim.make_schedule), reported as metrics["lr"]; None: no lr.
  lr_schedule: optax.Schedule | None = None


# ----------------------------------------------------------------------------- state


def abstract_model(cfg: model_lib.ModelConfig) -> model_lib.OLMo:
  return nnx.eval_shape(lambda: model_lib.OLMo(cfg, rngs=nnx.Rngs(0)))


def init_params(cfg: model_lib.ModelConfig, seed: int) -> dict[str, Any]:
  """Freshly initialised float32 params (nested dict), as OLMo initialises them."""
  model = model_lib.OLMo(cfg, rngs=nnx.Rngs(params=seed))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def state_init_fn(cfg: model_lib.ModelConfig, tx: optax.GradientTransformation, seed: int,
                  loss_scale: float | None = None) -> Callable[..., State]:
  """`init(params=None) -> state`: the one description of the train state's layout.

  {"step": int32[], "params", "opt_state": tx.init(params), "rng": uint32[2]} plus
  "loss_scale" (UpdatePolicy.scale_state) with fp16 loss scaling. `params` (e.g. imported
  from HF) replaces the random init.
  """
  def init(params=None) -> State:
    params = init_params(cfg, seed) if params is None else params
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)}
    if loss_scale is not None:
      state["loss_scale"] = UpdatePolicy.scale_state(loss_scale)
    return state
  return init


def state_shardings(mesh: Mesh, cfg: model_lib.ModelConfig, tx: optax.GradientTransformation,
                    loss_scaling: bool = False) -> tuple[State, State]:
  """(abstract state of ShapeDtypeStructs, matching NamedShardings) without materialising it.

  The layout is `jax.eval_shape` of state_init_fn; params follow their logical axes, the
  optimizer's per-parameter states follow the params, everything else is replicated.
  """
  shapes = jax.eval_shape(state_init_fn(cfg, tx, 0, 1.0 if loss_scaling else None))
  rep = sharding.replicated(mesh)
  param_sh = sharding.tree_shardings(mesh, model_lib.param_axes(abstract_model(cfg)),
                                     shapes["params"])
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, shapes["opt_state"], param_sh,
                                 transform_non_params=lambda _: rep)
  shard = dict(jax.tree.map(lambda _: rep, shapes), params=param_sh, opt_state=opt_sh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          shapes, shard)
  return abstract, shard


def init_state(mesh: Mesh, cfg: model_lib.ModelConfig, tx: optax.GradientTransformation,
               seed: int, loss_scale: float | None = None,
               params: dict[str, Any] | None = None, shard: State | None = None) -> State:
  """Sharded train state built directly on the devices (no host-side full-size copy).

  `params` (e.g. imported from HF) replaces the random init; the optimizer state is fresh.
  `shard` is state_shardings(...)[1] when the caller already has it.
  """
  if shard is None:
    _, shard = state_shardings(mesh, cfg, tx, loss_scale is not None)
  init = jax.jit(state_init_fn(cfg, tx, seed, loss_scale), out_shardings=shard)
  if params is None:
    return init()
  return init(jax.device_put(params, shard["params"]))


# ----------------------------------------------------------------------------- the step


def _split_microbatches(x_BxL, m: int, batch_spec):
  """[B, L] -> [M, B/M, L], taking rows m, M+m, ... so every device keeps its rows."""
  B, L = x_BxL.shape
  x = x_BxL.reshape(B // m, m, L).transpose(1, 0, 2)
  if batch_spec is not None:
    x = jax.lax.with_sharding_constraint(x, batch_spec)
  return x


def default_loss_chunk(platform: str = "auto") -> int:
  """Tokens per chunk of the fused head + loss: cache-sized on CPU, large on accelerators.

  platform: the resolved model.platform ('auto': the devices in use)."""
  return 256 if resolve_platform(platform) == "cpu" else 4096


def make_loss_fn(cfg: model_lib.ModelConfig, step_cfg: StepConfig):
  """loss(params, inputs [B, L], targets [B, L], scale) -> (scale * loss, (loss, aux))."""
  def loss_fn(params, inputs, targets, scale):
    if step_cfg.loss_chunk_tokens > 0:
      hidden = model_lib.forward(cfg, params, inputs, return_hidden=True)
      loss, aux = model_lib.fused_head_loss(hidden, params["lm_head"], targets, step_cfg.z_loss,
                                            step_cfg.loss_chunk_tokens)
    else:
      logits = model_lib.forward(cfg, params, inputs)
      loss, aux = model_lib.cross_entropy(logits, targets, step_cfg.z_loss)
    return loss * scale, (loss, aux)
  return loss_fn


def make_gradient_fn(cfg: model_lib.ModelConfig, step_cfg: StepConfig, mesh: Mesh | None = None):
  """grads(params, ids [B, L+1], scale) -> (loss, aux, gradients of scale * loss).

  Loss, aux and gradients are means over `step_cfg.microbatches` microbatches, accumulated
  by a scan (one pass when there is one microbatch).
  """
  m = step_cfg.microbatches
  micro_spec = None
  if mesh is not None:
    micro_spec = NamedSharding(mesh, P(None, *sharding.spec_for(("batch", "length"), None, mesh)))
  grad_fn = jax.value_and_grad(make_loss_fn(cfg, step_cfg), has_aux=True)

  def gradients(params, ids, scale):
    inputs, targets = ids[:, :-1], ids[:, 1:]
    if m == 1:
      (_, (loss, aux)), grads = grad_fn(params, inputs, targets, scale)
      return loss, aux, grads
    xs = (_split_microbatches(inputs, m, micro_spec), _split_microbatches(targets, m, micro_spec))

    def acc(carry, xy):
      g_sum, l_sum, ce_sum, z_sum = carry
      (_, (l, a)), g = grad_fn(params, xy[0], xy[1], scale)
      g_sum = jax.tree.map(jnp.add, g_sum, g)
      return (g_sum, l_sum + l, ce_sum + a["ce"], z_sum + a["z_loss"]), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, loss, ce, zl), _ = jax.lax.scan(acc, (zeros, 0.0, 0.0, 0.0), xs)
    grads = jax.tree.map(lambda g: g / m, grads)
    return loss / m, {"ce": ce / m, "z_loss": zl / m}, grads

  return gradients


def make_train_step(cfg: model_lib.ModelConfig, tx: optax.GradientTransformation,
                    step_cfg: StepConfig, mesh: Mesh | None = None,
                    shard: State | None = None) -> Callable[[State, dict], tuple[State, dict]]:
  """The jitted `train_step(state, batch) -> (state, metrics)`, state donated.

  batch: {"input_ids": int32[B, L+1]}; metrics: loss, ce, z_loss, grad_norm, finite, lr (of
  this update, when step_cfg.lr_schedule is given) and loss_scale (fp16).
  """
  train_step = train_step_fn(cfg, tx, step_cfg, mesh)
  if shard is None:
    return jax.jit(train_step, donate_argnums=0)
  return jax.jit(train_step, donate_argnums=0, out_shardings=(shard, None))


def train_step_fn(cfg: model_lib.ModelConfig, tx: optax.GradientTransformation,
                  step_cfg: StepConfig, mesh: Mesh | None = None):
  """The pure, unjitted `train_step(state, batch) -> (state, metrics)` of make_train_step;
  pure over pytrees, so `jax.vmap` over a leading replica axis trains packs (olmo_jax/pack.py)."""
  gradients = make_gradient_fn(cfg, step_cfg, mesh)
  policy, schedule = step_cfg.policy, step_cfg.lr_schedule

  def train_step(state, batch):
    scale = policy.scale(state)
    loss, aux, grads = gradients(state["params"], batch["input_ids"], scale)
    new_state, grad_norm, finite = policy.apply(tx, state, policy.unscale(grads, scale), loss)
    metrics = {"loss": loss, "ce": aux["ce"], "z_loss": aux["z_loss"], "grad_norm": grad_norm,
               "finite": finite}
    if schedule is not None:  # optax counts updates from 0: this update is number state.step
      metrics["lr"] = schedule(state["step"])
    if policy.loss_scaling:
      metrics["loss_scale"] = scale
    return new_state, metrics

  return train_step


def setup(cfg: model_lib.ModelConfig, tx: optax.GradientTransformation, step_cfg: StepConfig,
          mesh: Mesh, seed: int = 0) -> tuple[State, Callable[[State, dict], tuple[State, dict]]]:
  """A fresh sharded state and its compiled-on-first-call train step (benchmarks, tools)."""
  _, shard = state_shardings(mesh, cfg, tx, step_cfg.policy.loss_scaling)
  policy = step_cfg.policy
  loss_scale = policy.initial_scale if policy.loss_scaling else None
  state = init_state(mesh, cfg, tx, seed, loss_scale, shard=shard)
  return state, make_train_step(cfg, tx, step_cfg, mesh, shard)


def heldout_sums(cfg: model_lib.ModelConfig, params, ids_BxL1, vocab_size: int | None = None):
  """(summed next-token NLL, number of correct argmax predictions) of windows [B, L+1]: the
  held-out loss of the in-loop hook and of DataDecide studies. vocab_size: score over the
  first vocab_size rows of the head only (the real tokens of a padded embedding)."""
  logits_BxLxV = model_lib.forward(cfg, params, ids_BxL1[:, :-1])
  if vocab_size:
    logits_BxLxV = logits_BxLxV[..., :vocab_size]
  lp_BxLx1, greedy_BxLx1 = model_lib.token_logprobs(logits_BxLxV, ids_BxL1[:, 1:, None])
  return -lp_BxLx1.sum(), greedy_BxLx1.sum()


def make_eval_step(cfg: model_lib.ModelConfig):
  """Jitted mean next-token loss of a batch {"input_ids": [B, L+1]}."""
  @jax.jit
  def eval_step(params, batch):
    ids = batch["input_ids"]
    nll, _ = heldout_sums(cfg, params, ids)
    return nll / (ids.shape[0] * (ids.shape[1] - 1))
  return eval_step


# ----------------------------------------------------------------------------- logging


class MetricsLogger:
  """Writes metrics to workdir/metrics.jsonl, TensorBoard event files and stdout."""

  def __init__(self, workdir: str | None, enabled: bool = True):
    self._jsonl = None
    self._tb = None
    if workdir and enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
      self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if self._jsonl:
      self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
      self._jsonl.flush()
    if self._tb:
      from tensorboard.compat.proto import event_pb2, summary_pb2
      values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)]
      self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                         summary=summary_pb2.Summary(value=values)))
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()


def format_metrics(step: int, total: int, m: dict[str, float]) -> str:
  parts = [f"step {step}/{total}", f"loss {m['loss']:.4f}"]
  if "lr" in m:
    parts.append(f"lr {m['lr']:.3e}")
  parts.append(f"gnorm {m['grad_norm']:.3f}")
  if "tokens_per_s" in m:
    parts.append(f"tok/s {m['tokens_per_s']:,.0f}")
  if m.get("mfu"):
    parts.append(f"mfu {100 * m['mfu']:.1f}%")
  if "eval_loss" in m:
    parts.append(f"eval_loss {m['eval_loss']:.4f}")
  return " | ".join(parts)


class Console:
  """Lines for the user: above a tqdm progress bar when there is one, else via print_fn."""

  def __init__(self, start: int, total: int, *, progress_bar: bool = True,
               print_fn: Callable[[str], None] = print):
    self.is_main = jax.process_index() == 0
    self._print = print_fn
    self.bar = None
    if progress_bar and self.is_main and start < total:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                      file=sys.stdout, mininterval=1.0)

  def progress(self, step: int, loss: float) -> None:
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

  def print(self, line: str, every_process: bool = False) -> None:
    if not (self.is_main or every_process):
      return
    self.bar.write(line) if self.bar is not None else self._print(line)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


# ----------------------------------------------------------------------------- the loop


class Loop:
  """One run of train_loop as its hooks see it: the step just dispatched and its state,
  the metrics of the steps (read one step late), the console, and whether to stop."""

  def __init__(self, start: int, total_steps: int, hooks: Sequence[Hook], policy: UpdatePolicy,
               console: Console):
    self.step, self.state, self.total_steps = start, None, total_steps
    self.hooks, self.policy, self.console = tuple(hooks), policy, console
    self.history: list[tuple[int, float]] = []  # (step, loss) of every step read
    self.stop_reason: str | None = None
    self.stop_note = "; no checkpointer, nothing saved."  # the checkpoint hook says otherwise
    self._pending = None  # (step, device metrics, extra host metrics)

  @property
  def last(self) -> bool:
    return self.step == self.total_steps

  def dispatched(self, step: int, state: State, metrics: dict) -> None:
    """Records the step just dispatched; the previous step's metrics are read now."""
    self.settle()
    self.step, self.state, self._pending = step, state, (step, metrics, {})

  def add_metrics(self, extra: dict[str, float]) -> None:
    """Host metrics (e.g. an eval loss) logged with the step just dispatched."""
    if not extra:
      return
    if self._pending is None:  # a hook before this one (CheckpointHook) read the step already
      raise RuntimeError(f"metrics {sorted(extra)} came after step {self.step} was logged: give "
                         "hooks that add metrics before the CheckpointHook")
    self._pending[2].update(extra)

  def settle(self, force_log: bool = False) -> None:
    """Reads the pending step's metrics (blocks on it), checks them and hands them on."""
    if self._pending is None:
      return
    step, dev_metrics, extra = self._pending
    self._pending = None
    self.receive(step, {k: float(v) for k, v in jax.device_get(dev_metrics).items()}, extra,
                 force_log)

  def receive(self, step: int, host: dict[str, float], extra: dict[str, float],
              force_log: bool = False) -> None:
    """A step's host metrics, read: checked by the policy, then handed to the hooks."""
    self.policy.check(step, host)
    self.history.append((step, host["loss"]))
    self.console.progress(step, host["loss"])
    for hook in self.hooks:
      hook.on_metrics(self, step, host, extra, force_log)

  def stop(self, reason: str) -> None:
    """Asks the loop to stop after this step (the first reason given is reported)."""
    if self.stop_reason is None:
      self.stop_reason = reason

  def __enter__(self) -> Loop:
    for hook in self.hooks:
      hook.start(self)
    return self

  def __exit__(self, *exc) -> None:
    try:
      for hook in reversed(self.hooks):
        hook.end(self)
    finally:
      self.console.close()


class Hook:
  """A periodic action of the loop (Levanter-style); subclasses override what they need.

  `__call__(loop)` runs after each step where `due(loop)` holds (every `every` steps by
  default), in the order the hooks were given, on the state just dispatched. `on_metrics`
  sees each step's host metrics once they are read (one step late); `start` and `end`
  bracket the loop (`end` also on errors).
  """

  every: int = 0

  def due(self, loop: Loop) -> bool:
    return self.every > 0 and loop.step % self.every == 0

  def __call__(self, loop: Loop) -> None:
    pass

  def on_metrics(self, loop: Loop, step: int, host: dict[str, float], extra: dict[str, float],
                 force: bool) -> None:
    pass

  def start(self, loop: Loop) -> None:
    pass

  def end(self, loop: Loop) -> None:
    pass


class Callback(Protocol):
  """`fn(step, state)` after a step is dispatched; returns extra metrics to log (or None)."""

  def __call__(self, step: int, state: State) -> dict[str, float] | None: ...


class CallbackHook(Hook):
  """A Callback every `every` steps (e.g. in-loop evaluation built by the entry point)."""

  def __init__(self, fn: Callback, every: int = 1):
    self.fn, self.every = fn, every

  def __call__(self, loop: Loop) -> None:
    loop.add_metrics(self.fn(loop.step, loop.state) or {})


class LossRise:
  """Flags a diverging run whose loss a long warmup still keeps finite (non-finite losses
  stop the run on their own: UpdatePolicy).

  Rule: the logged cross-entropy is above the run's first logged value by more than `margin`
  nats at `patience` consecutive log points. One nat above the start means e times less
  probability on the data than at the start (at initialisation: worse than a uniform guess
  over the vocabulary), which steady training never gets back to; a lone spike does not count.
  Said once per run.
  """

  def __init__(self, margin: float = 1.0, patience: int = 3):
    self.margin, self.patience = margin, patience
    self.start, self.count, self.said = None, 0, False

  def update(self, step: int, m: dict[str, float]) -> str | None:
    """The warning to give after this log point's metrics `m`, or None."""
    loss = m.get("ce", m.get("loss"))
    if self.said or loss is None or not math.isfinite(loss):
      return None
    if self.start is None:
      self.start = loss
      return None
    self.count = self.count + 1 if loss > self.start + self.margin else 0
    if self.count < self.patience:
      return None
    self.said = True
    lr = f" (lr {m['lr']:.3g})" if "lr" in m else ""
    return (f"loss {loss:.4g} at step {step}{lr} has stayed more than {self.margin:g} nat above "
            f"its first logged value {self.start:.4g} for {self.patience} logged steps: the "
            f"run is diverging; lower train.lr and start again")


class LogHook(Hook):
  """Every `every` steps, at the end and with extra metrics: throughput and MFU added, the
  metrics written to the logger and a line to the console."""

  def __init__(self, every: int, *, tokens_per_step: int, flops_per_token: float = 0.0,
               peak_flops: float = 0.0, logger: MetricsLogger | None = None):
    self.log_every, self.tokens_per_step = every, tokens_per_step
    self.flops_per_token, self.peak_flops, self.logger = flops_per_token, peak_flops, logger
    self._t0, self._last = time.perf_counter(), 0
    self.loss_rise = LossRise()

  def start(self, loop: Loop) -> None:
    self._t0, self._last = time.perf_counter(), loop.step

  def on_metrics(self, loop, step, host, extra, force) -> None:
    if not (step % self.log_every == 0 or force or extra):
      return
    now = time.perf_counter()
    if step > self._last:
      tps = (step - self._last) * self.tokens_per_step / (now - self._t0)
      host["tokens_per_s"] = tps
      if self.peak_flops:
        host["mfu"] = tps * self.flops_per_token / (self.peak_flops * jax.device_count())
    self._t0, self._last = now, step
    host.update(extra)
    host["tokens"] = float(step * self.tokens_per_step)
    if self.logger:
      self.logger.write(step, host)
    loop.console.print(format_metrics(step, loop.total_steps, host))
    rising = self.loss_rise.update(step, host)
    if rising:
      logging.warning(rising)


class StopOnSignal(Hook):
  """SIGTERM/SIGINT stop the loop after the current step (which the checkpoint hook then
  saves); a second Ctrl-C stops at once."""

  every = 1

  def __init__(self):
    self.signum = None
    self._old = {}

  def start(self, loop: Loop) -> None:
    for s in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[s] = signal.signal(s, self._handle)
      except ValueError:  # not the main thread: no handlers
        pass

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __call__(self, loop: Loop) -> None:
    if self.signum is not None:
      loop.stop(signal.Signals(self.signum).name)

  def end(self, loop: Loop) -> None:
    for s, h in self._old.items():
      signal.signal(s, h)
    self._old = {}


class CheckpointerLike(Protocol):
  def should_save(self, step: int) -> bool: ...
  def save(self, step: int, state, data_state, *, force: bool = False) -> bool: ...
  def reached_preemption(self, step: int) -> bool: ...
  def wait(self) -> None: ...


class CheckpointHook(Hook):
  """Saves at the checkpointer's cadence, at the last step and when the loop stops; stops the
  loop at a preemption notice (TPU, multi-host). A state is saved only after its step's
  metrics are read, so a NaN step is never checkpointed."""

  every = 1  # decides itself, every step

  def __init__(self, checkpointer: CheckpointerLike,
               data_state: Callable[[], Any] | None = None):
    self.checkpointer, self.data_state = checkpointer, data_state

  def __call__(self, loop: Loop) -> None:
    ckpt = self.checkpointer
    if loop.stop_reason is None and ckpt.reached_preemption(loop.step):
      loop.stop("preemption notice")
    if not (ckpt.should_save(loop.step) or loop.last or loop.stop_reason is not None):
      return
    loop.settle()
    ckpt.save(loop.step, loop.state, self.data_state() if self.data_state else None, force=True)
    if loop.stop_reason is not None:
      ckpt.wait()
      loop.stop_note = f"; checkpoint saved at step {loop.step}. Rerun the same command to resume."


@dataclasses.dataclass
class LoopResult:
  step: int
  state: State
  preempted: bool = False
  history: list = dataclasses.field(default_factory=list)


def put_batch(batch: dict[str, np.ndarray], batch_sh: NamedSharding) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global array on the batch sharding (every process its rows)."""
  return {k: jax.make_array_from_process_local_data(batch_sh, np.asarray(v))
          for k, v in batch.items()}


def train_loop(state: State, train_step, batches: Iterator[dict], *, total_steps: int,
               hooks: Sequence[Hook] = (), policy: UpdatePolicy | None = None,
               progress_bar: bool = True, print_fn: Callable[[str], None] = print) -> LoopResult:
  """Runs train_step on `batches` (on device) from state['step'] to total_steps.

  Metrics of step k are read after step k+1 is dispatched and checked by `policy` (the
  step's UpdatePolicy); the hooks do everything else, in order, after each step.
  """
  start = int(jax.device_get(state["step"]))
  console = Console(start, total_steps, progress_bar=progress_bar, print_fn=print_fn)
  with Loop(start, total_steps, hooks, policy or UpdatePolicy(), console) as loop:
    for step in range(start + 1, total_steps + 1):
      state, metrics = train_step(state, next(batches))
      loop.dispatched(step, state, metrics)
      for hook in loop.hooks:
        if hook.due(loop):
          hook(loop)
      if loop.stop_reason is not None:
        loop.settle()
        console.print(f"{loop.stop_reason}: stopped after step {step}{loop.stop_note}",
                      every_process=True)
        return LoopResult(step, state, True, loop.history)
    loop.settle(force_log=True)
  return LoopResult(total_steps, state, False, loop.history)
