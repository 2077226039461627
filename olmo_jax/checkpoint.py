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

Saving, resuming and retention of train states are the manager's
(olmo_jax/checkpoint_manager.py: `Checkpointer`, async saves, Orbax preservation policies);
this module holds the layout, the completeness checks, the fallbacks and params-only I/O that
the manager, the guards, evaluation and conversion share.

Params-only checkpoints (`write_params_checkpoint`, used by scripts/convert_from_hf.py) are a
step-0 directory with items params/ and meta/ (kind "params"). `Checkpointer.latest_step`
ignores them (there is no train state to resume); the trainer starts from one with
`load_init_params(workdir_or_checkpoint_dir, abstract_params=None)`, which returns the params
(numpy, or placed on the given shardings) or None when there is nothing to start from, and
builds a fresh optimizer state at step 0. `restore_params` reads params from either kind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from olmo_jax import paths

COMMIT_MARKER = "commit_success.txt"
MANIFEST = "olmo_manifest.json"
KIND_STATE = "train_state"
KIND_PARAMS = "params"
ITEMS = ("state", "params", "data", "meta")
DAMAGED = "damaged"  # where damaged steps are moved aside


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


def is_primary() -> bool:
  """Process 0: the one that writes markers and moves damaged steps."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """All processes meet here (multi-host), e.g. after process 0 moved or wrote files."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)



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
  steps = complete_steps(directory, quiet=not is_primary())
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
  if not is_primary():
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
  if is_primary():
    write_manifest(step_dir)
  sync("olmo_ckpt_params_written")
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
