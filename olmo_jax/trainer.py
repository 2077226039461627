"""The training library: sharded state init, the jitted step, the loop, logging, callbacks.

The hot loop is pure JAX: the NNX model is split once into params and a pure `forward`, and
`train_step(state, batch) -> (state, metrics)` is a `jax.jit` over plain pytrees with the
state donated. Metrics are fetched one step late so the host never blocks the device.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from olmo_jax import model as model_lib
from olmo_jax import optim, sharding

State = dict[str, Any]

# Dense bf16 peak FLOP/s per device, for MFU.
PEAK_FLOPS = {
    "h200": 989e12, "h100": 989e12, "a100": 312e12, "a10": 125e12, "l4": 121e12,
    "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12,
    "tpu v5": 459e12, "tpu v6 lite": 918e12, "tpu v6e": 918e12,
}

LOSS_SCALE_PERIOD = 2000  # fp16: double the scale after this many finite steps


def device_peak_flops(device: jax.Device | None = None) -> float:
  """Peak dense bf16 FLOP/s of a device from its kind, or 0 when unknown (CPU)."""
  device = device or jax.devices()[0]
  kind = device.device_kind.lower()
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):
    if key in kind:
      return PEAK_FLOPS[key]
  return 0.0


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the compiled train step needs besides the model config."""

  microbatches: int = 1
  z_loss: float = 0.0
  skip_nonfinite: bool = False  # nan_policy == 'skip'
  loss_scaling: bool = False  # fp16 dynamic loss scaling
  loss_chunk_tokens: int = 0  # > 0: fused chunked head + loss (no [B, L, V] logits); 0: dense
  peak_lr: float = 1e-3
  warmup_steps: int = 0
  total_steps: int = 1
  min_lr_ratio: float = 0.01


# ----------------------------------------------------------------------------- state


def abstract_model(cfg: model_lib.ModelConfig) -> model_lib.OLMo:
  return nnx.eval_shape(lambda: model_lib.OLMo(cfg, rngs=nnx.Rngs(0)))


def init_params(cfg: model_lib.ModelConfig, seed: int) -> dict[str, Any]:
  """Freshly initialised float32 params (nested dict), as OLMo initialises them."""
  model = model_lib.OLMo(cfg, rngs=nnx.Rngs(params=seed))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def state_shardings(mesh: Mesh, cfg: model_lib.ModelConfig, tx: optax.GradientTransformation,
                    loss_scaling: bool = False) -> tuple[State, State]:
  """(abstract state of ShapeDtypeStructs, matching NamedShardings) without materialising it."""
  axes = model_lib.param_axes(abstract_model(cfg))
  shapes = jax.eval_shape(lambda: init_params(cfg, 0))
  param_sh = sharding.tree_shardings(mesh, axes, shapes)
  rep = sharding.replicated(mesh)
  opt_shapes = jax.eval_shape(tx.init, shapes)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, opt_shapes, param_sh,
                                 transform_non_params=lambda _: rep)
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": shapes,
              "opt_state": opt_shapes, "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
  shard = {"step": rep, "params": param_sh, "opt_state": opt_sh, "rng": rep}
  if loss_scaling:
    abstract["loss_scale"] = {"scale": jax.ShapeDtypeStruct((), jnp.float32),
                              "good_steps": jax.ShapeDtypeStruct((), jnp.int32)}
    shard["loss_scale"] = {"scale": rep, "good_steps": rep}
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shard)
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

  def make(p):
    p = init_params(cfg, seed) if p is None else p
    state = {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p),
             "rng": jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)}
    if loss_scale is not None:
      state["loss_scale"] = {"scale": jnp.float32(loss_scale), "good_steps": jnp.int32(0)}
    return state

  if params is None:
    return jax.jit(lambda: make(None), out_shardings=shard)()
  params = jax.device_put(params, shard["params"])
  return jax.jit(make, out_shardings=shard)(params)


# ----------------------------------------------------------------------------- the step


def _split_microbatches(x_BxL, m: int, batch_spec):
  """[B, L] -> [M, B/M, L], taking rows m, M+m, ... so every device keeps its rows."""
  B, L = x_BxL.shape
  x = x_BxL.reshape(B // m, m, L).transpose(1, 0, 2)
  if batch_spec is not None:
    x = jax.lax.with_sharding_constraint(x, batch_spec)
  return x


def default_loss_chunk(backend: str | None = None) -> int:
  """Tokens per chunk of the fused head + loss: cache-sized on CPU, large on accelerators."""
  return 256 if (backend or jax.default_backend()) == "cpu" else 4096


def make_train_step(cfg: model_lib.ModelConfig, tx: optax.GradientTransformation,
                    step_cfg: StepConfig, mesh: Mesh | None = None,
                    shard: State | None = None) -> Callable[[State, dict], tuple[State, dict]]:
  """The jitted `train_step(state, batch) -> (state, metrics)`, state donated."""
  m = step_cfg.microbatches
  micro_spec = None
  if mesh is not None:
    b = sharding.spec_for(("batch", "length"), None, mesh)
    micro_spec = NamedSharding(mesh, P(None, *b))

  def loss_fn(params, inputs, targets, scale):
    if step_cfg.loss_chunk_tokens > 0:
      hidden = model_lib.forward(cfg, params, inputs, return_hidden=True)
      loss, aux = model_lib.fused_head_loss(hidden, params["lm_head"], targets, step_cfg.z_loss,
                                            step_cfg.loss_chunk_tokens)
    else:
      logits = model_lib.forward(cfg, params, inputs)
      loss, aux = model_lib.cross_entropy(logits, targets, step_cfg.z_loss)
    return loss * scale, (loss, aux)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    params = state["params"]
    ids = batch["input_ids"]
    inputs, targets = ids[:, :-1], ids[:, 1:]
    scale = state["loss_scale"]["scale"] if step_cfg.loss_scaling else jnp.float32(1.0)
    if m == 1:
      (_, (loss, aux)), grads = grad_fn(params, inputs, targets, scale)
    else:
      xs = (_split_microbatches(inputs, m, micro_spec), _split_microbatches(targets, m, micro_spec))

      def acc(carry, xy):
        g_sum, l_sum, ce_sum, z_sum = carry
        (_, (l, a)), g = grad_fn(params, xy[0], xy[1], scale)
        g_sum = jax.tree.map(jnp.add, g_sum, g)
        return (g_sum, l_sum + l, ce_sum + a["ce"], z_sum + a["z_loss"]), None

      zeros = jax.tree.map(jnp.zeros_like, params)
      (grads, loss, ce, zl), _ = jax.lax.scan(acc, (zeros, 0.0, 0.0, 0.0), xs)
      grads = jax.tree.map(lambda g: g / m, grads)
      loss, aux = loss / m, {"ce": ce / m, "z_loss": zl / m}
    grads = jax.tree.map(lambda g: g / scale, grads)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(grad_norm) & jnp.isfinite(loss)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = dict(state, step=state["step"] + 1, params=new_params, opt_state=opt_state)
    if step_cfg.skip_nonfinite or step_cfg.loss_scaling:
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
      new_state["params"] = keep(new_params, params)
      new_state["opt_state"] = keep(opt_state, state["opt_state"])
    if step_cfg.loss_scaling:
      ls = state["loss_scale"]
      good = jnp.where(finite, ls["good_steps"] + 1, 0)
      grow = good >= LOSS_SCALE_PERIOD
      new_scale = jnp.where(finite, jnp.where(grow, ls["scale"] * 2, ls["scale"]),
                            jnp.maximum(ls["scale"] / 2, 1.0))
      new_state["loss_scale"] = {"scale": new_scale, "good_steps": jnp.where(grow, 0, good)}
    lr = optim.lr_at(state["step"] + 1, peak_lr=step_cfg.peak_lr,
                     warmup_steps=step_cfg.warmup_steps, total_steps=step_cfg.total_steps,
                     min_lr_ratio=step_cfg.min_lr_ratio)
    metrics = {"loss": loss, "ce": aux["ce"], "z_loss": aux["z_loss"], "grad_norm": grad_norm,
               "lr": lr, "finite": finite}
    if step_cfg.loss_scaling:
      metrics["loss_scale"] = state["loss_scale"]["scale"]
    return new_state, metrics

  if shard is None:
    return jax.jit(train_step, donate_argnums=0)
  return jax.jit(train_step, donate_argnums=0, out_shardings=(shard, None))


def setup(cfg: model_lib.ModelConfig, tx: optax.GradientTransformation, step_cfg: StepConfig,
          mesh: Mesh, seed: int = 0) -> tuple[State, Callable[[State, dict], tuple[State, dict]]]:
  """A fresh sharded state and its compiled-on-first-call train step (benchmarks, tools)."""
  _, shard = state_shardings(mesh, cfg, tx, step_cfg.loss_scaling)
  loss_scale = 2.0 ** 15 if step_cfg.loss_scaling else None
  state = init_state(mesh, cfg, tx, seed, loss_scale, shard=shard)
  return state, make_train_step(cfg, tx, step_cfg, mesh, shard)


def make_eval_step(cfg: model_lib.ModelConfig):
  """Jitted mean next-token loss of a batch {"input_ids": [B, L+1]}."""
  @jax.jit
  def eval_step(params, batch):
    ids = batch["input_ids"]
    logits = model_lib.forward(cfg, params, ids[:, :-1])
    return model_lib.cross_entropy(logits, ids[:, 1:])[0]
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
  parts = [f"step {step}/{total}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.3e}",
           f"gnorm {m['grad_norm']:.3f}"]
  if "tokens_per_s" in m:
    parts.append(f"tok/s {m['tokens_per_s']:,.0f}")
  if m.get("mfu"):
    parts.append(f"mfu {100 * m['mfu']:.1f}%")
  if "eval_loss" in m:
    parts.append(f"eval_loss {m['eval_loss']:.4f}")
  return " | ".join(parts)


# ----------------------------------------------------------------------------- the loop


class Callback(Protocol):
  """Called after each step is dispatched; returns extra metrics to log (or None)."""

  def __call__(self, step: int, state: State) -> dict[str, float] | None: ...


class CheckpointerLike(Protocol):
  def should_save(self, step: int) -> bool: ...
  def save(self, step: int, state, data_state, *, force: bool = False) -> bool: ...
  def reached_preemption(self, step: int) -> bool: ...
  def wait(self) -> None: ...


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss with train.nan_policy='stop'."""


class _SignalFlag:
  """SIGTERM/SIGINT set a flag; the loop finishes the step, saves and exits cleanly."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    for s in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[s] = signal.signal(s, self._handle)
      except ValueError:  # not the main thread: no handlers
        pass
    return self

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    self.signum = signum

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)


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


def train_loop(state: State, train_step, data_iter: Iterator[dict], *, total_steps: int,
               batch_sh: NamedSharding, tokens_per_step: int, flops_per_token: float,
               peak_flops: float, log_every: int = 10, logger: MetricsLogger | None = None,
               checkpointer: CheckpointerLike | None = None,
               callbacks: tuple[Callback, ...] = (), nan_policy: str = "stop",
               progress_bar: bool = True, get_data_state: Callable[[], Any] | None = None,
               print_fn: Callable[[str], None] = print) -> LoopResult:
  """Runs train_step from state['step'] to total_steps; returns the final state.

  Metrics of step k are fetched after step k+1 is dispatched. Checkpoints are taken at the
  steps the checkpointer asks for, after that step's metrics are checked for NaN/Inf.
  """
  start = int(jax.device_get(state["step"]))
  is_main = jax.process_index() == 0
  n_dev = jax.device_count()
  bar = None
  if progress_bar and is_main and start < total_steps:
    from tqdm import tqdm
    bar = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True,
               file=sys.stdout, mininterval=1.0)
  pending = None  # (step, device metrics)
  window_t0, window_steps = time.perf_counter(), 0
  result = LoopResult(start, state)
  last_logged = {}

  def process(step, dev_metrics, extra, force_log=False):
    nonlocal window_t0, window_steps, last_logged
    host = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
    if not host.pop("finite", 1.0) or not math.isfinite(host["loss"]):
      if nan_policy == "stop":
        raise NonFiniteLossError(
            f"non-finite loss ({host['loss']}) or gradient norm ({host['grad_norm']}) at step "
            f"{step}; the last complete checkpoint is kept. Lower train.lr, enable train.z_loss, "
            f"or set train.nan_policy=skip to skip such updates.")
      host["skipped"] = 1.0
    result.history.append((step, host["loss"]))
    if bar is not None:
      bar.update(step - bar.n)
      bar.set_postfix(loss=f"{host['loss']:.4f}", refresh=False)
    if step % log_every == 0 or force_log or extra:
      now = time.perf_counter()
      if window_steps:
        tps = window_steps * tokens_per_step / (now - window_t0)
        host["tokens_per_s"] = tps
        if peak_flops:
          host["mfu"] = tps * flops_per_token / (peak_flops * n_dev)
      window_t0, window_steps = now, 0
      host.update(extra)
      host["tokens"] = float(step * tokens_per_step)
      if logger:
        logger.write(step, host)
      if is_main:
        line = format_metrics(step, total_steps, host)
        bar.write(line) if bar is not None else print_fn(line)
      last_logged = host

  with _SignalFlag() as sig:
    try:
      for step in range(start + 1, total_steps + 1):
        batch = put_batch(next(data_iter), batch_sh)
        state, metrics = train_step(state, batch)
        result.state = state
        extra = {}
        for cb in callbacks:  # e.g. in-loop evaluation, on the state after this step
          extra.update(cb(step, state) or {})
        if pending is not None:
          process(*pending)
        pending = (step, metrics, extra)
        window_steps += 1
        preempt = sig.signum is not None or (
            checkpointer is not None and checkpointer.reached_preemption(step))
        if checkpointer is not None and (checkpointer.should_save(step) or preempt
                                         or step == total_steps):
          process(*pending)  # never checkpoint a state whose loss was not checked
          pending = None
          data_state = get_data_state() if get_data_state else None
          checkpointer.save(step, state, data_state, force=True)
        if preempt:
          if pending is not None:
            process(*pending)
            pending = None
          if checkpointer is not None:
            checkpointer.wait()
          why = signal.Signals(sig.signum).name if sig.signum else "preemption notice"
          msg = (f"{why}: stopped after step {step}" +
                 (f"; checkpoint saved at step {step}. Rerun the same command to resume."
                  if checkpointer is not None else "; no checkpointer, nothing saved."))
          if bar is not None:
            bar.write(msg)
          else:
            print_fn(msg)
          result.step, result.preempted = step, True
          return result
      if pending is not None:
        process(*pending, force_log=True)
      result.step = total_steps
    finally:
      if bar is not None:
        bar.close()
  result.state = state
  return result
