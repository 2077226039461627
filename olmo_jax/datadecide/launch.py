"""What a study hands over: `plan.txt` (one training command per cell) and the target's
training config file for a chosen recipe (`--launch`)."""

from __future__ import annotations

import json
import os
import shlex

from olmo_jax import paths
from olmo_jax.datadecide.results import InputError
from olmo_jax.datadecide.study import Cell, Study


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
