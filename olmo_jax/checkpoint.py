"""Checkpoints that never lose work: Orbax saves, exact resume, fallbacks, params-only I/O.

Layout of `<workdir>/checkpoints/`:

  <step>/                  one Orbax step directory, visible only once complete (Orbax writes it
                           as `<step>.orbax-checkpoint-tmp-*` and renames it on commit)
    state/                 train state {"step", "params", "opt_state", "rng"[, "loss_scale"]}
    params/                (params-only checkpoints instead of state/, see below)
    data/                  data iterator state (JSON), when the trainer has one
    meta/                  {"kind": "train_state"|"params", "step", "config", "tokenizer_hash"}
    commit_success.txt     Orbax's commit marker
    olmo_manifest.json     our second marker: every file's size and CRC32, written right after
                           the commit

A step counts as complete only with both markers and every file at its recorded size, so a
truncated file, a deleted marker or a save cut short by kill -9 makes it invisible: it is
reported (a logged warning) and the previous complete step is used instead. Before
a restore the CRC32s are checked too; a step that fails them (corrupt bytes of the right
size) or fails to restore is reported and skipped the same way.

Damaged steps are never deleted: the ones a resume skips, incomplete ones older than the
newest complete step and a damaged step about to be saved again are moved aside to
`damaged/<step>[.n]` and reported (`set_aside`; process 0 decides and moves). The one
exception is a save of our own that failed: its half-written directory is removed.

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

Params-only checkpoints (`write_params_checkpoint`, used by scripts/convert_from_hf.py) are a
step-0 directory with items params/ and meta/ (kind "params"). `Checkpointer.latest_step`
ignores them (there is no train state to resume); the trainer starts from one with
`load_init_params(workdir_or_checkpoint_dir, abstract_params=None)`, which returns the params
(numpy, or placed on the given shardings) or None when there is nothing to start from, and
builds a fresh optimizer state at step 0. `restore_params` reads params from either kind.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import os
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocp_managers

from olmo_jax import paths

COMMIT_MARKER = "commit_success.txt"
MANIFEST = "olmo_manifest.json"
KIND_STATE = "train_state"
KIND_PARAMS = "params"
ITEMS = ("state", "params", "data", "meta")
DAMAGED = "damaged"  # where damaged steps are moved aside
# What Orbax's preservation policies read of a checkpoint (its PolicyCheckpointInfo protocol).
_StepInfo = collections.namedtuple("_StepInfo", "step time metrics")


class CheckpointError(RuntimeError):
  """A checkpoint directory, step or save that cannot be used; the message names it."""


_REPORTED: set[str] = set()


def report(msg: str, once: bool = False) -> None:
  """A fault the user must see: one warning record (once per process if once).

  Logged, not also printed: the training CLI shows it as one `warning:` line on stderr and
  keeps it in train.log; elsewhere Python's logging shows it on stderr.
  """
  if once:
    if msg in _REPORTED:
      return
    _REPORTED.add(msg)
  logging.warning(msg)


def _is_primary() -> bool:
  return jax.process_index() == 0


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _broadcast_int(x: int | None) -> int | None:
  """Process 0's value on every process (-1 encodes None), so all hosts pick the same step."""
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  v = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if x is None else x)))
  return None if v < 0 else v


PER_PROCESS = "__per_process__"


def _gather_json(obj) -> Any:
  """On multi-host, every process's JSON value in one list (Orbax writes JSON from process 0)."""
  if jax.process_count() == 1:
    return obj
  from jax.experimental import multihost_utils
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


# ---------------------------------------------------------------- directory inspection

def step_dirs(directory: str) -> dict[int, str]:
  """{step: path} of the integer-named entries of a checkpoints directory (complete or not)."""
  out = {}
  for name in paths.listdir(directory):
    if name.isdigit() and paths.isdir(os.path.join(directory, name)):
      out[int(name)] = os.path.join(directory, name)
  return out


# The checksum a manifest records: zlib CRC32 of the bytes (local disks, read back once), or
# in a bucket the CRC32C that GCS computed on upload (object metadata: no download).
CRC32, CRC32C = "crc32", "crc32c"


def _files(step_dir: str) -> dict[str, tuple[int, int | None]]:
  """{relative path: (size, CRC32C in a bucket, else None)} without the manifest itself."""
  return {rel: v for rel, v in paths.file_table(step_dir).items()
          if not rel.startswith(MANIFEST)}  # itself and its temporary file


def write_manifest(step_dir: str) -> None:
  """Records every file's size and checksum in the step directory (atomically)."""
  remote = paths.is_remote(step_dir)
  files = {rel: [size, crc if remote else paths.crc32(os.path.join(step_dir, rel))]
           for rel, (size, crc) in sorted(_files(step_dir).items())}
  manifest = {"files": files, "time": time.time()}
  if remote:
    manifest["checksum"] = CRC32C
  paths.write_atomic(os.path.join(step_dir, MANIFEST), json.dumps(manifest, sort_keys=True))


def _read_json(path: str):
  return json.loads(paths.read_text(path))


def _checksum_ok(path: str, algo: str, crc: int, stored: int | None) -> bool:
  """Whether a file's bytes match the manifest's checksum `crc` of kind `algo`."""
  if algo == CRC32C:
    return (stored if stored is not None else paths.crc32c(path)) == crc
  return paths.crc32(path) == crc


def incomplete_reason(step_dir: str, checksums: bool = False) -> str | None:
  """None if the step directory is a complete checkpoint, else why it is not.

  Sizes are always checked (cheap: catches truncation); checksums=True also reads every
  file and compares CRC32s (catches corrupt bytes, costs one read of the checkpoint).
  """
  present = _files(step_dir)  # one listing (in a bucket: sizes and CRC32Cs included)
  if COMMIT_MARKER not in present:
    return f"commit marker {COMMIT_MARKER} is missing"
  manifest_path = os.path.join(step_dir, MANIFEST)
  if not paths.isfile(manifest_path):
    return f"{MANIFEST} is missing (the run stopped while committing)"
  try:
    manifest = _read_json(manifest_path)
    files, algo = manifest["files"], manifest.get("checksum", CRC32)
  except (OSError, ValueError, KeyError) as e:
    return f"{MANIFEST} is unreadable ({e})"
  for rel, (size, crc) in sorted(files.items()):
    if rel not in present:
      return f"file {rel} is missing"
    actual, stored = present[rel]
    if actual != size:
      return f"file {rel} has {actual} bytes, {size} were written (truncated?)"
    if checksums and not _checksum_ok(os.path.join(step_dir, rel), algo, crc, stored):
      return f"file {rel} fails its {algo.upper()} check (corrupt bytes)"
  if not any(rel.startswith(("state/", "params/")) for rel in present):
    return "it holds neither a state/ nor a params/ item"
  return None


def checkpoint_kind(step_dir: str) -> str:
  """'train_state' or 'params' (a checkpoint written by write_params_checkpoint)."""
  return KIND_STATE if paths.isdir(os.path.join(step_dir, "state")) else KIND_PARAMS


def complete_steps(directory: str, *, kind: str | None = None, quiet: bool = False) -> list[int]:
  """Ascending steps of complete checkpoints (optionally of one kind).

  Incomplete steps newer than the newest complete one are reported unless quiet: they are
  the checkpoints a resume would otherwise have used.
  """
  dirs = step_dirs(directory)
  good, bad = [], {}
  for step, path in sorted(dirs.items()):
    reason = incomplete_reason(path)
    if reason is None:
      if kind is None or checkpoint_kind(path) == kind:
        good.append(step)
    else:
      bad[step] = reason
  if not quiet:
    newest = good[-1] if good else -1
    for step, reason in sorted(bad.items()):
      if step > newest:
        fallback = f"using step {newest}" if good else "no complete checkpoint is left"
        report(f"checkpoint: skipping incomplete checkpoint {dirs[step]}: {reason}; {fallback}",
               once=True)
  return good


def resolve_path(path: str, step: int | None = None) -> tuple[str, int | None]:
  """(checkpoints dir, step) from a workdir, a checkpoints dir or a step dir."""
  path = paths.abspath(path.rstrip("/"))
  if not paths.exists(path):
    raise CheckpointError(f"checkpoint path {path} does not exist")
  if paths.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), step
  base = os.path.basename(path)
  if base.isdigit() and any(paths.isdir(os.path.join(path, i)) for i in ITEMS):
    if step is not None and step != int(base):
      raise CheckpointError(f"{path} is step {base} but step={step} was asked for")
    return os.path.dirname(path), int(base)
  if step_dirs(path):
    return path, step
  raise CheckpointError(f"{path} holds no checkpoints: expected a workdir with checkpoints/, "
                        "a checkpoints directory of numbered steps, or one step directory")


def select_steps(directory: str, step: int | None = None, kind: str | None = None) -> list[int]:
  """Steps to try, newest first: just `step` if given (it must be complete and of `kind`).

  Incomplete steps newer than the newest complete one are reported (by process 0).
  """
  steps = complete_steps(directory, quiet=not _is_primary())
  if step is not None:
    path = os.path.join(directory, str(step))
    if step not in steps:
      why = incomplete_reason(path) if paths.isdir(path) else "it does not exist"
      raise CheckpointError(f"checkpoint step {step} in {directory} is unusable: {why}")
    if kind == KIND_STATE and checkpoint_kind(path) != KIND_STATE:
      raise CheckpointError(f"{path} holds parameters only (no optimizer state); start "
                            "from it with checkpoint.load_init_params")
    return [step]
  of_kind = [s for s in steps if kind is None
             or checkpoint_kind(os.path.join(directory, str(s))) == kind]
  if not of_kind:
    only = " (only params-only ones: start from them with load_init_params)" if steps else ""
    raise CheckpointError(f"no complete checkpoint in {directory}{only}")
  return of_kind[::-1]


def restore_newest(directory: str, candidates: list[int], load: Callable[[int], Any],
                   on_failure: Callable[[int], None] | None = None) -> tuple[int, Any]:
  """(step, load(step)) of the first candidate that passes its CRC32s and loads.

  A step that fails is reported and the next (older) candidate is tried; CheckpointError
  when none is left.
  """
  errors = []
  for i, s in enumerate(candidates):
    path = os.path.join(directory, str(s))
    try:
      reason = incomplete_reason(path, checksums=True)
      if reason is not None:
        raise CheckpointError(reason)
      out = load(s)
    except Exception as e:  # corrupt bytes, missing arrays: try the previous one
      errors.append(f"step {s}: {type(e).__name__}: {e}")
      nxt = f"falling back to step {candidates[i + 1]}" if i + 1 < len(candidates) else "giving up"
      report(f"checkpoint: restoring {path} failed ({type(e).__name__}: "
             f"{str(e).splitlines()[0] if str(e) else ''}); {nxt}")
      if on_failure is not None:
        on_failure(s)
      continue
    if s != candidates[0]:
      report(f"checkpoint: resumed from step {s}, not the newest step {candidates[0]}")
    return s, out
  raise CheckpointError(f"no checkpoint in {directory} could be restored:\n  " +
                        "\n  ".join(errors))


def interrupted_save(step_dir: str) -> bool:
  """True for a save cut short (kill -9) before its manifest: not damage, just unfinished."""
  return not paths.isfile(os.path.join(step_dir, MANIFEST))


def damaged_steps(directory: str) -> dict[int, str]:
  """{step: why} of the step directories that are not complete checkpoints (cheap checks)."""
  out = {}
  for step, path in sorted(step_dirs(directory).items()):
    reason = incomplete_reason(path)
    if reason is not None:
      out[step] = reason
  return out


def set_aside(directory: str, step: int, reason: str) -> str | None:
  """Moves a damaged step to `damaged/<step>[.n]` (never deletes it) and reports it.

  Process 0 moves; returns the new path there, None elsewhere.
  """
  if not _is_primary():
    return None
  src = os.path.join(directory, str(step))
  dst = os.path.join(directory, DAMAGED, str(step))
  n = 0
  while paths.exists(dst if n == 0 else f"{dst}.{n}"):
    n += 1
  dst = dst if n == 0 else f"{dst}.{n}"
  paths.makedirs(os.path.dirname(dst))
  paths.rename(src, dst)
  report(f"checkpoint: moved damaged step {step} ({reason}) aside to {dst}")
  return dst


def _restore_target(meta_tree, abstract=None) -> tuple[Any, Any]:
  """(item, restore args) for PyTree restores: numpy arrays of the saved shapes, or arrays
  placed on the shardings of `abstract` (ShapeDtypeStructs)."""
  if abstract is None:
    return (jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta_tree),
            jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), meta_tree))
  return abstract, jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), abstract)


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


# ---------------------------------------------------------------- the train-state manager

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
    steps = complete_steps(self.directory, kind=KIND_STATE, quiet=not _is_primary())
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
    if _is_primary():  # decides alone: another process could see a half-moved directory
      bad = {s: r for s, r in damaged_steps(self.directory).items() if s > step}
      bad.update(failed or {})
      for s, reason in sorted(bad.items()):
        set_aside(self.directory, s, reason)
    _sync("olmo_ckpt_set_aside")
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
    if _is_primary() and paths.isdir(path):
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
      if _is_primary():
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
    if _is_primary():
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


# ---------------------------------------------------------------- params only

def _params_item(step_dir: str) -> tuple[str, str | None]:
  """(item directory, key of the params subtree in it)."""
  if checkpoint_kind(step_dir) == KIND_STATE:
    return os.path.join(step_dir, "state"), "params"
  return os.path.join(step_dir, "params"), None


def _restore_params_item(step_dir: str, target_fn) -> Any:
  """Restores only the params subtree of a step; target_fn(metadata tree) -> (item, args)
  (_restore_target)."""
  item_dir, key = _params_item(step_dir)
  handler = ocp.PyTreeCheckpointHandler()
  ckptr = ocp.Checkpointer(handler)
  # The item's own tree metadata (the checkpointer's would look for step-level metadata
  # in the item directory and log a spurious warning).
  meta = handler.metadata(epath.Path(item_dir))
  tree = meta.tree if hasattr(meta, "tree") else meta
  sub = tree[key] if key else tree
  item, args = target_fn(sub)
  if key:
    item, args = {key: item}, {key: args}
  out = ckptr.restore(item_dir, args=ocp.args.PyTreeRestore(
      item=item, restore_args=args, partial_restore=key is not None))
  return out[key] if key else out


def read_metadata(step_dir: str) -> dict:
  """The meta item (config, tokenizer hash, kind, step) of a step directory."""
  path = os.path.join(step_dir, "meta", "metadata")
  if not paths.isfile(path):
    raise CheckpointError(f"{step_dir} has no meta/ item (not written by olmo_jax?)")
  return _read_json(path)


def restore_params(path: str, step: int | None = None) -> tuple[dict, dict]:
  """(params as a nested dict of numpy arrays, metadata with "config") of a checkpoint.

  path: a workdir, a checkpoints dir or a step dir. Only the params are read: the optimizer
  state is never materialised.
  """
  directory, step = resolve_path(path, step)
  load = lambda s: _restore_params_item(os.path.join(directory, str(s)), _restore_target)
  s, params = restore_newest(directory, select_steps(directory, step), load)
  return params, read_metadata(os.path.join(directory, str(s)))


def write_params_checkpoint(directory: str, params, metadata: dict) -> str:
  """Writes a params-only step-0 checkpoint (kind 'params') and returns its step directory.

  directory: a workdir (the checkpoint goes to <directory>/checkpoints/0) — the trainer
  started on that workdir begins from these params with a fresh optimizer state.
  """
  ckpt_dir = os.path.join(paths.abspath(directory), "checkpoints")
  existing = step_dirs(ckpt_dir)
  if existing:
    raise CheckpointError(f"{ckpt_dir} already holds checkpoints (steps {sorted(existing)}); "
                          "write to an empty directory")
  meta = dict(metadata, kind=KIND_PARAMS, step=0)
  json.dumps(meta)
  mngr = ocp.CheckpointManager(
      ckpt_dir, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
      item_names=ITEMS)
  mngr.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                       meta=ocp.args.JsonSave(meta)), force=True)
  mngr.wait_until_finished()
  mngr.close()
  step_dir = os.path.join(ckpt_dir, "0")
  if _is_primary():
    write_manifest(step_dir)
  _sync("olmo_ckpt_params_written")
  return step_dir


def load_init_params(directory: str, abstract_params=None) -> Any | None:
  """Params of a params-only checkpoint, or None when there is none to start from.

  directory: a workdir or its checkpoints dir. abstract_params: ShapeDtypeStructs with
  shardings to place the params on (None: numpy arrays). None is also returned when a
  train-state checkpoint exists (resume that instead).
  """
  try:
    directory, _ = resolve_path(directory)
  except CheckpointError:
    return None
  if complete_steps(directory, kind=KIND_STATE, quiet=True):
    return None
  steps = complete_steps(directory, kind=KIND_PARAMS)
  if not steps:
    return None
  step_dir = os.path.join(directory, str(steps[-1]))
  reason = incomplete_reason(step_dir, checksums=True)
  if reason is not None:
    raise CheckpointError(f"params-only checkpoint {step_dir} is damaged: {reason}")
  params = _restore_params_item(step_dir, lambda sub: _restore_target(sub, abstract_params))
  report(f"checkpoint: starting from the params of {step_dir} with a fresh optimizer state")
  return params
