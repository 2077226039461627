"""Packed study runs: the cells of one size trained as one program, scored together.

Within a size, a study's cells share every training setting but their recipe's data and
their seed (study.cell_flags: the recipe sets `data.*` only), so they form packs for
`python -m olmo_jax.train_pack` (olmo_jax/pack.py): one process, one compiled step, the
replicas on a leading axis. `PackingExecutor` is a runner.Executor: it trains `workers` packs
at a time (at most `pack_size` cells each, each size in at least `workers` packs), writes
each pack's replica list to `<workdir>/packs/<size>-<i>.txt` and its output to `.log` beside
it, marks each cell done
(cells.mark_done) when its final checkpoint is complete, and scores the pack's checkpoints
together, step by step (a scorer's `score_pack`, else one cell at a time). Every cell's own
directory is what a cell trained alone leaves, so `--no-pack` (runner.LocalExecutor) and a
packed run can take over each other's cells.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from typing import Callable

from data_pipeline import atomic
from olmo_jax.datadecide import cells as cells_lib
from olmo_jax.datadecide.runner import hms, run_processes
from olmo_jax.datadecide.study import REPO, Cell, Study

DEFAULT_PACK_SIZE = 16  # replicas per pack: a memory limit (the models are small)


def make_packs(study: Study, cells: list[Cell], pack_size: int = DEFAULT_PACK_SIZE,
               workers: int = 1) -> list[tuple[str, list[Cell]]]:
  """[(name, cells)] of the packs: the cells of each size, smallest size first, in chunks of
  at most pack_size (as equal as possible), and in at least `workers` packs per size (where
  it has the cells), so that no size trains on fewer processes than there are workers."""
  out = []
  for size in study.trained_sizes():
    mine = [c for c in cells if c.size == size]
    if not mine:
      continue
    n = max(-(-len(mine) // pack_size), min(workers, len(mine)))
    per = -(-len(mine) // n)
    for i in range(n):
      out.append((f"{size}-{i}", mine[i * per:(i + 1) * per]))
  return out


def pack_command(study: Study, name: str, cells: list[Cell]) -> list[str]:
  """The pack's trainer command; writes its replica list, one cell's train flags a line."""
  d = os.path.join(study.workdir, "packs")
  os.makedirs(d, exist_ok=True)
  path = os.path.join(d, f"{name}.txt")
  atomic.write_atomic(path, "".join(shlex.join(study.train_command(c)[3:]) + "\n" for c in cells))
  return [sys.executable, "-m", "olmo_jax.train_pack", "--replicas_from", path]


def score_pack(study: Study, cells: list[Cell], scorer: Callable, print_fn=None) -> int:
  """Scores the grid checkpoints of a pack's cells not yet scored, every cell of a step in one
  call of scorer.score_pack when it has one; returns how many checkpoints were scored."""
  todo: dict[int, list[Cell]] = {}
  for cell in cells:
    for step in cells_lib.unscored_steps(study, cell):
      todo.setdefault(step, []).append(cell)
  for step, group in sorted(todo.items()):
    if print_fn:
      print_fn(f"[study] scoring step {step} of {len(group)} cell(s) of size {group[0].size}")
    ckpts = [os.path.join(study.cell_dir(c), "checkpoints", str(step)) for c in group]
    outs = [os.path.join(study.cell_dir(c), "eval", str(step)) for c in group]
    for out in outs:
      os.makedirs(out, exist_ok=True)
    if hasattr(scorer, "score_pack"):
      scores = scorer.score_pack(group, step, ckpts, outs)
    else:
      scores = [scorer(c, step, k, o) for c, k, o in zip(group, ckpts, outs)]
    for cell, ckpt, out, s in zip(group, ckpts, outs, scores):
      cells_lib.write_scores(out, s, step, ckpt, cell)
  return sum(len(g) for g in todo.values())


class PackingExecutor:
  """Trains a study's cells in packs (module docstring), `workers` packs at a time."""

  def __init__(self, scorer: Callable, workers: int = 1, pack_size: int = DEFAULT_PACK_SIZE,
               poll_s: float = 0.5, print_fn=print, name_prefix: str = ""):
    self.scorer, self.workers, self.pack_size = scorer, workers, pack_size
    self.name_prefix = name_prefix  # keeps concurrent executors' pack files apart (slurm.py)
    self.poll_s, self.print = poll_s, print_fn
    self.scored = 0  # checkpoints scored here (on_done then finds them scored)

  def run(self, study: Study, cells: list[Cell],
          on_done: Callable[[Cell, float], None]) -> list[Cell]:
    pending = [(self.name_prefix + name, members)
               for name, members in make_packs(study, cells, self.pack_size, self.workers)]
    prog = PackProgress(study, pending, self.workers)
    self.print(f"[study] {len(study.cells())} cells: {len(study.cells()) - len(cells)} already "
               f"done, {len(cells)} to train in {len(pending)} pack(s) of at most "
               f"{self.pack_size} ({self.workers} at a time); {prog.total:.3g} FLOPs to train; "
               f"workdir {study.workdir}")
    members_of = dict(pending)

    def finish(name: str, rc: int, seconds: float) -> list[Cell]:
      failed = self._finish(study, name, members_of[name], rc, seconds, on_done)
      prog.finished(members_of[name])
      return failed

    return run_processes([name for name, _ in pending], self.workers,
                         lambda name: self._start(study, name, members_of[name]), finish,
                         prog.line, self.print, self.poll_s)

  def _start(self, study: Study, name: str, members: list[Cell]) -> tuple:
    """(process, start time, log file) of a pack's trainer, ending when this process does."""
    cmd = pack_command(study, name, members)
    log = open(os.path.join(study.workdir, "packs", f"{name}.log"), "a")
    proc = subprocess.Popen([sys.executable, "-m", "olmo_jax.datadecide.child", str(os.getpid()),
                             *cmd], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return proc, time.time(), log

  def _finish(self, study: Study, name: str, members: list[Cell], rc: int, seconds: float,
              on_done) -> list[Cell]:
    """Marks the pack's finished cells done and scores them; returns the failed cells."""
    done = [c for c in members if cells_lib.mark_done(study, c, 0, seconds)]
    self.scored += score_pack(study, done, self.scorer, self.print)
    for cell in done:
      on_done(cell, seconds)
    failed = [c for c in members if c not in done]
    if failed:
      log = os.path.join(study.workdir, "packs", f"{name}.log")
      self.print(f"[study] pack {name} (exit {rc}): cell(s) {', '.join(c.name for c in failed)} "
                 f"failed; last lines of {log}:\n{_tail(log)}")
    return failed


def _tail(path: str, n: int = 15) -> str:
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return "(no log)"


class PackProgress:
  """The progress line of a packed run: packs and the replicas inside them, the running packs'
  steps, FLOPs done, and an ETA from the FLOPs per second of the packs finished so far."""

  def __init__(self, study: Study, packs: list[tuple[str, list[Cell]]], workers: int):
    self.study, self.workers, self.t0 = study, workers, time.time()
    self.n_packs, self.members = len(packs), dict(packs)
    self.total = sum(study.compute(c.size) for _, cs in packs for c in cs)
    self.done_packs, self.done_flops = 0, 0.0

  def finished(self, members: list[Cell]) -> None:
    self.done_packs += 1
    self.done_flops += sum(self.study.compute(c.size) for c in members)

  def line(self, running: dict, n_left: int, n_failed: int) -> str:
    st, flops, parts = self.study, self.done_flops, []
    for name in running:
      members = self.members[name]
      steps = [cells_lib.latest_step(st, c) or 0 for c in members]
      n = st.steps(members[0].size)
      parts.append(f"{name} ({len(members)} replicas) step {min(steps)}/{n}")
      flops += sum(st.compute(c.size) * s / n for c, s in zip(members, steps))
    line = (f"[study] packs: {self.done_packs} done, {len(running)} running, {n_left} left; "
            f"{n_failed} cell(s) failed")
    if parts:
      line += "; training " + ", ".join(parts)
    pct = 100.0 * flops / self.total if self.total else 100.0
    elapsed = time.time() - self.t0
    line += f"; {pct:.0f}% of {self.total:.3g} FLOPs; elapsed {hms(elapsed)}"
    if not self.done_packs:
      return line + "; ETA after the first pack"
    return line + f"; ETA {hms(elapsed * max(self.total - flops, 0.0) / flops)} (by FLOPs)"
