"""`python -m olmo_jax.datadecide status --config STUDY.py --workdir W`: where each cell of a
study stands, read from its files (cells.py) and, for a grid submitted with `--executor slurm`,
from squeue: done, trained with checkpoints left to score, training (newest logged step),
not started; the array task a cell is queued or running in; the results and report files."""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

from olmo_jax.datadecide import cells as cells_lib
from olmo_jax.datadecide import slurm
from olmo_jax.datadecide.results import InputError
from olmo_jax.datadecide.study import Cell, Study, load_study_config


def cell_state(study: Study, cell: Cell) -> str:
  """'done', 'trained, K to score', 'step S/N' or 'not started'."""
  if slurm.trained(study, cell):
    left = len(cells_lib.unscored_steps(study, cell))
    return f"trained, {left} checkpoint(s) to score" if left else "done"
  step = cells_lib.latest_step(study, cell)
  return f"step {step}/{study.steps(cell.size)}" if step is not None else "not started"


def lines(study: Study, limit: int = 50) -> list[str]:
  """The status report: a summary line, one line per cell not done (at most `limit`), files."""
  queued = slurm.queued(study)
  states = {c: cell_state(study, c) for c in study.cells()}
  kinds = collections.Counter(s.split(",")[0].split(" ")[0] for s in states.values())
  names = {"done": "done", "trained": "trained (to score)", "step": "training or stopped",
           "not": "not started"}
  out = [f"study {study.c.name!r}: {len(states)} cells: "
         + ", ".join(f"{kinds[k]} {v}" for k, v in names.items() if kinds[k])
         + (f"; {len(queued)} in SLURM array tasks" if queued else "")]
  open_cells = [(c, s) for c, s in states.items() if s != "done"]
  for cell, state in open_cells[:limit]:
    job = f"  [{queued[cell.name]}]" if cell.name in queued else ""
    out.append(f"  {cell.name:<32} {state}{job}")
  if len(open_cells) > limit:
    out.append(f"  ... {len(open_cells) - limit} more")
  for name in ("results.parquet", os.path.join("report", "report.md")):
    path = os.path.join(study.workdir, name)
    when = (time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(path)))
            if os.path.isfile(path) else None)
    out.append(f"{path}: " + (f"written {when}" if when else "not written yet"))
  return out


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="python -m olmo_jax.datadecide status",
                              description="Where each cell of a study stands.")
  p.add_argument("--config", required=True, help="the study config file")
  p.add_argument("--workdir", required=True)
  p.add_argument("--limit", type=int, default=50, help="cells listed (the summary counts all)")
  a = p.parse_args(argv)
  try:
    study = Study(load_study_config(a.config), a.workdir)
    if not os.path.isdir(study.workdir):
      raise InputError(f"--workdir {a.workdir}: no such directory; start the study first")
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print("\n".join(lines(study, a.limit)))
  return 0
