"""A cell's files, as every executor leaves them and the study reads them.

In `study.cell_dir(cell)`:
- `checkpoints/<step>/`: the trainer's checkpoints (olmo_jax/checkpoint.py);
- `metrics.jsonl`: the trainer's log lines as JSON (`step`, `tokens_per_s`, ...): the
  study's progress and speed come from here, never from the text of `train.log`;
- `DONE.json`: written (atomically) once the trainer exited 0 with a checkpoint at the final
  step; a done cell is never trained again;
- `eval/<step>/scores.json`: the scores of one grid checkpoint, written atomically, read
  ever after instead of scoring again.
The results table is rebuilt from the scores files.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from typing import Callable

from data_pipeline import atomic
from olmo_jax import checkpoint
from olmo_jax.datadecide import results, scorers
from olmo_jax.datadecide.results import InputError
from olmo_jax.datadecide.study import DONE, Cell, Study

METRICS = "metrics.jsonl"
TAIL_BYTES = 65536  # how much of a running cell's metrics.jsonl a progress poll reads


def complete_checkpoints(cell_dir: str) -> list[int]:
  """Steps of the complete checkpoints of a cell (olmo_jax.checkpoint's definition)."""
  return checkpoint.complete_steps(os.path.join(cell_dir, "checkpoints"), quiet=True)


def mark_done(study: Study, cell: Cell, returncode: int, seconds: float) -> bool:
  """Writes the cell's DONE.json when its trainer exited 0 with a checkpoint at the final
  step; returns whether it did (an executor calls this when a trainer exits)."""
  d = study.cell_dir(cell)
  final = study.steps(cell.size)
  if returncode != 0 or final not in complete_checkpoints(d):
    return False
  atomic.write_json(os.path.join(d, DONE), {"steps": final, "seconds": seconds})
  return True


def recognise_done(study: Study, cells: list[Cell]) -> list[Cell]:
  """Marks done every cell among `cells` with a complete checkpoint at its final step but no
  DONE.json (trained by any other means: a job array, `plan.txt` run by hand, a killed study
  whose trainer finished); returns those cells."""
  found = []
  for cell in cells:
    d = study.cell_dir(cell)
    final = study.steps(cell.size)
    if os.path.isdir(d) and not study.is_done(cell) and final in complete_checkpoints(d):
      atomic.write_json(os.path.join(d, DONE), {"steps": final, "seconds": None,
                                                "recognised": "final checkpoint"})
      found.append(cell)
  return found


def unscored_steps(study: Study, cell: Cell) -> list[int]:
  """The cell's complete checkpoints on the study's grid that have no scores.json yet."""
  d = study.cell_dir(cell)
  grid = set(study.grid_steps(cell.size))
  return [s for s in complete_checkpoints(d) if s in grid  # not e.g. a preemption save
          and not os.path.isfile(os.path.join(d, "eval", str(s), "scores.json"))]


def _records(path: str, tail_bytes: int | None = None) -> list[dict]:
  """The JSON objects of a metrics.jsonl (its last `tail_bytes` only, when given); a
  partial or foreign line is skipped."""
  try:
    with open(path, "rb") as f:
      if tail_bytes is not None:
        f.seek(max(0, os.path.getsize(path) - tail_bytes))
      text = f.read().decode(errors="replace")
  except OSError:
    return []
  out = []
  for line in text.splitlines():
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(rec, dict) and isinstance(rec.get("step"), int):
      out.append(rec)
  return out


def latest_step(study: Study, cell: Cell) -> int | None:
  """The newest step the cell's trainer logged to metrics.jsonl (None before its first)."""
  recs = _records(os.path.join(study.cell_dir(cell), METRICS), TAIL_BYTES)
  return max(r["step"] for r in recs) if recs else None


def tokens_per_s(study: Study, cell: Cell) -> float | None:
  """Mean of the `tokens_per_s` values the cell's trainer logged (None when none)."""
  vals = [float(r["tokens_per_s"]) for r in _records(os.path.join(study.cell_dir(cell), METRICS))
          if isinstance(r.get("tokens_per_s"), (int, float))]
  return sum(vals) / len(vals) if vals else None


def log_tail(study: Study, cell: Cell, n: int = 15) -> str:
  """The last `n` lines of the cell's train.log (for a failure message)."""
  try:
    with open(os.path.join(study.cell_dir(cell), "train.log"), errors="replace") as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return "(no log)"


def make_scorer(study: Study):
  """The study's scorer (see scorers.py): eval.run when present, else held-out loss."""
  e = study.c.eval
  kind = e.scorer
  if kind == "auto":
    has_eval = importlib.util.find_spec("eval") and importlib.util.find_spec("eval.run")
    kind = "eval_run" if has_eval and not e.heldout else "heldout"
  if kind == "eval_run":
    return scorers.EvalRunScorer(e.tasks, e.limit or None,
                                 compile_cache=os.path.join(study.workdir, "compile_cache"))
  if kind == "heldout":
    if not e.heldout:
      raise InputError("eval.scorer=heldout needs eval.heldout (a glob of held-out token files "
                       "under data_dir)")
    return scorers.HeldoutScorer(os.path.join(study.c.data_dir, e.heldout), int(study.c.seq_len),
                                 windows=int(e.heldout_windows),
                                 dtype=study.resolved(study.c.target).data.token_dtype)
  module, _, fn = kind.partition(":")
  try:
    return getattr(importlib.import_module(module), fn or "make_scorer")(study)
  except (ImportError, AttributeError) as err:
    raise InputError(f"eval.scorer={kind!r}: cannot load it ({err}); use auto, eval_run, "
                     f"heldout or module:factory") from None


def score_cell(study: Study, cell: Cell, scorer: Callable, print_fn=None) -> int:
  """Scores every not-yet-scored grid checkpoint of a cell; returns how many were scored."""
  d = study.cell_dir(cell)
  todo = unscored_steps(study, cell)
  for i, step in enumerate(todo):
    out = os.path.join(d, "eval", str(step))
    os.makedirs(out, exist_ok=True)
    if print_fn:
      print_fn(f"[study] scoring {cell.name} step {step} ({i + 1}/{len(todo)})")
    ckpt = os.path.join(d, "checkpoints", str(step))
    write_scores(out, scorer(cell, step, ckpt, out), step, ckpt, cell)
  return len(todo)


def write_scores(out_dir: str, scores: dict, step: int, ckpt: str, cell: Cell) -> None:
  """`<out_dir>/scores.json` of one scored checkpoint, written atomically."""
  atomic.write_json(os.path.join(out_dir, "scores.json"),
                    {"tasks": scores, "step": step, "checkpoint": ckpt, "cell": cell.name},
                    indent=None)


def collect_results(study: Study):
  """The results table of every scored checkpoint of every cell (pandas DataFrame)."""
  import pandas as pd  # heavy: only the results need it

  rows = []
  for cell in study.cells():
    eval_dir = os.path.join(study.cell_dir(cell), "eval")
    if not os.path.isdir(eval_dir):
      continue
    for name in sorted(os.listdir(eval_dir), key=lambda s: (len(s), s)):
      path = os.path.join(eval_dir, name, "scores.json")
      if not name.isdigit() or not os.path.isfile(path):
        continue
      with open(path) as f:
        scores = json.load(f)["tasks"]
      step = int(name)
      rows += results.make_rows(cell.recipe, cell.size, cell.seed, step,
                                step * study.tokens_per_step(cell.size),
                                study.n_params(cell.size), scores,
                                planned_step=study.steps(cell.size))
  columns = list(results.COLUMNS) + list(results.OPTIONAL_COLUMNS)
  return results.validate_table(pd.DataFrame(rows, columns=columns))
