"""The training library: sharded state init, the jitted step and the loop.

The hot loop is pure JAX: the NNX model is split once into params and a pure `forward`, and
`train_step(state, batch) -> (state, metrics)` is a `jax.jit` over plain pytrees with the
state donated. The step is made of named parts: `make_gradient_fn` (loss and gradients over
microbatches), an `UpdatePolicy` (fp16 loss scaling and the rule for non-finite updates) and
the optax schedule, which reports the learning rate. The loop reads metrics one step late so
the host never blocks the device; logging, checkpointing, evaluation and signal handling are
`Hook`s with a period (hooks.py; the entry point chooses them), so nothing plugs into the
loop's body. The metrics log and the console are console.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from olmo_jax import loss as loss_lib
from olmo_jax import model as model_lib
from olmo_jax import sharding
from olmo_jax.console import Console

# Kept importable as trainer.* for code written against it; their home is olmo_jax/hooks.py.
from olmo_jax.hooks import Hook
from olmo_jax.runtime import resolve_platform

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
  model = model_lib.OLMo(cfg, rngs=nnx.Rngs(params=jax.random.key(seed)))
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


def make_state_init(mesh: Mesh, cfg: model_lib.ModelConfig, tx: optax.GradientTransformation,
                    loss_scale: float | None = None,
                    shard: State | None = None) -> Callable[..., State]:
  """`init(seed, params=None) -> state`, sharded and built on the devices, compiled once for
  every seed (the seed is an argument of the program, not a constant in it): a pack builds
  its replicas' states with one compile. Same values as state_init_fn's for that seed."""
  if shard is None:
    _, shard = state_shardings(mesh, cfg, tx, loss_scale is not None)
  init = jax.jit(lambda seed, params: state_init_fn(cfg, tx, seed, loss_scale)(params),
                 out_shardings=shard)

  def build(seed: int, params: dict[str, Any] | None = None) -> State:
    params = None if params is None else jax.device_put(params, shard["params"])
    return init(jnp.asarray(seed, jnp.int32), params)
  return build


def init_state(mesh: Mesh, cfg: model_lib.ModelConfig, tx: optax.GradientTransformation,
               seed: int, loss_scale: float | None = None,
               params: dict[str, Any] | None = None, shard: State | None = None) -> State:
  """Sharded train state built directly on the devices (no host-side full-size copy).

  `params` (e.g. imported from HF) replaces the random init; the optimizer state is fresh.
  `shard` is state_shardings(...)[1] when the caller already has it.
  """
  return make_state_init(mesh, cfg, tx, loss_scale, shard)(seed, params)


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
      loss, aux = loss_lib.fused_head_loss(hidden, params["lm_head"], targets, step_cfg.z_loss,
                                            step_cfg.loss_chunk_tokens)
    else:
      logits = model_lib.forward(cfg, params, inputs)
      loss, aux = loss_lib.cross_entropy(logits, targets, step_cfg.z_loss)
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
