"""A DataDecide study: the grid of proxy runs, their evaluation, the results table, the report.

Every cell (recipe, size, seed) is an ordinary training run in its own workdir,
`<workdir>/cells/<recipe>/<size>/seed<seed>/`, started as
`python -m olmo_jax.train --config configs/train.py:SIZE --workdir CELL --config.*=...`, so
it can run anywhere: `--plan` writes those commands, one line per cell, to `plan.txt`.

Guarantees of a local run (`run_study`), kept by files in the workdir:
- a cell is complete once its trainer exited 0 with a checkpoint at its final step; then
  `DONE.json` is written and the cell is never trained again;
- an interrupted cell is started again with the same command, and the trainer resumes from
  its newest complete checkpoint (training processes get SIGTERM if the study process dies,
  so a killed study leaves no orphan trainer behind);
- every kept checkpoint on the study's grid (multiples of the checkpoint interval, plus the
  final step) is scored once: the scores go to `eval/<step>/scores.json` (written atomically)
  and are read from there ever after;
- adding a recipe, size or seed to the config adds cells; nothing done is redone.
The results table (`results.parquet` / `.csv`) is rebuilt from those files at the end, and
the report is written to `<workdir>/report/`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import Callable

import ml_collections

from olmo_jax import paths, sizes
from olmo_jax.datadecide.results import InputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_TRAIN_CONFIG = os.path.join(REPO, "configs", "train.py")


def default_config() -> ml_collections.ConfigDict:
  """Every field of a study config, with its default."""
  c = ml_collections.ConfigDict()
  c.name = "study"
  # recipe name -> overrides of the training config's `data` subtree (mixture, sources, ...)
  c.recipes = ml_collections.ConfigDict()
  c.sizes = []  # ladder sizes ('4M' ... '1B') or names defined in custom_sizes
  c.custom_sizes = ml_collections.ConfigDict()  # name -> {d_model, n_heads, n_layers}
  c.seeds = [sizes.DEFAULT_SEED]
  c.target = ""  # the size the decision is for; trained only if it is also in `sizes`
  c.tokens_per_param = 100.0  # DataDecide: 100 tokens per parameter
  c.budget_fraction = 1.0  # < 1 for quick studies
  c.steps = ml_collections.ConfigDict()  # size -> explicit step count (overrides the budget)
  c.batch_size = -1  # sequences; -1: the ladder's batch for the size
  c.seq_len = sizes.SEQ_LEN
  c.warmup_fraction = 0.01  # of the steps, when the budget is scaled (DataDecide: ~1%)
  c.checkpoint_every = -1  # steps; -1: 1250 (2500 for 1B) as DataDecide saved
  c.checkpoints_per_run = 0  # > 0: every = ceil(steps / this), overriding checkpoint_every
  c.data_dir = "data"
  c.synthetic_noise_levels = []  # builds olmo_jax/datadecide/synthetic.py data first ...
  c.synthetic_vocab = 0  # ... with ids re-coded into this many (0: OLMo ids)
  c.overrides = ml_collections.ConfigDict()  # training-config fields for all cells (nested)
  c.train_config = DEFAULT_TRAIN_CONFIG
  c.train_module = "olmo_jax.train"
  c.eval = ml_collections.ConfigDict({
      "scorer": "auto",  # auto | eval_run | heldout | module:factory(study) -> scorer
      "tasks": "olmes",  # for eval_run
      "limit": 0,  # eval_run --limit (0: none)
      "heldout": "",  # held-out token files (glob, relative to data_dir) for `heldout`
      "heldout_windows": 32,
      "headline": "",  # TASK/METRIC of the recommendation ('': macro of primary metrics)
      # report: metrics at the target each proxy metric is scored against ('primary': the
      # task's OLMES primary metric, 'same': the proxy metric itself, or a metric name)
      "target_metrics": ["primary", "same"],
      "ties": "half",  # report: half | datadecide (analysis.pairwise_agreement)
  })
  return c


@dataclasses.dataclass(frozen=True)
class Cell:
  recipe: str
  size: str
  seed: int

  @property
  def name(self) -> str:
    return f"{self.recipe}/{self.size}/seed{self.seed}"


class Study:
  """A validated study config and everything derived from it (shapes, steps, commands)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    c = default_config()
    for k, v in config.items():
      if k not in c:
        raise InputError(f"study config: unknown field {k!r}; fields: {', '.join(c)}")
      if k == "eval":
        for kk, vv in v.items():
          if kk not in c.eval:
            raise InputError(f"study config: unknown field eval.{kk}; fields: "
                             f"{', '.join(c.eval)}")
          c.eval[kk] = vv
      else:
        c[k] = v
    c.data_dir = os.path.abspath(c.data_dir)  # cells may run from another directory
    self.c, self.workdir = c, os.path.abspath(workdir)
    if not c.recipes:
      raise InputError("study config: `recipes` is empty; name at least two recipes")
    if c.eval.ties not in ("half", "datadecide"):
      raise InputError(f"study config: eval.ties={c.eval.ties!r}; use 'half' or 'datadecide'")
    if not c.sizes:
      raise InputError("study config: `sizes` is empty; list the proxy sizes")
    for name in list(c.sizes) + ([c.target] if c.target else []):
      self.shape(name)  # unknown sizes fail here
    for r in c.recipes:
      if "/" in r or r.startswith("."):
        raise InputError(f"recipe name {r!r} may not contain '/' or start with '.'")
    if not c.seeds:
      raise InputError("study config: `seeds` is empty")
    if not 0 < c.budget_fraction <= 1:
      raise InputError(f"budget_fraction={c.budget_fraction} must be in (0, 1]")
    self._base, self._flags, self._resolved = {}, {}, {}
    for name in self.trained_sizes() + ([c.target] if c.target else []):
      self.resolved(name)  # a field the training config lacks fails here

  # ---- sizes and budgets: every number comes from the cell's resolved training config
  def shape(self, size: str) -> tuple[int, int, int]:
    """(d_model, n_heads, n_layers) of a ladder or custom size."""
    if size in self.c.custom_sizes:
      s = self.c.custom_sizes[size]
      return int(s.d_model), int(s.n_heads), int(s.n_layers)
    if size in sizes.LADDER:
      s = sizes.LADDER[size]
      return s.d_model, s.n_heads, s.n_layers
    raise InputError(f"unknown size {size!r}: use a ladder size ({', '.join(sizes.LADDER)}) "
                     f"or define it under custom_sizes")

  def embedding_size(self) -> int:
    v = int(self.c.synthetic_vocab)
    return -(-v // 128) * 128 if v else sizes.EMBEDDING_SIZE

  def config_arg(self, size: str) -> str:
    """The training config's argument for a size (custom shapes come as overrides)."""
    return size if size in sizes.LADDER else "4M"

  def full_budget(self, size: str) -> bool:
    """True when the cell trains the published ladder run (the resolver's own steps)."""
    lad = sizes.LADDER.get(size)
    return bool(lad and size not in self.c.steps and self.c.budget_fraction == 1
                and self.c.tokens_per_param == 100 and self.c.seq_len == sizes.SEQ_LEN
                and self.c.batch_size in (-1, lad.batch_seqs))

  def size_flags(self, size: str) -> dict:
    """{training-config field: value} of every cell of a size (no seed, no recipe), in order.

    Resolved in two passes through olmo_jax.config.resolve: the first gives N (model.variant
    honoured) and the batch, from which the budget's steps follow; the study's `overrides`
    come last, so a `train.steps` written there is what trains and what the study counts.
    """
    if size not in self._flags:
      c = self.c
      out = {}
      if size in c.custom_sizes:
        d, h, l = self.shape(size)
        out.update({"model.size": "custom", "model.d_model": d, "model.n_heads": h,
                    "model.n_layers": l})
      if c.synthetic_vocab:
        out.update({"model.vocab_size": int(c.synthetic_vocab),
                    "model.embedding_size": self.embedding_size()})
      if not self.full_budget(size):
        if c.batch_size > 0:
          out["train.batch_size"] = int(c.batch_size)
        out["train.seq_len"] = int(c.seq_len)
        # steps and warmup are placeholders here (the study sets both from the budget)
        first = self._resolve(size, {**out, "train.steps": 1, "train.warmup_steps": 0,
                                     **_flatten(c.overrides)})
        n, t = first.derived.non_embedding_params, first.train
        if t.batch_size <= 0:
          raise InputError(f"size {size}: the ladder batch formula gives {t.batch_size} "
                           f"sequences for N={n:,}; set the study's batch_size")
        steps = int(c.steps[size]) if size in c.steps else max(1, math.ceil(
            c.tokens_per_param * c.budget_fraction * n / (t.batch_size * t.seq_len)))
        out.update({"train.batch_size": int(t.batch_size), "train.steps": steps,
                    "train.warmup_steps": max(1, round(c.warmup_fraction * steps))})
      steps = self._resolve(size, {**out, **_flatten(c.overrides)}).train.steps
      if c.checkpoints_per_run > 0:
        out["checkpoint.every"] = max(1, math.ceil(steps / c.checkpoints_per_run))
      elif c.checkpoint_every > 0:
        out["checkpoint.every"] = int(c.checkpoint_every)
      out.update({"train.progress_bar": False, "data.data_dir": c.data_dir})
      every = self._resolve(size, {**out, **_flatten(c.overrides)}).checkpoint.every
      out["checkpoint.every"] = int(every)
      out["checkpoint.keep"] = len(_grid(steps, every)) + 2
      self._flags[size] = out
    return dict(self._flags[size])

  def cell_flags(self, cell: Cell) -> dict:
    """{training-config field: value} of one cell: size flags, seed, recipe, then overrides."""
    out = self.size_flags(cell.size)
    out["train.seed"] = cell.seed
    for k, v in self.c.recipes[cell.recipe].items():
      out[f"data.{k}"] = v
    out.update(_flatten(self.c.overrides))
    return out

  def _resolve(self, size: str, flags: dict) -> ml_collections.ConfigDict:
    from olmo_jax import config as config_lib
    arg = self.config_arg(size)
    if arg not in self._base:
      try:
        self._base[arg] = config_lib.load_config_file(self.c.train_config, arg)
      except FileNotFoundError as e:
        raise InputError(f"study config: train_config: {e}") from None
    return config_lib.resolve(apply_flags(self._base[arg], flags))

  def resolved(self, size: str) -> ml_collections.ConfigDict:
    """The resolved training config of the size's cells (first seed, first recipe)."""
    if size not in self._resolved:
      cell = Cell(next(iter(self.c.recipes)), size, int(self.c.seeds[0]))
      self._resolved[size] = self.resolved_cell(cell)
    return self._resolved[size]

  def resolved_cell(self, cell: Cell) -> ml_collections.ConfigDict:
    return self._resolve(cell.size, self.cell_flags(cell))

  def n_params(self, size: str) -> int:
    return int(self.resolved(size).derived.non_embedding_params)

  def batch_size(self, size: str) -> int:
    return int(self.resolved(size).train.batch_size)

  def tokens_per_step(self, size: str) -> int:
    return int(self.resolved(size).derived.tokens_per_step)

  def steps(self, size: str) -> int:
    return int(self.resolved(size).train.steps)

  def compute(self, size: str) -> float:
    """FLOPs (6 N tokens) of one full cell of this size."""
    return float(self.resolved(size).derived.compute_flops)

  def checkpoint_every(self, size: str) -> int:
    return int(self.resolved(size).checkpoint.every)

  def grid_steps(self, size: str) -> list[int]:
    """The checkpoint steps a cell of this size keeps and the study scores."""
    return _grid(self.steps(size), self.checkpoint_every(size))

  # ---- cells
  def trained_sizes(self) -> list[str]:
    return sorted(dict.fromkeys(self.c.sizes), key=self.n_params)

  def cells(self) -> list[Cell]:
    """Every (recipe, size, seed), smallest size first."""
    return [Cell(r, z, int(s)) for z in self.trained_sizes() for r in self.c.recipes
            for s in self.c.seeds]

  def cell_dir(self, cell: Cell) -> str:
    return os.path.join(self.workdir, "cells", cell.recipe, cell.size, f"seed{cell.seed}")

  def overrides(self, cell: Cell) -> list[str]:
    """The `--config.*` flags of a cell's training run."""
    return [f"--config.{k}={_flag_value(v)}" for k, v in self.cell_flags(cell).items()]

  def train_command(self, cell: Cell, python: str = sys.executable) -> list[str]:
    return [python, "-m", self.c.train_module, "--config",
            f"{self.c.train_config}:{self.config_arg(cell.size)}",
            "--workdir", self.cell_dir(cell), *self.overrides(cell)]

  def describe_recipes(self) -> dict:
    """{recipe: {"data", "curation", "overrides"}}: what each recipe trains on (recipes.py)."""
    from olmo_jax.datadecide import recipes
    common = self.c.overrides.get("data", {})
    return {r: recipes.describe(r, dict(self.c.recipes[r]), dict(common))
            for r in self.c.recipes}

  def write_recipes(self) -> str:
    """`<workdir>/recipes.json` (the report's Recipes table); raises InputError for a recipe
    whose mixture cannot be loaded."""
    from olmo_jax.datadecide import recipes
    descriptions = self.describe_recipes()
    os.makedirs(self.workdir, exist_ok=True)
    return recipes.write(os.path.join(self.workdir, recipes.FILENAME), descriptions)

  def is_done(self, cell: Cell) -> bool:
    return os.path.isfile(os.path.join(self.cell_dir(cell), "DONE.json"))


def _grid(steps: int, every: int) -> list[int]:
  return sorted(set(range(every, steps + 1, every)) | {steps})


def apply_flags(config: ml_collections.ConfigDict, flags: dict) -> ml_collections.ConfigDict:
  """A copy of `config` with {"train.lr": 0.004, ...} set, as `--config.train.lr=...` would."""
  c = ml_collections.ConfigDict(config.to_dict())
  for key, v in flags.items():
    *path, leaf = key.split(".")
    node = c
    try:
      for p in path:
        node = node[p]
      if leaf not in node:
        raise KeyError(leaf)
      node[leaf] = v
    except (KeyError, TypeError, AttributeError) as e:
      raise InputError(f"training config has no field {key} (or {v!r} does not fit it: {e}); "
                       f"fix the study's overrides or recipes") from None
  return c


def _flatten(tree, prefix: str = "") -> dict:
  """{"train": {"lr": 1}} -> {"train.lr": 1}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _flag_value(v) -> str:
  if isinstance(v, bool):
    return "true" if v else "false"
  return str(v)


# ---------------------------------------------------------------------------------------------
# Checkpoints and scores


def complete_checkpoints(cell_dir: str) -> list[int]:
  """Steps of the complete checkpoints of a cell (olmo_jax.checkpoint's definition)."""
  from olmo_jax import checkpoint
  return checkpoint.complete_steps(os.path.join(cell_dir, "checkpoints"), quiet=True)


def make_scorer(study: Study):
  """The study's scorer (see scorers.py): eval.run when present, else held-out loss."""
  import importlib
  import importlib.util

  from olmo_jax.datadecide import scorers
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
                                 windows=int(e.heldout_windows))
  module, _, fn = kind.partition(":")
  try:
    return getattr(importlib.import_module(module), fn or "make_scorer")(study)
  except (ImportError, AttributeError) as err:
    raise InputError(f"eval.scorer={kind!r}: cannot load it ({err}); use auto, eval_run, "
                     f"heldout or module:factory") from None


def score_cell(study: Study, cell: Cell, scorer: Callable, print_fn=None) -> int:
  """Scores every not-yet-scored grid checkpoint of a cell; returns how many were scored."""
  d = study.cell_dir(cell)
  grid = set(study.grid_steps(cell.size))
  todo = [s for s in complete_checkpoints(d) if s in grid  # not e.g. a preemption save
          and not os.path.isfile(os.path.join(d, "eval", str(s), "scores.json"))]
  for i, step in enumerate(todo):
    out = os.path.join(d, "eval", str(step))
    cache = os.path.join(out, "scores.json")
    os.makedirs(out, exist_ok=True)
    if print_fn:
      print_fn(f"[study] scoring {cell.name} step {step} ({i + 1}/{len(todo)})")
    ckpt = os.path.join(d, "checkpoints", str(step))
    scores = scorer(cell, step, ckpt, out)
    paths.write_atomic(cache, json.dumps({"tasks": scores, "step": step, "checkpoint": ckpt,
                                          "cell": cell.name}))
  return len(todo)


def collect_results(study: Study):
  """The results table of every scored checkpoint of every cell (pandas DataFrame)."""
  import pandas as pd

  from olmo_jax.datadecide import results
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


# ---------------------------------------------------------------------------------------------
# Running the grid


def _hms(seconds: float) -> str:
  s = int(round(seconds))
  return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else \
      f"{s // 60}m{s % 60:02d}s"


def run_study(study: Study, *, workers: int = 1, scorer: Callable | None = None,
              print_fn=print, poll_s: float = 0.5) -> dict:
  """Trains every cell not done, scores every checkpoint not scored; returns a summary."""
  study.write_recipes()  # also fails early on a recipe that does not load
  with open(os.path.join(study.workdir, "study.json"), "w") as f:
    json.dump(study.c.to_dict(), f, indent=1, default=str)
  if study.c.synthetic_noise_levels:
    from olmo_jax.datadecide import synthetic
    synthetic.build(study.c.data_dir, tuple(study.c.synthetic_noise_levels),
                    vocab=int(study.c.synthetic_vocab))
  scorer = scorer or make_scorer(study)
  cells = study.cells()
  pending = [c for c in cells if not study.is_done(c)]
  scored = 0
  for c in cells:  # finish scoring cells completed earlier (e.g. before a crash)
    if study.is_done(c):
      scored += score_cell(study, c, scorer, print_fn)
  prog = Progress(study, cells, workers)
  print_fn(f"[study] {len(cells)} cells: {len(cells) - len(pending)} already done, "
           f"{len(pending)} to train ({workers} worker(s)); {prog.total:.3g} FLOPs to train; "
           f"workdir {study.workdir}")
  running: dict[Cell, tuple] = {}
  failed, last_line = [], ""
  while pending or running:
    while pending and len(running) < workers:
      cell = pending.pop(0)
      running[cell] = _start_cell(study, cell)
    for cell, (proc, t0, log) in list(running.items()):
      rc = proc.poll()
      if rc is None:
        continue
      log.close()
      del running[cell]
      if _finish_cell(study, cell, rc, t0, failed, print_fn):
        scored += score_cell(study, cell, scorer, print_fn)
        prog.finished(cell, time.time() - t0)
    line = prog.line(running, len(pending), len(failed))
    if line.split("; elapsed")[0] != last_line.split("; elapsed")[0]:
      print_fn(line)
      last_line = line
    if running:
      time.sleep(poll_s)
  table = collect_results(study)
  from olmo_jax.datadecide import results
  paths = results.write_table(table, os.path.join(study.workdir, "results")) if len(table) \
      else ()
  print_fn(f"[study] {scored} checkpoint(s) scored this run; results: "
           f"{', '.join(paths) or 'none yet'}")
  return {"failed": failed, "table": table, "scored": scored, "paths": paths}


def _start_cell(study: Study, cell: Cell) -> tuple:
  d = study.cell_dir(cell)
  os.makedirs(d, exist_ok=True)
  log = open(os.path.join(d, "train.log"), "a")
  cmd = [sys.executable, "-m", "olmo_jax.datadecide.child", str(os.getpid()),
         *study.train_command(cell)]
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
  return proc, time.time(), log


def _finish_cell(study: Study, cell: Cell, rc: int, t0: float, failed: list, print_fn) -> bool:
  """Marks a cell whose trainer exited: DONE.json when it reached its final step."""
  d = study.cell_dir(cell)
  final = study.steps(cell.size)
  if rc == 0 and final in complete_checkpoints(d):
    with open(os.path.join(d, "DONE.json"), "w") as f:
      json.dump({"steps": final, "seconds": time.time() - t0}, f)
    return True
  failed.append(cell)
  print_fn(f"[study] cell {cell.name} failed (exit {rc}); last lines of {d}/train.log:\n"
           f"{_tail(os.path.join(d, 'train.log'))}")
  return False


class Progress:
  """The progress line: cells, the running cells' steps, FLOPs done, ETA by compute.

  The ETA models a cell's wall time as a + b * FLOPs: b, seconds per training FLOP, from the
  tokens/s the finished cells' trainers logged; a, the rest of their wall time (start-up,
  compilation, checkpoints, scoring) per cell. It sums that over the cells and FLOPs left, so
  a large cell counts for more than a small one. A trainer that logs no tokens/s counts all
  its time as b.
  """

  def __init__(self, study: Study, cells: list[Cell], workers: int):
    self.study, self.workers, self.t0 = study, workers, time.time()
    self.todo = [c for c in cells if not study.is_done(c)]
    self.total = sum(study.compute(c.size) for c in self.todo)
    self.n_cells = len(cells)
    self.done: list[tuple[float, float, float]] = []  # (FLOPs, wall s, training s) per cell
    self.steps: dict[str, int] = {}  # newest step seen in each running cell's log

  def finished(self, cell: Cell, seconds: float) -> None:
    st = self.study
    rate = _log_tokens_per_s(os.path.join(st.cell_dir(cell), "train.log"))
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

  def line(self, running: dict, n_left: int, n_failed: int) -> str:
    st = self.study
    done_flops, parts = sum(f for f, _, _ in self.done), []
    for cell in running:
      step = _log_step(os.path.join(st.cell_dir(cell), "train.log"))
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
    line += f"; {pct:.0f}% of {self.total:.3g} FLOPs; elapsed {_hms(time.time() - self.t0)}"
    model = self._model()
    if model is None:
      return line + "; ETA after the first cell"
    a, b = model
    left_cells = n_left + len(running)
    eta = (a * left_cells + b * max(self.total - done_flops, 0.0)) / self.workers
    return line + f"; ETA {_hms(eta)} (by FLOPs)"


def _log_tokens_per_s(path: str) -> float | None:
  """Mean of the `tok/s N` values a trainer logged (None when it logged none)."""
  import re
  try:
    with open(path, errors="replace") as f:
      hits = re.findall(r"tok/s ([\d,]+)", f.read())
  except OSError:
    return None
  vals = [float(h.replace(",", "")) for h in hits]
  return sum(vals) / len(vals) if vals else None


def _log_step(path: str) -> int | None:
  """The newest `step N/M` a trainer logged (None before its first log line)."""
  import re
  try:
    with open(path, "rb") as f:
      f.seek(max(0, os.path.getsize(path) - 65536))
      tail = f.read().decode(errors="replace")
  except OSError:
    return None
  hits = re.findall(r"step (\d+)/\d+", tail)
  return int(hits[-1]) if hits else None


def _tail(path: str, n: int = 15) -> str:
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return "(no log)"


def write_plan(study: Study) -> str:
  """plan.txt: one shell command per cell (line i = cell i, e.g. for a SLURM job array), and
  recipes.json."""
  study.write_recipes()
  path = os.path.join(study.workdir, "plan.txt")
  paths.write_atomic(path, "".join(shlex.join(study.train_command(cell, python="python")) + "\n"
                                   for cell in study.cells()))
  cells = [{"cell": c.name, "workdir": study.cell_dir(c)} for c in study.cells()]
  paths.write_atomic(os.path.join(study.workdir, "plan.json"), json.dumps(cells, indent=1))
  return path


# Fields that make a cell's budget; `--launch-budget full` leaves them to the resolver.
BUDGET_FIELDS = ("train.steps", "train.batch_size", "train.seq_len", "train.warmup_steps",
                 "checkpoint.every", "checkpoint.keep")


def launch_flags(study: Study, recipe: str, budget: str = "validated") -> dict:
  """{field: value} of the target's run: what its cells trained with, or the full budget."""
  c = study.c
  flags = study.cell_flags(Cell(recipe, c.target, int(c.seeds[0])))
  if budget == "full":
    flags = {k: v for k, v in flags.items() if k not in BUDGET_FIELDS}
  return flags


def _launch_header(study: Study, recipe: str, budget: str, output: str) -> list[str]:
  c = study.c
  r = study.resolved_cell(Cell(recipe, c.target, int(c.seeds[0])))
  t = r.train
  trained = c.target in c.sizes
  lines = [f"Training run of {c.target} on recipe {recipe!r}, chosen by the DataDecide study "
           f"{c.name!r}.", ""]
  if budget == "validated":
    lines += [("The settings its target cells trained with" if trained else
               "The settings the study would have trained its target cells with (the target "
               "was not trained)") + f" (seeds {list(c.seeds)}; this file: seed {c.seeds[0]}):",
              f"  {t.steps} steps x {t.batch_size} x {t.seq_len} tokens "
              f"({r.derived.total_tokens / r.derived.non_embedding_params:.3g} tokens per "
              f"parameter, N={r.derived.non_embedding_params:,}), warmup {t.warmup_steps}, "
              f"lr {t.lr}, every study override.",
              "Resolved with olmo_jax.config.resolve it equals the target cells' config."]
  else:
    try:
      full = study._resolve(c.target, launch_flags(study, recipe, "full"))
      bad = full.train.batch_size <= 0
    except (ZeroDivisionError, ValueError):
      bad = True
    if bad:
      raise InputError(f"--launch-budget full: the ladder formulas give no batch for "
                       f"{c.target} (N={r.derived.non_embedding_params:,}); use "
                       f"--launch-budget validated or a ladder target")
    diffs = _diff(r.to_dict(), full.to_dict())
    lines += [f"The full budget, not what the study validated: {len(diffs)} setting(s) differ "
              "from the target cells (field: validated -> this file):"]
    lines += [f"  {k}: {a!r} -> {b!r}" for k, a, b in diffs]
  return lines + ["", f"python -m olmo_jax.train --config {output} --workdir "
                      f"runs/{c.target}-{recipe}"]


def _diff(a: dict, b: dict, prefix: str = "") -> list[tuple]:
  out = []
  for k in sorted(set(a) | set(b)):
    x, y = a.get(k), b.get(k)
    if isinstance(x, dict) and isinstance(y, dict):
      out += _diff(x, y, f"{prefix}{k}.")
    elif x != y:
      out.append((f"{prefix}{k}", x, y))
  return out


def write_launch(study: Study, recipe: str, output: str | None = None,
                 budget: str = "validated") -> str:
  """A training config file for the target size on `recipe` (see launch_flags)."""
  c = study.c
  if not c.target:
    raise InputError("study config has no `target` size: nothing to launch")
  if recipe not in c.recipes:
    raise InputError(f"unknown recipe {recipe!r}; the study has {', '.join(c.recipes)}")
  if budget not in ("validated", "full"):
    raise InputError(f"--launch-budget {budget!r}: use validated or full")
  suffix = "" if budget == "validated" else "_full"
  output = os.path.abspath(output or os.path.join(study.workdir,
                                                  f"launch_{c.target}_{recipe}{suffix}.py"))
  header = _launch_header(study, recipe, budget, output)
  lines = ['"""' + header[0], *header[1:], '"""', "",
           "from olmo_jax.config import load_config_file", "", "",
           "def get_config():",
           f"  c = load_config_file({c.train_config!r}, {study.config_arg(c.target)!r})"]
  lines += [f"  c.{k} = {v!r}" for k, v in launch_flags(study, recipe, budget).items()]
  lines += ["  return c", ""]
  os.makedirs(os.path.dirname(output), exist_ok=True)
  paths.write_atomic(output, "\n".join(lines))
  return output


def report_target(study: Study, table) -> tuple[str, str | None]:
  """(size the report measures decision accuracy against, a note when it is not the target)."""
  present = set(table["size"])
  if study.c.target in present:
    return study.c.target, None
  largest = [s for s in study.trained_sizes() if s in present][-1]
  return largest, (f"target {study.c.target} was not trained: decision accuracy is measured "
                   f"against the largest trained size, {largest}")


def _parser():
  import argparse
  p = argparse.ArgumentParser(prog="python -m olmo_jax.datadecide",
                              description="Run a DataDecide study (see olmo_jax/datadecide).")
  p.add_argument("--config", required=True, help="study config file (configs/datadecide/*.py)")
  p.add_argument("--workdir", required=True)
  p.add_argument("--plan", action="store_true", help="write plan.txt (one command per cell) "
                                                     "and stop")
  p.add_argument("--launch", action="store_true",
                 help="after the report, write the target's full-training config for the "
                      "recommended recipe (or --recipe)")
  p.add_argument("--recipe", default=None, help="recipe for --launch (default: recommended; "
                                                 "with --plan, required)")
  p.add_argument("--launch-budget", choices=("validated", "full"), default="validated",
                 help="validated (default): the settings the target cells trained with; full: "
                      "the resolver's full budget, each difference listed in the file header")
  p.add_argument("--workers", type=int, default=1, help="cells trained at the same time")
  p.add_argument("--no-report", action="store_true")
  p.add_argument("--allow-truncated", action="store_true",
                 help="report on runs short of their final step too (default: named in the "
                      "warnings and left out)")
  return p


def _report(study: "Study", table, allow_truncated: bool, write: bool = True) -> dict | None:
  """The study's report over its results (truncated runs named and left out unless allowed);
  its recommendation, or None when not written or fewer than two sizes are trained."""
  from olmo_jax.datadecide import results
  table, warned = results.drop_truncated(table, allow_truncated) if len(table) else (table, [])
  for w in warned:
    print(f"[study] warning: {w}")
  if not write or not len(table) or table["size"].nunique() < 2:
    return None
  from olmo_jax.datadecide import recipes, report
  target, note = report_target(study, table)
  out = report.write_report(table, target, os.path.join(study.workdir, "report"),
                            headline=study.c.eval.headline or None,
                            target_metrics=tuple(study.c.eval.target_metrics),
                            ties=study.c.eval.ties,
                            title=f"DataDecide study {study.c.name!r}",
                            recipes=recipes.read(os.path.join(study.workdir,
                                                              recipes.FILENAME)),
                            warnings=warned)
  rec = out["recommendation"]
  if note:
    print(f"[study] note: {note}")
  print(f"[study] best recipe: {rec['best_recipe']} (at {rec['decided_at_size']}); report: "
        f"{os.path.join(study.workdir, 'report', 'report.md')}")
  return rec


def main(argv) -> int:
  """`python -m olmo_jax.datadecide --config STUDY.py --workdir DIR [--plan] [--launch] ...`."""
  a = _parser().parse_args(argv)
  try:
    if a.workers < 1:
      raise InputError(f"--workers {a.workers} must be >= 1")
    config = _load_study_config(a.config)
    study = Study(config, a.workdir)
    if a.recipe is not None and a.recipe not in study.c.recipes:
      raise InputError(f"--recipe {a.recipe}: unknown recipe; the study has "
                       f"{', '.join(study.c.recipes)}")
    if a.plan and a.launch and a.recipe is None:
      raise InputError("--plan --launch trains nothing, so it needs --recipe NAME")
    if a.plan:
      path = write_plan(study)
      print(f"wrote {len(study.cells())} commands to {path}")
      if a.launch:
        _print_launch(study, write_launch(study, a.recipe, budget=a.launch_budget), a.recipe)
      return 0
    summary = run_study(study, workers=a.workers)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  rc = 1 if summary["failed"] else 0
  rec = _report(study, summary["table"], a.allow_truncated, write=not a.no_report)
  if a.launch:
    recipe = a.recipe or (rec["best_recipe"] if rec else None)
    if recipe is None:
      print("error: --launch needs a report (two trained sizes) or --recipe", file=sys.stderr)
      return 2
    _print_launch(study, write_launch(study, recipe, budget=a.launch_budget), recipe)
  return rc


def _print_launch(study: Study, path: str, recipe: str) -> None:
  print(f"[study] target training config: {path}\n  python -m olmo_jax.train --config {path} "
        f"--workdir runs/{study.c.target}-{recipe}")


def _load_study_config(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config([arg])` of a study config file `path[:arg]`."""
  import runpy
  path, _, arg = path.partition(":")
  if not os.path.isfile(path):
    raise InputError(f"study config not found: {path}")
  get_config = runpy.run_path(path)["get_config"]
  return get_config(arg) if arg else get_config()
