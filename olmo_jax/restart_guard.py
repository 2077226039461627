"""Guards of a restart on a workdir: resume only into the same run, never over damage.

`check_same_run` compares the new resolved config with the one saved in the newest complete
checkpoint, before anything is written. Changes that alter the model or the data stream are
refused with a field-by-field diff (ConfigChangeError, exit 2): every model field but the
implementation choices in FREE, every data field but the prefetch depth, and train.seed,
train.batch_size, train.seq_len. Everything else (steps, logging and checkpoint cadence, eval,
mesh, optimizer settings) is allowed and logged. `derived` follows from the rest and is not
compared; a field the checkpoint's config lacks (written by an older version) is logged.
checkpoint.allow_config_change=true turns the refusal into log lines, except for a change of
the parameter shapes (model.n_layers, d_model, ...): no checkpoint of the run can be restored
into those, so that is refused whatever the flag, naming the parameters (the checkpoints are
intact, not damaged).

`check_not_all_damaged` refuses to start at step 0 in a workdir whose checkpoints are all
damaged (DamagedCheckpointsError, exit 2) unless checkpoint.start_fresh_if_damaged=true; the
trainer then moves them aside (checkpoint.set_aside), never deletes them. Saves cut short by
kill -9 (no manifest yet) are not damage: they are moved aside and the run starts afresh.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import ml_collections

from olmo_jax import checkpoint
from olmo_jax import config as config_lib
from olmo_jax import params as params_lib
from olmo_jax.config_files import flatten

REFUSED = ("model.", "data.", "train.seed", "train.batch_size", "train.seq_len")
FREE = ("model.remat", "model.attention", "data.prefetch")  # same numbers, other speed/memory
NOT_COMPARED = ("derived.",)
MISSING = object()


class ConfigChangeError(ValueError):
  """A resume would change the model or the data stream of the run in the workdir."""


class DamagedCheckpointsError(ValueError):
  """Every checkpoint in the workdir is damaged; starting at step 0 was not asked for."""


def is_refused(key: str) -> bool:
  """Whether changing config field `key` on resume alters the model or the data stream."""
  if key in FREE:
    return False
  return any(key == r or (r.endswith(".") and key.startswith(r)) for r in REFUSED)


def config_changes(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """(field, saved value, new value) of every compared field that differs; MISSING if absent."""
  a, b = flatten(saved), flatten(new)
  keys = sorted(set(a) | set(b))
  return [(k, a.get(k, MISSING), b.get(k, MISSING)) for k in keys
          if not k.startswith(NOT_COMPARED) and a.get(k, MISSING) != b.get(k, MISSING)]


def shape_changes(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """(parameter, saved shape, new shape) of every parameter whose shape differs between the
  model of the saved config and that of the new one ([] when either cannot be read)."""
  try:
    a, b = (config_lib.model_config(ml_collections.ConfigDict(c)) for c in (saved, new))
    sa, sb = (flatten(params_lib.shapes(m.variant, params_lib.Dims.of(m))) for m in (a, b))
  except (ValueError, KeyError, TypeError, AttributeError):
    return []
  return [(k, sa.get(k, MISSING), sb.get(k, MISSING)) for k in sorted(set(sa) | set(sb))
          if sa.get(k, MISSING) != sb.get(k, MISSING)]


def _show(v) -> str:
  return "(absent)" if v is MISSING else repr(v)


def check_same_run(ckpt_dir: str, step: int, new: dict, *, allow: bool,
                   say: Callable[[str], None]) -> None:
  """Raises ConfigChangeError unless `new` continues the run saved at `step` (see module)."""
  step_dir = os.path.join(ckpt_dir, str(step))
  try:
    saved = checkpoint.read_metadata(step_dir).get("config")
  except (checkpoint.CheckpointError, OSError, ValueError) as e:
    checkpoint.report(f"resume: cannot read the config saved in {step_dir} ({e}); not compared")
    return
  if not saved:
    return
  changes = config_changes(saved, new)
  reshaped = shape_changes(saved, new)
  if reshaped:
    fields = ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, a, b in changes
                       if k.startswith("model.") and is_refused(k))
    k, a, b = reshaped[0]
    more = f" and {len(reshaped) - 1} more" if len(reshaped) > 1 else ""
    raise ConfigChangeError(
        f"refusing to resume {step_dir}: the new config ({fields}) changes the parameter "
        f"shapes ({k}: {_show(a)} -> {_show(b)}{more}), so no checkpoint of this run can be "
        "restored into it (they are intact); use a new --workdir for the new model, or drop "
        "these overrides to resume this one")
  refused = [c for c in changes if is_refused(c[0])
             and c[1] is not MISSING and c[2] is not MISSING]
  if refused and not allow:
    width = max(len(k) for k, _, _ in refused)
    rows = "\n".join(f"  {k:<{width}}  checkpoint {_show(a)}  ->  now {_show(b)}"
                     for k, a, b in refused)
    raise ConfigChangeError(
        f"refusing to resume {step_dir}: the new config changes the model or the data stream "
        f"of the run saved there:\n{rows}\nUse a new workdir, drop these overrides, or pass "
        "--config.checkpoint.allow_config_change=true to resume with them anyway.")
  for k, a, b in changes:
    if a is MISSING:
      why = "not in the checkpoint's config"
    elif b is MISSING:
      why = "no longer in the config"
    else:
      why = ("allowed by checkpoint.allow_config_change" if is_refused(k) else "allowed")
    say(f"resume: {k}: {_show(a)} -> {_show(b)} ({why})")


def check_not_all_damaged(ckpt_dir: str, allow: bool) -> None:
  """With no complete train-state checkpoint: refuses to start over damaged ones unless allowed."""
  damaged = {s: r for s, r in checkpoint.damaged_steps(ckpt_dir).items()
             if not checkpoint.interrupted_save(os.path.join(ckpt_dir, str(s)))}
  if damaged and not allow:
    why = "; ".join(f"step {s}: {r}" for s, r in sorted(damaged.items()))
    refuse_fresh_start(ckpt_dir, why, allow)


def refuse_fresh_start(ckpt_dir: str, why: str, allow: bool) -> None:
  """Raises DamagedCheckpointsError unless `allow` (checkpoint.start_fresh_if_damaged)."""
  if allow:
    return
  raise DamagedCheckpointsError(
      f"every checkpoint in {ckpt_dir} is damaged ({why.strip()}); refusing to start again at "
      "step 0 over them. Repair or restore them, or pass "
      "--config.checkpoint.start_fresh_if_damaged=true to move them aside to "
      f"{os.path.join(ckpt_dir, checkpoint.DAMAGED)}/ and start fresh.")
