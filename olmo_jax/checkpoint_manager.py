"""The train-state checkpoint manager: async Orbax saves, exact resume, retention.

Retention follows Orbax's own preservation policies (the newest `keep` plus every multiple of
`keep_period`: LatestN / EveryNSteps), applied by us to the complete steps only after a save
is committed and its manifest written, so a good checkpoint is never deleted before a newer
one is complete (Orbax's max_to_keep would delete right after its own commit, before our
manifest, and would count damaged steps as kept). A failed save (disk full, ...) removes its
own temporary directory and never touches older steps; the error is raised at the next
`save`/`wait`.

Async saves block the loop only for a copy of the state: on accelerators Orbax copies to
host; on CPU hosts we copy into reused host buffers (`Checkpointer.prepare(state)` allocates
them ahead of the first save), because the next train step donates the live buffers. On
multi-host runs every process calls every method; process 0 writes the markers, applies
retention and moves damaged steps aside, and the data item holds each process's iterator state.

The layout, the completeness markers and the fallbacks are those of olmo_jax/checkpoint.py.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import os
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocp_managers

from olmo_jax import paths
from olmo_jax.checkpoint import (
    COMMIT_MARKER,
    ITEMS,
    KIND_STATE,
    CheckpointError,
    complete_steps,
    damaged_steps,
    incomplete_reason,
    interrupted_save,
    is_primary,
    report,
    restore_newest,
    select_steps,
    set_aside,
    sync,
    write_manifest,
)

# What Orbax's preservation policies read of a checkpoint (its PolicyCheckpointInfo protocol).
_StepInfo = collections.namedtuple("_StepInfo", "step time metrics")

def _broadcast_int(x: int | None) -> int | None:
  """Process 0's value on every process (-1 encodes None), so all hosts pick the same step."""
  if jax.process_count() == 1:
    return x
  v = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if x is None else x)))
  return None if v < 0 else v


PER_PROCESS = "__per_process__"


def _gather_json(obj) -> Any:
  """On multi-host, every process's JSON value in one list (Orbax writes JSON from process 0)."""
  if jax.process_count() == 1:
    return obj
  raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.int32(raw.size))).reshape(-1)
  buf = np.zeros(int(lengths.max()), np.uint8)
  buf[:raw.size] = raw
  rows = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(lengths), -1)
  return {PER_PROCESS: [json.loads(bytes(rows[i, :n]).decode()) for i, n in enumerate(lengths)]}


def _own_json(obj, where: str) -> Any:
  """This process's entry of a value saved by _gather_json (None if the host count changed)."""
  if not (isinstance(obj, dict) and PER_PROCESS in obj):
    return obj
  states = obj[PER_PROCESS]
  if len(states) != jax.process_count():
    report(f"checkpoint: {where} holds data iterator states of {len(states)} processes, this "
           f"run has {jax.process_count()}: the data iterators start from their defaults")
    return None
  return states[jax.process_index()]



def retention_policy(keep: int, keep_period: int = 0) -> ocp_managers.PreservationPolicy:
  """Orbax's policy for the newest `keep` steps plus every multiple of `keep_period`."""
  policies = [ocp_managers.LatestN(n=keep)]
  if keep_period:
    policies.append(ocp_managers.EveryNSteps(interval_steps=keep_period))
  return ocp_managers.AnyPreservationPolicy(policies=policies)


def apply_retention(directory: str, policy: ocp_managers.PreservationPolicy) -> None:
  """After a commit: deletes the complete steps `policy` drops; moves older damaged ones aside.

  Only complete steps count, so damaged ones never take the place of a kept checkpoint.
  """
  good = complete_steps(directory, quiet=True)
  if not good:
    return
  now = datetime.datetime.now()
  infos = [_StepInfo(step=s, time=now, metrics=None) for s in good]
  for s, keep in zip(good, policy.should_preserve(infos,
                                                  context=ocp_managers.PreservationContext())):
    if not keep:
      logging.info("checkpoint: deleting step %d (retention policy)", s)
      paths.rmtree(os.path.join(directory, str(s)))
  for s, reason in damaged_steps(directory).items():
    if s < good[-1]:
      set_aside(directory, s, reason)


def remove_failed_save(directory: str, step: int) -> None:
  """Gives back the space our own failed save of `step` holds (disk full); nothing else."""
  for tmp in paths.glob(os.path.join(directory, f"{step}.orbax-checkpoint-tmp*")):
    paths.rmtree(tmp)
  path = os.path.join(directory, str(step))
  if paths.isdir(path) and interrupted_save(path):
    paths.rmtree(path)



@jax.jit
def _copy_tree(tree):
  return jax.tree.map(lambda x: x.copy(), tree)


def _aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
  """An uninitialised host array whose data is `align`-byte aligned (zero-copy for jax)."""
  nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
  raw = np.empty(nbytes + align, np.uint8)
  offset = (-raw.ctypes.data) % align
  return raw[offset:offset + nbytes].view(dtype).reshape(shape)


class _CpuStaging:
  """A private copy of a CPU train state for the background write.

  Orbax writes CPU arrays straight from their buffers (there is no device->host copy), so
  the next train step, which donates those buffers, would wait for the whole write. One
  memcpy in the blocking part of the save avoids that. Single-device states are copied into
  aligned host buffers allocated once and reused (a fresh multi-GB allocation costs more in
  page faults than the copy), then wrapped as jax arrays without a copy. Accelerator arrays
  need none of this: Orbax copies them to host itself.
  """

  def __init__(self):
    self._bufs: list[np.ndarray] | None = None
    self._pool = None
    self._preparing: threading.Thread | None = None

  @staticmethod
  def _mode(leaves) -> str:
    """'none' (accelerator or no arrays), 'host' (one CPU device) or 'jit' (sharded CPU)."""
    devices = [list(x.sharding.device_set) if getattr(x, "sharding", None) is not None else []
               for x in leaves]
    if not any(devices) or any(d.platform != "cpu" for ds in devices for d in ds):
      return "none"
    if jax.process_count() > 1 or any(len(ds) > 1 for ds in devices):
      return "jit"
    return "host"

  def prepare(self, state) -> None:
    """Allocates and touches the host buffers in a background thread, off the first save."""
    leaves = jax.tree.leaves(state)
    if self._mode(leaves) != "host" or self._bufs is not None or self._preparing is not None:
      return

    def allocate():
      bufs = [_aligned_empty(x.shape, x.dtype) for x in leaves]
      for b in bufs:
        b.fill(0)  # the page faults happen here, not in the training loop
      self._bufs = bufs

    self._preparing = threading.Thread(target=allocate, name="olmo_ckpt_staging", daemon=True)
    self._preparing.start()

  def __call__(self, state):
    leaves, treedef = jax.tree.flatten(state)
    mode = self._mode(leaves)
    if mode == "none":
      return state
    if mode == "jit":
      return jax.block_until_ready(_copy_tree(state))  # keeps the sharding
    if self._preparing is not None:
      self._preparing.join()
      self._preparing = None
    arrays = [x for x in leaves if isinstance(x, jax.Array)]
    hosts = [np.asarray(x) for x in leaves]  # views of the CPU buffers, no copy
    if self._bufs is None or [(b.shape, b.dtype) for b in self._bufs] != [
        (h.shape, h.dtype) for h in hosts]:
      self._bufs = [_aligned_empty(h.shape, h.dtype) for h in hosts]
    if self._pool is None:
      from concurrent.futures import ThreadPoolExecutor
      self._pool = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)))
    # The previous save's write is committed (save() joins it first): its buffers are free.
    list(self._pool.map(lambda bh: np.copyto(*bh), zip(self._bufs, hosts)))
    device = next(iter(arrays[0].devices()))
    return jax.tree.unflatten(treedef, [jax.device_put(b, device) for b in self._bufs])


class Checkpointer:
  """Async Orbax checkpoints of the train state + data iterator state + config.

  Every process of a multi-host run constructs one and calls every method.
  """

  def __init__(self, directory: str, *, every: int, keep: int, keep_period: int = 0,
               async_save: bool = True, metadata: dict | None = None):
    if every <= 0 or keep <= 0 or keep_period < 0:
      raise ValueError(f"checkpoint every={every} and keep={keep} must be positive and "
                       f"keep_period={keep_period} >= 0")
    self.directory = paths.abspath(directory)
    self.every, self.keep, self.keep_period = every, keep, keep_period
    self.async_save = async_save
    self.metadata = dict(metadata or {})
    json.dumps(self.metadata)  # fail now, not inside a background save
    self._mngr = self._make_manager()
    self._retention = retention_policy(keep, keep_period)
    self.failed_restores: dict[int, str] = {}  # {step: why} of the last restore
    self._pending: threading.Thread | None = None
    self._error: BaseException | None = None
    self._error_step: int | None = None
    self._staging = _CpuStaging()

  def _make_manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,  # retention is applied by us after our commit (module docstring)
        enable_async_checkpointing=self.async_save,
        cleanup_tmp_directories=True,  # leftovers of saves cut short by kill -9
        create=True)
    return ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def _close_manager(self) -> None:
    try:
      self._mngr.close()
    except Exception:  # a failed save re-raises here; it was reported already
      logging.info("checkpoint: closing the Orbax manager after a failed save", exc_info=True)

  def prepare(self, state) -> None:
    """Optional: call once the state (or its abstract shapes) exists, before the first save.

    On a CPU host it allocates the staging buffers of async saves in the background, so the
    first save blocks for a copy only, not for multi-GB page faults. No-op elsewhere.
    """
    if self.async_save:
      self._staging.prepare(state)

  # -- queries

  def latest_step(self) -> int | None:
    """Newest complete train-state checkpoint (incomplete newer ones are reported)."""
    self._join()
    steps = complete_steps(self.directory, kind=KIND_STATE, quiet=not is_primary())
    return _broadcast_int(steps[-1] if steps else None)

  def should_save(self, step: int) -> bool:
    return step % self.every == 0

  def reached_preemption(self, step: int) -> bool:
    """True at the step where all hosts agreed to stop for a preemption notice (TPU/multi-host)."""
    return bool(self._mngr.reached_preemption(step))

  # -- restore

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict | None, int]:
    """(state on the abstract shardings, data iterator state or None, step).

    abstract_state: pytree of jax.ShapeDtypeStruct with .sharding on the current mesh; the
    saved mesh may differ (Orbax reshards). Without `step`, the newest complete checkpoint
    that restores is used, falling back (and saying so) past corrupt ones, which are then
    moved aside.
    """
    self._join()
    candidates = select_steps(self.directory, step, KIND_STATE)
    self.failed_restores = {}
    s, (state, data) = restore_newest(
        self.directory, candidates, lambda s: self._restore_step(s, abstract_state),
        on_failure=lambda s: self.failed_restores.setdefault(s, "it failed to restore"))
    if step is None:
      self.set_aside_newer(s, self.failed_restores)
    return state, data, s

  def set_aside_newer(self, step: int, failed: dict[int, str] | None = None) -> None:
    """Moves aside the damaged steps newer than `step` (the one resumed from, -1: none)."""
    if is_primary():  # decides alone: another process could see a half-moved directory
      bad = {s: r for s, r in damaged_steps(self.directory).items() if s > step}
      bad.update(failed or {})
      for s, reason in sorted(bad.items()):
        set_aside(self.directory, s, reason)
    sync("olmo_ckpt_set_aside")
    self._mngr.reload()

  def _restore_step(self, step: int, abstract_state):
    path = os.path.join(self.directory, str(step))
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if paths.isdir(os.path.join(path, "data")):
      items["data"] = ocp.args.JsonRestore()
    out = self._mngr.restore(step, args=ocp.args.Composite(**items))
    state = out["state"]
    if isinstance(state, dict) and "step" in state:
      saved = int(np.asarray(jax.device_get(state["step"])))
      if saved != step:
        raise CheckpointError(f"{path} holds a state of step {saved}")
    data = _own_json(out.get("data"), path) if "data" in items else None
    return state, (data or None)

  # -- save

  def save(self, step: int, state, data_state: dict | None, *, force: bool = False) -> bool:
    """Starts saving (async unless async_save=False); False when not due or already saved."""
    if not force and not self.should_save(step):
      return False
    self._join()
    self._raise_pending_error()
    path = os.path.join(self.directory, str(step))
    exists = None  # process 0 decides for all: 1 complete, 0 damaged (moved aside)
    if is_primary() and paths.isdir(path):
      reason = incomplete_reason(path)
      exists = int(reason is None)
      if reason is not None:
        set_aside(self.directory, step, reason)
    if _broadcast_int(exists) == 1:
      return False  # e.g. a preemption save right after resuming at this step
    self._mngr.reload()  # our own moves and deletions are invisible to Orbax's cache
    if self.async_save:
      state = self._staging(state)
    meta = dict(self.metadata, kind=KIND_STATE, step=int(step))
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if data_state is not None:  # each process's own iterator state, all in one JSON item
      items["data"] = ocp.args.JsonSave(_gather_json(data_state))
    try:
      self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:
      self._on_failure(step, e)
      self._raise_pending_error()
    if self.async_save:
      self._pending = threading.Thread(target=self._commit, args=(step,),
                                       name=f"olmo_ckpt_commit_{step}", daemon=True)
      self._pending.start()
    else:
      self._commit(step)
      self._raise_pending_error()
    return True

  def _commit(self, step: int) -> None:
    """After Orbax commits `step`: write the manifest, then garbage-collect older steps."""
    try:
      self._mngr.wait_until_finished()
      path = os.path.join(self.directory, str(step))
      if is_primary():
        if not paths.isfile(os.path.join(path, COMMIT_MARKER)):
          raise CheckpointError(f"Orbax finished step {step} but {path} is not committed")
        write_manifest(path)
        apply_retention(self.directory, self._retention)
        if paths.is_remote(self.directory):  # the metrics and log up to here, with it
          paths.sync_mirrors()
    except BaseException as e:  # surfaced on the main thread at the next save()/wait()
      self._on_failure(step, e)

  def _on_failure(self, step: int, e: BaseException) -> None:
    self._error, self._error_step = e, step
    report(f"checkpoint: saving step {step} to {self.directory} FAILED ({type(e).__name__}: "
           f"{e}); older checkpoints are untouched")
    if is_primary():
      remove_failed_save(self.directory, step)

  def _join(self) -> None:
    if self._pending is not None:
      self._pending.join()
      self._pending = None

  def _raise_pending_error(self) -> None:
    if self._error is not None:
      e, step = self._error, self._error_step
      self._error = self._error_step = None
      # Orbax re-raises a failed save on every later call: start afresh so that the next
      # save (after the disk has space again) can succeed.
      self._close_manager()
      self._mngr = self._make_manager()
      raise CheckpointError(f"saving checkpoint step {step} to {self.directory} failed: "
                            f"{type(e).__name__}: {e}") from e

  def wait(self) -> None:
    """Blocks until pending saves are committed; raises CheckpointError if one failed."""
    self._join()
    self._raise_pending_error()

  def close(self) -> None:
    """Waits for pending saves (reporting, not raising, a failure) and releases Orbax."""
    self._join()
    if self._error is not None:
      report(f"checkpoint: step {self._error_step} was not saved")
      self._error = None
    self._close_manager()
