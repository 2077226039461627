"""A DataDecide study: its config, its grid of cells (recipe, size, seed) and their budgets.

Every cell is an ordinary training run in its own workdir,
`<workdir>/cells/<recipe>/<size>/seed<seed>/`, started as
`python -m olmo_jax.train --config configs/train.py:SIZE --workdir CELL --config.*=...`, so it
can run anywhere. The rest of the study lives beside this module:
- cells.py: a cell's files (checkpoints, `DONE.json`, progress from `metrics.jsonl`, scores)
  and the results table built from them;
- runner.py: `run_study` and the executors that train a list of cells (`LocalExecutor`:
  subprocesses on this machine);
- launch.py: `plan.txt` (one command per cell) and the target's training config file;
- slurm.py: the grid as a SLURM job array and a collect job (`--executor slurm`);
- status.py: `python -m olmo_jax.datadecide status` (where each cell stands);
- study_command.py: `python -m olmo_jax.datadecide --config STUDY --workdir DIR`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import ml_collections

from olmo_jax import config as config_lib
from olmo_jax import config_files, sizes
from olmo_jax.datadecide import TIES
from olmo_jax.datadecide.results import InputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_TRAIN_CONFIG = os.path.join(REPO, "configs", "train.py")
DONE = "DONE.json"  # a finished cell's marker (cells.mark_done)


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
    if c.eval.ties not in TIES:
      raise InputError(f"study config: eval.ties={c.eval.ties!r}; use "
                       + " or ".join(map(repr, TIES)))
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
                                     **config_files.flatten(c.overrides)})
        n, t = first.derived.non_embedding_params, first.train
        if t.batch_size <= 0:
          raise InputError(f"size {size}: the ladder batch formula gives {t.batch_size} "
                           f"sequences for N={n:,}; set the study's batch_size")
        steps = int(c.steps[size]) if size in c.steps else max(1, math.ceil(
            c.tokens_per_param * c.budget_fraction * n / (t.batch_size * t.seq_len)))
        out.update({"train.batch_size": int(t.batch_size), "train.steps": steps,
                    "train.warmup_steps": max(1, round(c.warmup_fraction * steps))})
      steps = self._resolve(size, {**out, **config_files.flatten(c.overrides)}).train.steps
      if c.checkpoints_per_run > 0:
        out["checkpoint.every"] = max(1, math.ceil(steps / c.checkpoints_per_run))
      elif c.checkpoint_every > 0:
        out["checkpoint.every"] = int(c.checkpoint_every)
      out.update({"train.progress_bar": False, "data.data_dir": c.data_dir})
      every = self._resolve(size, {**out, **config_files.flatten(c.overrides)}).checkpoint.every
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
    out.update(config_files.flatten(self.c.overrides))
    return out

  def _resolve(self, size: str, flags: dict) -> config_lib.RunSpec:
    arg = self.config_arg(size)
    if arg not in self._base:
      try:
        self._base[arg] = config_lib.load_config_file(self.c.train_config, arg)
      except FileNotFoundError as e:
        raise InputError(f"study config: train_config: {e}") from None
    try:
      config = config_files.with_overrides(self._base[arg], flags, "the study's overrides")
    except ValueError as e:
      raise InputError(f"{e}; fix the study's overrides or recipes") from None
    return config_lib.resolve(config)

  def resolved(self, size: str) -> config_lib.RunSpec:
    """The resolved training config of the size's cells (first seed, first recipe)."""
    if size not in self._resolved:
      cell = Cell(next(iter(self.c.recipes)), size, int(self.c.seeds[0]))
      self._resolved[size] = self.resolved_cell(cell)
    return self._resolved[size]

  def resolved_cell(self, cell: Cell) -> config_lib.RunSpec:
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
    """True once the cell's trainer finished its final step (cells.mark_done)."""
    return os.path.isfile(os.path.join(self.cell_dir(cell), DONE))


def _grid(steps: int, every: int) -> list[int]:
  return sorted(set(range(every, steps + 1, every)) | {steps})


def _flag_value(v) -> str:
  if isinstance(v, bool):
    return "true" if v else "false"
  return str(v)


def load_study_config(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config([arg])` of a study config file `PATH.py[:ARG]` (config.load_config_file)."""
  try:
    return config_lib.load_config_file(path)
  except FileNotFoundError:
    raise InputError(f"study config not found: {config_lib.split_spec(path)[0]}") from None
