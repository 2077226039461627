"""Packs: K replicas of one model shape trained as one program.

A proxy ladder is hundreds of runs whose models are far too small to fill a device. Within one
size of a DataDecide ladder the runs differ only in their seed and their data, so they can
share one compiled step: the train state and the batches carry a leading replica axis and the
step is `jax.vmap` over the trainer's pure `train_step` (trainer.train_step_fn) on GPU/TPU, or
on CPU a `lax.map` of it (the plain step looped inside the one program; see default_mode).
Each replica keeps its own init seed, its own data stream and its own hooks (checkpoints,
metrics, log), so every replica is still an ordinary run; its numbers equal a separate run's
within float rounding (bit-identical with 'map'; a batched matmul may sum in another order).

The replica axis is the only axis a pack shards: its leading dimension is spread over a
'replica' mesh axis (as many devices as divide K), and each replica's model sits whole on its
device, which is what small models want. The entry point is olmo_jax/train_pack.py.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from olmo_jax import checkpoint, trainer
from olmo_jax import hooks as hooks_lib
from olmo_jax import model as model_lib
from olmo_jax.console import Console
from olmo_jax.runtime import resolve_platform

State = trainer.State
REPLICA_AXIS = "replica"


def stack(trees: Sequence[Any]) -> Any:
  """K pytrees of one structure -> one pytree with a leading replica axis of size K (one
  compiled program for the whole tree)."""
  return _stack(list(trees))


@jax.jit
def _stack(trees: list) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def replica(tree: Any, i: int) -> Any:
  """Replica i of a packed pytree (the leading axis indexed)."""
  return jax.tree.map(lambda x: x[i], tree)


def pack_mesh(k: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D ('replica',) mesh over the most devices whose number divides K."""
  devices = list(devices if devices is not None else jax.devices())
  n = math.gcd(k, len(devices))
  return Mesh(np.array(devices[:n]), (REPLICA_AXIS,))


def packed_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (replica) axis over the mesh's replica axis, every other axis whole."""
  return NamedSharding(mesh, P(REPLICA_AXIS))


def default_mode(platform: str = "auto") -> str:
  """How a pack runs its replicas on a platform: 'vmap' (one batched program: fills an
  accelerator) or 'map' (a loop over the replicas inside the one compiled step: XLA:CPU's
  batched matmuls are slower than its plain ones, and the CPU kernels of olmo_jax/kernels
  are written for the plain ones)."""
  return "map" if resolve_platform(platform) == "cpu" else "vmap"


def make_packed_step(cfg: model_lib.ModelConfig, tx: optax.GradientTransformation,
                     step_cfg: trainer.StepConfig, sh: NamedSharding | None = None,
                     mode: str = "auto"):
  """The jitted `step(packed_state, packed_batch) -> (packed_state, metrics [K])`, donated.

  packed_batch: {"input_ids": int32[K, B, L+1]}; every metric has shape [K].
  mode: 'vmap', 'map' or 'auto' (default_mode of the model's platform).
  """
  one = trainer.train_step_fn(cfg, tx, step_cfg)
  mode = default_mode(cfg.platform) if mode == "auto" else mode
  if mode == "vmap":
    step = jax.vmap(one)
  elif mode == "map":
    step = lambda state, batch: jax.lax.map(lambda sb: one(*sb), (state, batch))
  else:
    raise ValueError(f"pack mode {mode!r}: use vmap, map or auto")
  if sh is None:
    return jax.jit(step, donate_argnums=0)
  return jax.jit(step, donate_argnums=0, out_shardings=(sh, sh))


def make_packed_eval(cfg: model_lib.ModelConfig):
  """Jitted mean next-token loss per replica: (packed params, ids [K, B, L+1]) -> [K]; the
  in-loop held-out loss of trainer.make_eval_step, vmapped."""
  return jax.jit(jax.vmap(lambda params, ids: trainer.make_eval_step(cfg)(
      params, {"input_ids": ids})))


class ReplicaLoop(trainer.Loop):
  """One replica of a pack as its hooks see it: an ordinary trainer.Loop whose state is the
  replica's slice of the packed state and whose metrics the pack reads for it."""

  def __init__(self, pack: PackLoop, index: int, name: str, start: int, total_steps: int,
               hooks: Sequence[hooks_lib.Hook], policy: trainer.UpdatePolicy,
               console: Console):
    super().__init__(start, total_steps, hooks, policy, console)
    self.pack, self.index, self.name = pack, index, name
    self.failed: str | None = None  # why this replica left the pack

  @property
  def state(self) -> State:
    return self.pack.replica_state(self.index)

  @state.setter
  def state(self, value) -> None:  # set by Loop.__init__; the pack owns the state
    pass

  def settle(self, force_log: bool = False) -> None:
    self.pack.settle(force_log)


class PackLoop:
  """K ReplicaLoops over one packed state: dispatch, one-step-late metrics, failures.

  A replica whose step fails its UpdatePolicy (a non-finite loss), whose data fails or whose
  checkpoint save or log write fails leaves the pack, named in its own log and in the pack's
  output; the others go on, and its newest complete checkpoint is kept.
  """

  def __init__(self, names: Sequence[str], start: int, total_steps: int,
               hooks: Sequence[Sequence[hooks_lib.Hook]], policy: trainer.UpdatePolicy,
               consoles: Sequence[Console], print_fn: Callable[[str], None] = print):
    self.replicas = [ReplicaLoop(self, i, n, start, total_steps, h, policy, c)
                     for i, (n, h, c) in enumerate(zip(names, hooks, consoles))]
    self.step, self.total_steps, self.state = start, total_steps, None
    self.print = print_fn
    self._pending = None
    self._slices: dict[int, State] = {}

  def live(self) -> list[ReplicaLoop]:
    return [r for r in self.replicas if r.failed is None]

  def replica_state(self, i: int) -> State:
    if i not in self._slices:
      self._slices[i] = replica(self.state, i)
    return self._slices[i]

  def dispatched(self, step: int, state: State, metrics: dict) -> None:
    self.settle()
    self.step, self.state, self._pending, self._slices = step, state, metrics, {}
    for r in self.live():
      r.step, r._pending = step, (step, None, {})

  def settle(self, force_log: bool = False) -> None:
    """Reads the pending step's metrics [K] and hands each live replica its own."""
    if self._pending is None:
      return
    host = jax.device_get(self._pending)
    self._pending = None
    for r in self.live():
      if r._pending is None:
        continue
      step, _, extra = r._pending
      r._pending = None
      try:
        r.receive(step, {k: float(v[r.index]) for k, v in host.items()}, extra, force_log)
      except trainer.NonFiniteLossError as e:
        self.fail(r, str(e))

  def fail(self, r: ReplicaLoop, why: str) -> None:
    r.failed = why
    r._pending = None
    r.console.print(f"error: {why}")
    self.print(f"[pack] replica {r.name} failed: {why}; the other replicas go on")

  def stop(self, reason: str) -> None:
    for r in self.live():
      r.stop(reason)

  @property
  def stop_reason(self) -> str | None:
    return next((r.stop_reason for r in self.live() if r.stop_reason), None)

  def __enter__(self) -> PackLoop:
    for r in self.replicas:
      r.__enter__()
    return self

  def __exit__(self, *exc) -> None:
    for r in self.replicas:
      r.__exit__(*exc)


class PackedHeldout(hooks_lib.Hook):
  """Every `every` steps: each replica's mean loss on its own held-out batches, in one call,
  logged as that replica's eval_loss."""

  def __init__(self, cfg: model_lib.ModelConfig, batches: Sequence[np.ndarray], every: int,
               sh: NamedSharding | None = None):
    """batches: per eval batch, int32[K, B, L+1] (replica i's own held-out windows)."""
    self.every, self.fn = every, make_packed_eval(cfg)
    self.batches = [jax.device_put(b, sh) if sh is not None else jnp.asarray(b)
                    for b in batches]

  def __call__(self, loop: PackLoop) -> None:
    params = loop.state["params"]
    losses = np.mean(jax.device_get([self.fn(params, b) for b in self.batches]), axis=0)
    for r in loop.live():
      r.add_metrics({"eval_loss": float(losses[r.index])})


class PackBatches:
  """The packed batch stream: each live replica's next batch from its own iterator, stacked
  [K, B, L+1]; a replica whose data fails leaves the pack (zeros fill its slot)."""

  def __init__(self, loop: PackLoop, iters: Sequence[Iterator[dict]], shape: tuple[int, int],
               sh: NamedSharding | None = None):
    self.loop, self.iters, self.shape, self.sh = loop, list(iters), shape, sh

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    rows = []
    for r, it in zip(self.loop.replicas, self.iters):
      row = None
      if r.failed is None:
        try:
          row = np.asarray(next(it)["input_ids"], np.int32)
        except (ValueError, OSError, KeyError, IndexError) as e:
          self.loop.fail(r, f"its data failed: {type(e).__name__}: {e}")
      rows.append(row if row is not None else np.zeros(self.shape, np.int32))
    ids = np.stack(rows)
    return {"input_ids": jax.device_put(ids, self.sh) if self.sh is not None else ids}


def pack_loop(state: State, step_fn, batches: Iterator[dict], loop: PackLoop,
              pack_hooks: Sequence[hooks_lib.Hook] = ()) -> tuple[int, State, bool]:
  """Runs the packed step from loop.step to loop.total_steps; (last step, state, stopped).

  Each step: the pack's own hooks (held-out loss, signals) on the PackLoop, then every live
  replica's hooks (checkpoints, logging) on its ReplicaLoop, as trainer.train_loop runs them.
  """
  start, total = loop.step, loop.total_steps
  with loop, _started(pack_hooks, loop):
    for step in range(start + 1, total + 1):
      state, metrics = step_fn(state, next(batches))
      loop.dispatched(step, state, metrics)
      for hook in pack_hooks:
        if hook.due(loop):
          hook(loop)
      for r in loop.live():
        _replica_hooks(loop, r)
      if loop.stop_reason is not None or not loop.live():
        loop.settle()
        for r in loop.live():
          r.console.print(f"{r.stop_reason}: stopped after step {step}{r.stop_note}")
        return step, state, True
    loop.settle(force_log=True)
  return total, state, False


def _replica_hooks(loop: PackLoop, r: ReplicaLoop) -> None:
  """A replica's own hooks (checkpoints, logging); a save or a write that fails (a full disk,
  a bucket refusing it) fails this replica only: its older checkpoints are kept."""
  for hook in r.hooks:
    if r.failed is not None:
      return
    try:
      if hook.due(r):
        hook(r)
    except (checkpoint.CheckpointError, OSError) as e:
      loop.fail(r, f"{type(e).__name__}: {e}")


@contextlib.contextmanager
def _started(hooks: Sequence[hooks_lib.Hook], loop: PackLoop):
  """The pack's own hooks started (signal handlers installed) and ended around the loop."""
  for hook in hooks:
    hook.start(loop)
  try:
    yield
  finally:
    for hook in reversed(hooks):
      hook.end(loop)
