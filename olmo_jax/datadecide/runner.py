"""Running a study: `run_study` prepares the workdir, hands the cells not done to an executor,
scores every checkpoint as its cell completes, and rebuilds the results table.

An executor trains a list of cells. It is any object with

    run(study, cells, on_done) -> list[Cell]   # the cells that failed

that trains each cell with `study.train_command(cell)` (or an equivalent run of the trainer in
`study.cell_dir(cell)`), calls `cells.mark_done(study, cell, returncode, seconds)` when a
trainer exits, and `on_done(cell, seconds)` for each cell it marked done (the study scores it
there). `LocalExecutor` runs the trainers as subprocesses on this machine, `NoTraining` trains
nothing (`--collect`); other executors (several cells packed into one process) plug in beside
them. A SLURM array task (slurm.py) runs `train_and_score` over its own cells with a
LocalExecutor, and the collect job runs `run_study` with NoTraining.

Guarantees of a run, kept by files in the workdir (cells.py):
- a cell is complete once its trainer exited 0 with a checkpoint at its final step, or once
  a complete checkpoint at its final step is found however it was trained
  (cells.recognise_done); then `DONE.json` is written and the cell is never trained again;
- an interrupted cell is started again with the same command, and the trainer resumes from
  its newest complete checkpoint (a LocalExecutor's trainers get SIGTERM if the study process
  dies, so a killed study leaves no orphan trainer behind);
- every kept checkpoint on the study's grid (multiples of the checkpoint interval, plus the
  final step) is scored once, and its scores are read from `eval/<step>/scores.json` after;
- adding a recipe, size or seed to the config adds cells; nothing done is redone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable, Protocol

from data_pipeline import atomic, data_plan, materialize
from olmo_jax.datadecide import cells as cells_lib
from olmo_jax.datadecide import results, synthetic
from olmo_jax.datadecide.study import REPO, Cell, Study


class Executor(Protocol):
  def run(self, study: Study, cells: list[Cell],
          on_done: Callable[[Cell, float], None]) -> list[Cell]:
    """Trains `cells`; calls on_done(cell, seconds) for each completed one; returns the
    failed ones."""


def prepare(study: Study) -> None:
  """The workdir's study files (recipes.json, study.json), the synthetic data, if any, and
  the corpora each recipe reads (data_pipeline.materialize); InputError for a recipe that does
  not load (before anything trains)."""
  study.write_recipes()
  atomic.write_json(os.path.join(study.workdir, "study.json"), study.c.to_dict(), default=str)
  if study.c.synthetic_noise_levels:
    synthetic.build(study.c.data_dir, tuple(study.c.synthetic_noise_levels),
                    vocab=int(study.c.synthetic_vocab))
  for recipe in study.c.recipes:  # once here, not raced by the cells that train in parallel
    cell = Cell(recipe, study.trained_sizes()[0], int(study.c.seeds[0]))
    try:
      plan = data_plan.resolve(study.resolved_cell(cell).data)
    except (ValueError, FileNotFoundError) as e:
      raise results.InputError(f"recipe {recipe!r}: {e}") from None
    materialize.materialize(plan)


def train_and_score(study: Study, cells: list[Cell], executor: Executor, scorer: Callable,
                    print_fn=print) -> tuple[list[Cell], int]:
  """Scores `cells` already done (e.g. trained before a crash, or elsewhere), trains the rest
  with `executor`, scoring each as it completes; returns (failed cells, checkpoints scored)."""
  cells_lib.recognise_done(study, cells)
  pending = [c for c in cells if not study.is_done(c)]
  scored = 0
  for c in cells:
    if study.is_done(c):
      scored += cells_lib.score_cell(study, c, scorer, print_fn)

  def on_done(cell: Cell, seconds: float) -> None:
    nonlocal scored
    scored += cells_lib.score_cell(study, cell, scorer, print_fn)

  failed = executor.run(study, pending, on_done)
  # An executor that scores on its own (packing.py) counts its checkpoints itself.
  return failed, scored + getattr(executor, "scored", 0)


def run_study(study: Study, *, workers: int = 1, scorer: Callable | None = None,
              print_fn=print, poll_s: float = 0.5, executor: Executor | None = None) -> dict:
  """Trains every cell not done, scores every checkpoint not scored; returns a summary
  {"failed": cells, "table": results, "scored": checkpoints scored, "paths": table files}.
  executor: default LocalExecutor(workers, poll_s, print_fn)."""
  prepare(study)
  scorer = scorer or cells_lib.make_scorer(study)
  executor = executor or LocalExecutor(workers=workers, poll_s=poll_s, print_fn=print_fn)
  failed, scored = train_and_score(study, study.cells(), executor, scorer, print_fn)
  table = cells_lib.collect_results(study)
  paths = results.write_table(table, os.path.join(study.workdir, "results")) if len(table) \
      else ()
  print_fn(f"[study] {scored} checkpoint(s) scored this run; results: "
           f"{', '.join(paths) or 'none yet'}")
  return {"failed": failed, "table": table, "scored": scored, "paths": paths}


class NoTraining:
  """Trains nothing: the cells not done come back as failed. `--collect` runs the study with
  it, to score and report what other machines trained (the SLURM collect job)."""

  def __init__(self, print_fn=print):
    self.print = print_fn

  def run(self, study: Study, cells: list[Cell],
          on_done: Callable[[Cell, float], None]) -> list[Cell]:
    if cells:
      names = ", ".join(c.name for c in cells[:10]) + (", ..." if len(cells) > 10 else "")
      self.print(f"[study] {len(cells)} of {len(study.cells())} cells not done (not trained "
                 f"here, --collect): {names}")
    return list(cells)


class LocalExecutor:
  """Trains cells as subprocesses of this process, `workers` at a time, smallest first, with
  a progress line (cells, running steps, FLOPs done, ETA) whenever something changes."""

  def __init__(self, workers: int = 1, poll_s: float = 0.5, print_fn=print,
               scope: list[Cell] | None = None):
    """scope: the cells the progress line counts (default: the whole study; an array task
    gives its own)."""
    self.workers, self.poll_s, self.print = workers, poll_s, print_fn
    self.scope = scope

  def run(self, study: Study, cells: list[Cell],
          on_done: Callable[[Cell, float], None]) -> list[Cell]:
    pending = list(cells)
    prog = Progress(study, self.scope or study.cells(), self.workers)
    self.print(f"[study] {prog.n_cells} cells: {prog.n_cells - len(pending)} already done, "
               f"{len(pending)} to train ({self.workers} worker(s)); {prog.total:.3g} FLOPs "
               f"to train; workdir {study.workdir}")

    def finish(cell: Cell, rc: int, seconds: float) -> list[Cell]:
      if cells_lib.mark_done(study, cell, rc, seconds):
        on_done(cell, seconds)
        prog.finished(cell, seconds)
        return []
      self.print(f"[study] cell {cell.name} failed (exit {rc}); last lines of "
                 f"{study.cell_dir(cell)}/train.log:\n{cells_lib.log_tail(study, cell)}")
      return [cell]

    return run_processes(pending, self.workers, lambda cell: _start(study, cell), finish,
                         prog.line, self.print, self.poll_s)


def run_processes(jobs: list, workers: int, start: Callable, finish: Callable,
                  line: Callable, print_fn=print, poll_s: float = 0.5) -> list[Cell]:
  """Runs `jobs` (hashable) as subprocesses, `workers` at a time, in order: start(job) ->
  (process, start time, log file); finish(job, returncode, seconds) -> its failed cells;
  prints line(running jobs, n pending, n failed) whenever it changes (elapsed time aside).
  Returns the failed cells."""
  pending, running, failed, last = list(jobs), {}, [], ""
  while pending or running:
    while pending and len(running) < workers:
      job = pending.pop(0)
      running[job] = start(job)
    for job, (proc, t0, log) in list(running.items()):
      if proc.poll() is None:
        continue
      log.close()
      del running[job]
      failed += finish(job, proc.returncode, time.time() - t0)
    text = line(running, len(pending), len(failed))
    if text.split("; elapsed")[0] != last.split("; elapsed")[0]:
      print_fn(text)
      last = text
    if running:
      time.sleep(poll_s)
  return failed


def _start(study: Study, cell: Cell) -> tuple:
  """(process, start time, log file) of the cell's trainer, started through child.py so that
  it ends when this process does."""
  d = study.cell_dir(cell)
  os.makedirs(d, exist_ok=True)
  log = open(os.path.join(d, "train.log"), "a")
  cmd = [sys.executable, "-m", "olmo_jax.datadecide.child", str(os.getpid()),
         *study.train_command(cell)]
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
  return proc, time.time(), log


def hms(seconds: float) -> str:
  s = int(round(seconds))
  return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else \
      f"{s // 60}m{s % 60:02d}s"


class Progress:
  """The progress line: cells, the running cells' steps, FLOPs done, ETA by compute.

  The ETA models a cell's wall time as a + b * FLOPs: b, seconds per training FLOP, from the
  tokens/s the finished cells' trainers logged to metrics.jsonl; a, the rest of their wall
  time (start-up, compilation, checkpoints, scoring) per cell. It sums that over the cells and
  FLOPs left, so a large cell counts for more than a small one. A trainer that logs no
  tokens/s counts all its time as b.
  """

  def __init__(self, study: Study, cells: list[Cell], workers: int):
    self.study, self.workers, self.t0 = study, workers, time.time()
    self.todo = [c for c in cells if not study.is_done(c)]
    self.total = sum(study.compute(c.size) for c in self.todo)
    self.n_cells = len(cells)
    self.done: list[tuple[float, float, float]] = []  # (FLOPs, wall s, training s) per cell
    self.steps: dict[str, int] = {}  # newest step seen in each running cell's metrics

  def finished(self, cell: Cell, seconds: float) -> None:
    st = self.study
    rate = cells_lib.tokens_per_s(st, cell)
    tokens = st.steps(cell.size) * st.tokens_per_step(cell.size)
    train_s = min(seconds, tokens / rate) if rate else seconds
    self.done.append((st.compute(cell.size), seconds, train_s))

  def _model(self) -> tuple[float, float] | None:
    if not self.done:
      return None
    flops = sum(f for f, _, _ in self.done)
    b = sum(t for _, _, t in self.done) / flops
    a = sum(w - t for _, w, t in self.done) / len(self.done)
    return a, b

  def line(self, running, n_left: int, n_failed: int) -> str:
    st = self.study
    done_flops, parts = sum(f for f, _, _ in self.done), []
    for cell in running:
      step = cells_lib.latest_step(st, cell)
      step = self.steps[cell.name] = step if step is not None else self.steps.get(cell.name)
      n = st.steps(cell.size)
      parts.append(f"{cell.name} step {step}/{n}" if step is not None else
                   f"{cell.name} starting")
      done_flops += st.compute(cell.size) * (step or 0) / n
    n_done = sum(st.is_done(c) for c in self.todo) + self.n_cells - len(self.todo)
    line = (f"[study] cells: {n_done} done, {len(running)} running, {n_left} left, "
            f"{n_failed} failed")
    if parts:
      line += "; training " + ", ".join(parts)
    pct = 100.0 * done_flops / self.total if self.total else 100.0
    line += f"; {pct:.0f}% of {self.total:.3g} FLOPs; elapsed {hms(time.time() - self.t0)}"
    model = self._model()
    if model is None:
      return line + "; ETA after the first cell"
    a, b = model
    left_cells = n_left + len(running)
    eta = (a * left_cells + b * max(self.total - done_flops, 0.0)) / self.workers
    return line + f"; ETA {hms(eta)} (by FLOPs)"
