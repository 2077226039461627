"""`python -m olmo_jax.datadecide --config STUDY.py --workdir DIR [--plan] [--launch] ...`:
runs a study (runner.py), then writes its report and, with --launch, the target's config."""

from __future__ import annotations

import argparse
import os
import sys

from olmo_jax.datadecide import cells, launch, packing, recipes, report, results, runner, slurm
from olmo_jax.datadecide.results import InputError
from olmo_jax.datadecide.study import Study, load_study_config


def report_target(study: Study, table) -> tuple[str, str | None]:
  """(size the report measures decision accuracy against, a note when it is not the target)."""
  present = set(table["size"])
  if study.c.target in present:
    return study.c.target, None
  largest = [s for s in study.trained_sizes() if s in present][-1]
  return largest, (f"target {study.c.target} was not trained: decision accuracy is measured "
                   f"against the largest trained size, {largest}")


def _parser():
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
  p.add_argument("--workers", type=int, default=1,
                 help="cells (with --no-pack) or packs trained at the same time")
  p.add_argument("--no-pack", action="store_true",
                 help="train every cell in its own process (default: the cells of a size in "
                      "packs, one program each; olmo_jax/datadecide/packing.py)")
  p.add_argument("--pack-size", type=int, default=packing.DEFAULT_PACK_SIZE,
                 help="most cells in one pack (default %(default)s)")
  p.add_argument("--executor", choices=("local", "slurm"), default="local",
                 help="local (default): train the cells here; slurm: submit them as a job "
                      "array and a collect job that writes the report, then return")
  p.add_argument("--collect", action="store_true",
                 help="train nothing: score the cells that are done (trained here, by a job "
                      "array or by hand from plan.txt), write the results and the report; "
                      "exit 1 when cells are missing")
  p.add_argument("--no-report", action="store_true")
  p.add_argument("--allow-truncated", action="store_true",
                 help="report on runs short of their final step too (default: named in the "
                      "warnings and left out)")
  slurm.add_arguments(p)
  return p


def _report(study: Study, table, allow_truncated: bool, write: bool = True) -> dict | None:
  """The study's report over its results (truncated runs named and left out unless allowed);
  its recommendation, or None when not written or fewer than two sizes are trained."""
  table, warned = results.drop_truncated(table, allow_truncated) if len(table) else (table, [])
  for w in warned:
    print(f"[study] warning: {w}")
  if not write or not len(table) or table["size"].nunique() < 2:
    return None
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


def _study(a) -> Study:
  """The validated study of the command line (InputError on bad input, nothing written)."""
  if a.workers < 1:
    raise InputError(f"--workers {a.workers} must be >= 1")
  if a.pack_size < 1:
    raise InputError(f"--pack-size {a.pack_size} must be >= 1")
  study = Study(load_study_config(a.config), a.workdir)
  if a.recipe is not None and a.recipe not in study.c.recipes:
    raise InputError(f"--recipe {a.recipe}: unknown recipe; the study has "
                     f"{', '.join(study.c.recipes)}")
  if a.plan and a.launch and a.recipe is None:
    raise InputError("--plan --launch trains nothing, so it needs --recipe NAME")
  if a.executor == "slurm" and (a.plan or a.collect):
    raise InputError("--executor slurm submits the grid; it goes without --plan and --collect")
  return study


def _collect_flags(a) -> list[str]:
  """The flags of this command that the SLURM collect job repeats."""
  out = ["--launch"] if a.launch else []
  out += ["--recipe", a.recipe] if a.recipe else []
  out += ["--launch-budget", a.launch_budget, *(["--no-report"] if a.no_report else []),
          *(["--allow-truncated"] if a.allow_truncated else [])]
  return out


def main(argv) -> int:
  """`python -m olmo_jax.datadecide --config STUDY.py --workdir DIR [--plan] [--launch] ...`."""
  a = _parser().parse_args(argv)
  try:
    study = _study(a)
    if a.plan:
      path = launch.write_plan(study)
      print(f"wrote {len(study.cells())} commands to {path}")
      if a.launch:
        _print_launch(study, launch.write_launch(study, a.recipe, budget=a.launch_budget), a.recipe)
      return 0
    if a.executor == "slurm":
      slurm.submit(study, a.config, slurm.options_from(a), _collect_flags(a))
      return 0
    executor = runner.NoTraining() if a.collect else _executor(study, a)
    summary = runner.run_study(study, workers=a.workers, executor=executor)
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
    _print_launch(study, launch.write_launch(study, recipe, budget=a.launch_budget), recipe)
  return rc


def _executor(study: Study, a):
  """The packing executor, or None (runner's LocalExecutor) with --no-pack or a trainer
  other than olmo_jax.train (a pack runs olmo_jax.train_pack)."""
  if a.no_pack or study.c.train_module != "olmo_jax.train":
    return None
  return packing.PackingExecutor(cells.make_scorer(study), workers=a.workers,
                                 pack_size=a.pack_size)


def _print_launch(study: Study, path: str, recipe: str) -> None:
  print(f"[study] target training config: {path}\n  python -m olmo_jax.train --config {path} "
        f"--workdir runs/{study.c.target}-{recipe}")
