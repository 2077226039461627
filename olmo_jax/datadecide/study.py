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

from olmo_jax import sizes
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
  c.seq_len = 2048
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

  # ---- sizes and budgets
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

  def n_params(self, size: str) -> int:
    d, _, l = self.shape(size)
    return sizes.non_embedding_params(d, l, embedding_size=self.embedding_size())

  def batch_size(self, size: str) -> int:
    if self.c.batch_size > 0:
      return int(self.c.batch_size)
    lad = sizes.LADDER.get(size)
    return lad.batch_seqs if lad else sizes.batch_size_formula(self.n_params(size))

  def tokens_per_step(self, size: str) -> int:
    return self.batch_size(size) * int(self.c.seq_len)

  def full_budget(self, size: str) -> bool:
    lad = sizes.LADDER.get(size)
    return bool(lad and self.c.budget_fraction == 1 and self.c.tokens_per_param == 100
                and self.batch_size(size) == lad.batch_seqs and self.c.seq_len == sizes.SEQ_LEN)

  def steps(self, size: str) -> int:
    if size in self.c.steps:
      return int(self.c.steps[size])
    if self.full_budget(size):
      return sizes.LADDER[size].final_step
    tokens = self.c.tokens_per_param * self.c.budget_fraction * self.n_params(size)
    return max(1, math.ceil(tokens / self.tokens_per_step(size)))

  def checkpoint_every(self, size: str) -> int:
    if self.c.checkpoints_per_run > 0:
      return max(1, math.ceil(self.steps(size) / self.c.checkpoints_per_run))
    if self.c.checkpoint_every > 0:
      return int(self.c.checkpoint_every)
    return 2500 if size == "1B" else 1250

  def grid_steps(self, size: str) -> list[int]:
    """The checkpoint steps a cell of this size keeps and the study scores."""
    n, e = self.steps(size), self.checkpoint_every(size)
    return sorted(set(range(e, n + 1, e)) | {n})

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
    c, size = self.c, cell.size
    out = {}
    if size in c.custom_sizes:
      d, h, l = self.shape(size)
      out.update({"model.size": "custom", "model.d_model": d, "model.n_heads": h,
                  "model.n_layers": l})
    if not self.full_budget(size):
      steps = self.steps(size)
      out.update({"train.steps": steps, "train.batch_size": self.batch_size(size),
                  "train.seq_len": c.seq_len,
                  "train.warmup_steps": max(1, round(c.warmup_fraction * steps))})
    if c.synthetic_vocab:
      out.update({"model.vocab_size": int(c.synthetic_vocab),
                  "model.embedding_size": self.embedding_size()})
    n_ckpt = len(self.grid_steps(size))
    out.update({"train.seed": cell.seed, "checkpoint.every": self.checkpoint_every(size),
                "checkpoint.keep": n_ckpt + 2, "train.progress_bar": False,
                "data.data_dir": c.data_dir})
    for k, v in c.recipes[cell.recipe].items():
      out[f"data.{k}"] = v
    out.update(_flatten(c.overrides))
    return [f"--config.{k}={_flag_value(v)}" for k, v in out.items()]

  def train_command(self, cell: Cell, python: str = sys.executable) -> list[str]:
    arg = cell.size if cell.size in sizes.LADDER else "4M"  # custom shapes come as overrides
    return [python, "-m", self.c.train_module, "--config", f"{self.c.train_config}:{arg}",
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


def score_cell(study: Study, cell: Cell, scorer: Callable) -> int:
  """Scores every not-yet-scored grid checkpoint of a cell; returns how many were scored."""
  d = study.cell_dir(cell)
  grid = set(study.grid_steps(cell.size))
  done = 0
  for step in complete_checkpoints(d):
    if step not in grid:
      continue  # e.g. a preemption save between grid points
    out = os.path.join(d, "eval", str(step))
    cache = os.path.join(out, "scores.json")
    if os.path.isfile(cache):
      continue
    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(d, "checkpoints", str(step))
    scores = scorer(cell, step, ckpt, out)
    tmp = cache + ".tmp"
    with open(tmp, "w") as f:
      json.dump({"tasks": scores, "step": step, "checkpoint": ckpt, "cell": cell.name}, f)
    os.replace(tmp, cache)
    done += 1
  return done


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
                                study.n_params(cell.size), scores)
  return results.validate_table(pd.DataFrame(rows, columns=list(results.COLUMNS)))


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
  n_done0 = len(cells) - len(pending)
  scored = 0
  for c in cells:  # finish scoring cells completed earlier (e.g. before a crash)
    if study.is_done(c):
      scored += score_cell(study, c, scorer)
  running: dict[Cell, tuple] = {}
  failed, durations = [], []
  t_start, last_line = time.time(), ""
  print_fn(f"[study] {len(cells)} cells: {n_done0} already done, {len(pending)} to train "
           f"({workers} worker(s)); workdir {study.workdir}")
  while pending or running:
    while pending and len(running) < workers:
      cell = pending.pop(0)
      d = study.cell_dir(cell)
      os.makedirs(d, exist_ok=True)
      log = open(os.path.join(d, "train.log"), "a")
      cmd = [sys.executable, "-m", "olmo_jax.datadecide.child", str(os.getpid()),
             *study.train_command(cell)]
      proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
      running[cell] = (proc, time.time(), log)
    for cell, (proc, t0, log) in list(running.items()):
      rc = proc.poll()
      if rc is None:
        continue
      log.close()
      del running[cell]
      d = study.cell_dir(cell)
      final = study.steps(cell.size)
      if rc == 0 and final in complete_checkpoints(d):
        durations.append(time.time() - t0)
        scored += score_cell(study, cell, scorer)
        with open(os.path.join(d, "DONE.json"), "w") as f:
          json.dump({"steps": final, "seconds": durations[-1]}, f)
      else:
        failed.append(cell)
        tail = _tail(os.path.join(d, "train.log"))
        print_fn(f"[study] cell {cell.name} failed (exit {rc}); last lines of "
                 f"{d}/train.log:\n{tail}")
    done = sum(study.is_done(c) for c in cells)
    left = len(pending)
    if durations:
      eta = sum(durations) / len(durations) * (left + len(running)) / max(1, workers)
      eta_s = _hms(eta)
    else:
      eta_s = "after the first cell"
    line = (f"[study] cells: {done} done, {len(running)} running, {left} left, "
            f"{len(failed)} failed; elapsed {_hms(time.time() - t_start)}; ETA {eta_s}")
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
  with open(path, "w") as f:
    for cell in study.cells():
      f.write(shlex.join(study.train_command(cell, python="python")) + "\n")
  with open(os.path.join(study.workdir, "plan.json"), "w") as f:
    json.dump([{"cell": c.name, "workdir": study.cell_dir(c)} for c in study.cells()], f,
              indent=1)
  return path


def write_launch(study: Study, recipe: str, output: str | None = None) -> str:
  """A training config file for the target size on `recipe` at the full budget."""
  c = study.c
  if not c.target:
    raise InputError("study config has no `target` size: nothing to launch")
  if recipe not in c.recipes:
    raise InputError(f"unknown recipe {recipe!r}; the study has {', '.join(c.recipes)}")
  study.shape(c.target)
  lines = [f'"""Full training run of {c.target} on recipe {recipe}, chosen by the DataDecide '
           f'study {c.name!r}.', "",
           f"python -m olmo_jax.train --config {output or 'THIS_FILE'} --workdir "
           f"runs/{c.target}-{recipe}", '"""', "",
           "from olmo_jax.config import load_config_file", "", "",
           "def get_config():",
           f"  c = load_config_file({c.train_config!r}, "
           f"{c.target if c.target in sizes.LADDER else '4M'!r})"]
  if c.target in c.custom_sizes:
    d, h, l = study.shape(c.target)
    lines += ['  c.model.size = "custom"', f"  c.model.d_model = {d}",
              f"  c.model.n_heads = {h}", f"  c.model.n_layers = {l}"]
  if c.synthetic_vocab:
    lines += [f"  c.model.vocab_size = {int(c.synthetic_vocab)}",
              f"  c.model.embedding_size = {study.embedding_size()}"]
  lines.append(f"  c.data.data_dir = {c.data_dir!r}")
  for k, v in c.recipes[recipe].items():
    lines.append(f"  c.data.{k} = {v!r}")
  for k, v in _flatten(c.overrides).items():
    lines.append(f"  c.{k} = {v!r}")
  lines += ["  return c", ""]
  output = output or os.path.join(study.workdir, f"launch_{c.target}_{recipe}.py")
  text = "\n".join(lines).replace("THIS_FILE", output)
  with open(output, "w") as f:
    f.write(text)
  return output


def report_target(study: Study, table) -> tuple[str, str | None]:
  """(size the report measures decision accuracy against, a note when it is not the target)."""
  present = set(table["size"])
  if study.c.target in present:
    return study.c.target, None
  largest = [s for s in study.trained_sizes() if s in present][-1]
  return largest, (f"target {study.c.target} was not trained: decision accuracy is measured "
                   f"against the largest trained size, {largest}")


def main(argv) -> int:
  """`python -m olmo_jax.datadecide --config STUDY.py --workdir DIR [--plan] [--launch] ...`."""
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
  p.add_argument("--recipe", default=None, help="recipe for --launch (default: recommended)")
  p.add_argument("--workers", type=int, default=1, help="cells trained at the same time")
  p.add_argument("--no-report", action="store_true")
  a = p.parse_args(argv)
  try:
    if a.workers < 1:
      raise InputError(f"--workers {a.workers} must be >= 1")
    config = _load_study_config(a.config)
    study = Study(config, a.workdir)
    if a.recipe is not None and a.recipe not in study.c.recipes:
      raise InputError(f"--recipe {a.recipe}: unknown recipe; the study has "
                       f"{', '.join(study.c.recipes)}")
    if a.plan:
      path = write_plan(study)
      print(f"wrote {len(study.cells())} commands to {path}")
      return 0
    summary = run_study(study, workers=a.workers)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  rc = 1 if summary["failed"] else 0
  table = summary["table"]
  rec = None
  if not a.no_report and len(table) and table["size"].nunique() >= 2:
    from olmo_jax.datadecide import recipes, report
    target, note = report_target(study, table)
    out = report.write_report(table, target, os.path.join(study.workdir, "report"),
                              headline=study.c.eval.headline or None,
                              target_metrics=tuple(study.c.eval.target_metrics),
                              ties=study.c.eval.ties,
                              title=f"DataDecide study {study.c.name!r}",
                              recipes=recipes.read(os.path.join(study.workdir,
                                                                recipes.FILENAME)))
    rec = out["recommendation"]
    if note:
      print(f"[study] note: {note}")
    print(f"[study] best recipe: {rec['best_recipe']} (at {rec['decided_at_size']}); report: "
          f"{os.path.join(study.workdir, 'report', 'report.md')}")
  if a.launch:
    recipe = a.recipe or (rec["best_recipe"] if rec else None)
    if recipe is None:
      print("error: --launch needs a report (two trained sizes) or --recipe", file=sys.stderr)
      return 2
    path = write_launch(study, recipe)
    print(f"[study] full-training config: {path}\n  python -m olmo_jax.train --config {path} "
          f"--workdir runs/{study.c.target}-{recipe}")
  return rc


def _load_study_config(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config([arg])` of a study config file `path[:arg]`."""
  import runpy
  path, _, arg = path.partition(":")
  if not os.path.isfile(path):
    raise InputError(f"study config not found: {path}")
  get_config = runpy.run_path(path)["get_config"]
  return get_config(arg) if arg else get_config()
