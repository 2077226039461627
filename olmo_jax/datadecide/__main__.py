"""`python -m olmo_jax.datadecide`: run a DataDecide study, or report on a results table.

  python -m olmo_jax.datadecide --config configs/datadecide/demo.py --workdir runs/dd
      [--plan] [--launch] [--workers N] [--no-report] [--collect]
      [--executor slurm [--partition P] [--time T] [--gpus-per-task N] ...]
  python -m olmo_jax.datadecide status --config STUDY.py --workdir DIR
  python -m olmo_jax.datadecide report --results TABLE --target SIZE --output DIR
      [--headline TASK/METRIC] [--last-k K] [--recipe-map JSON] [--recipes recipes.json]
      [--target_metric NAME ...] [--ties half|datadecide] [--forms SETUPS]
      [--fit-runs datadecide|all] [--bootstrap N]
      [--allow-truncated]

Bad input (a missing file or column, an unknown size or recipe, a target absent from the
table) is reported in one line with exit code 2, before anything is computed or written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from olmo_jax import runtime
from olmo_jax.datadecide import TIES


def _report_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m olmo_jax.datadecide report",
                              description="Analyse a results table and write the report.")
  p.add_argument("--results", required=True,
                 help="results table (.parquet/.csv): ours or DataDecide's published layout")
  p.add_argument("--target", required=True, help="the size whose ranking is predicted, e.g. 1B")
  p.add_argument("--output", required=True, help="directory for report.md and the files")
  p.add_argument("--headline", default=None,
                 help="TASK/METRIC of the recommendation (default: the mean over tasks of "
                      "each task's OLMES primary metric, task 'macro', metric 'primary')")
  p.add_argument("--target_metric", "--target-metric", action="append", default=None,
                 dest="target_metric",
                 help="metric at the target that each proxy metric is scored against "
                      "(repeatable): a metric name, 'primary' (the task's OLMES primary "
                      "metric) or 'same' (the proxy metric itself); default: primary and same")
  p.add_argument("--ties", default="half", choices=TIES,
                 help="half: a target-tied pair is not counted, a tied prediction scores 1/2; "
                      "datadecide: every pair counts, a tied prediction scores 0")
  p.add_argument("--bootstrap", type=int, default=1000,
                 help="draws of the recommendation's confidence (whole proxy runs resampled, "
                      "plus the proxy-to-target error)")
  p.add_argument("--last-k", type=int, default=1,
                 help="score each run by the mean of its last K checkpoints (default 1: final)")
  p.add_argument("--recipes", action="append", default=[],
                 help="comma-separated recipes to keep, or a study's recipes.json (a path "
                      "ending in .json): the report's Recipes table (data and curation chain "
                      "of each recipe); may be given twice, once for each")
  p.add_argument("--sizes", default=None, help="comma-separated sizes to keep (target included)")
  p.add_argument("--recipe-map", default=None,
                 help='JSON {"display name": "recipe"} for published tables')
  p.add_argument("--fit-runs", default="datadecide", choices=("datadecide", "all"),
                 help="the runs the scaling laws fit on: datadecide (default): as DataDecide, "
                      "the default seed's runs of 150M-750M (every proxy size when the table "
                      "lacks them) and the variants without the largest one or two sizes "
                      "(no_750M, no_750M_no_530M); all: every proxy size and seed in one fit")
  p.add_argument("--forms", default="3p",
                 help="scaling-law setups, comma-separated: DataDecide's names (3_param-default, "
                      "3_param-helper_points, 3_param-step2=0.5, 3_param-helper_points-step2=0.5, "
                      "5_param-ai2, 5_param-1_step-ai2, 3_param-1_step, 2_param-default), the "
                      "aliases 3p and 5p, or 'all'")
  p.add_argument("--allow-truncated", action="store_true",
                 help="keep runs whose last step is short of their planned final step "
                      "(default: named in the warnings and left out)")
  return p


def _forms(a, scaling_lib) -> tuple[str, ...]:
  """The scaling-law setups --forms names (InputError on an unknown one)."""
  from olmo_jax.datadecide import results
  forms = tuple(f for f in a.forms.split(",") if f)
  forms = tuple(scaling_lib.SETUPS) if forms == ("all",) else forms
  bad = [f for f in forms if f not in scaling_lib.SETUPS and f not in scaling_lib.FORM_ALIASES]
  if bad:
    known = list(scaling_lib.FORM_ALIASES) + list(scaling_lib.SETUPS)
    raise results.InputError(f"--forms: unknown setup(s) {', '.join(bad)}; use "
                             f"{', '.join(known)} or all")
  return forms


def _write_report(a) -> dict:
  """Reads, filters and checks the table, then writes the report (InputError / ValueError on
  bad input, before anything is computed)."""
  from olmo_jax.datadecide import recipes as recipes_lib
  from olmo_jax.datadecide import report, results
  from olmo_jax.datadecide import scaling as scaling_lib
  from olmo_jax.datadecide.scores import DEFAULT_TARGET_METRICS
  if a.last_k < 1:
    raise results.InputError(f"--last-k {a.last_k} must be >= 1")
  if a.bootstrap < 1:
    raise results.InputError(f"--bootstrap {a.bootstrap} must be >= 1")
  forms = _forms(a, scaling_lib)
  target_metrics = tuple(a.target_metric or DEFAULT_TARGET_METRICS)
  try:
    rmap = json.loads(a.recipe_map) if a.recipe_map else None
  except json.JSONDecodeError as e:
    raise results.InputError(f"--recipe-map is not valid JSON ({e})") from None
  table = results.read_table(a.results, rmap)
  if not len(table):
    raise results.InputError(f"--results {a.results}: the table has no rows; nothing to "
                             f"analyse (did the study score any checkpoint?)")
  files = [v for v in a.recipes if v.endswith(".json")]
  lists = [v for v in a.recipes if not v.endswith(".json")]
  if len(files) > 1 or len(lists) > 1:
    raise results.InputError("--recipes: give at most one recipe list and one recipes.json")
  described = recipes_lib.read(files[0]) if files else None
  recipes = lists[0].split(",") if lists else None
  sizes_ = a.sizes.split(",") if a.sizes else None
  report.check_inputs(table, a.target, a.headline, recipes, sizes_, target_metrics)
  if recipes:
    table = table[table["recipe"].isin(recipes)]
  if sizes_:
    table = table[table["size"].isin(sizes_)]
  table, warned = results.drop_truncated(table, a.allow_truncated)
  report.check_inputs(table, a.target, a.headline)
  return report.write_report(table, a.target, a.output, last_k=a.last_k,
                             headline=a.headline, forms=forms, recipes=described,
                             target_metrics=target_metrics, ties=a.ties, n_boot=a.bootstrap,
                             fit_runs=a.fit_runs,
                             warnings=warned)


def report_main(argv) -> int:
  a = _report_parser().parse_args(argv)
  from olmo_jax.datadecide import results
  try:
    out = _write_report(a)
  except (results.InputError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  rec = out["recommendation"]
  if not rec.get("compared", True):
    print(f"warning: only one recipe ({rec['best_recipe']}) in the table: nothing was compared; "
          f"the recommendation is not a decision", file=sys.stderr)
  print(f"best recipe at {rec['decided_at_size']}: {rec['best_recipe']}"
        + (f" (margin {rec['margin']:.4g} over {rec['runner_up']})" if "runner_up" in rec else ""))
  print(f"report written to {a.output}/report.md ({len(rec['warnings'])} warning(s))")
  return 0


def main(argv=None) -> int:
  runtime.init()  # first, before JAX loads: a host without accelerators runs on its CPU
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "report":
    return report_main(_local_dirs(argv[1:], {"--output": (), "--results": None}))
  if argv and argv[0] == "status":
    from olmo_jax.datadecide import status
    return status.main(argv[1:])
  from olmo_jax import paths
  if _flag(argv, "--executor") == "slurm" and paths.is_remote(_flag(argv, "--workdir") or ""):
    print(f"error: --executor slurm: --workdir {_flag(argv, '--workdir')} is a bucket, which a "
          "study mirrors on the submitting machine only; give a directory every node sees (a "
          "shared filesystem, or the bucket mounted with gcsfuse on every node)", file=sys.stderr)
    return 2
  from olmo_jax.datadecide import study_command
  return study_command.main(_local_dirs(argv, {"--workdir": None}))


def _flag(argv: list[str], name: str) -> str | None:
  """The value of `name VALUE` or `name=VALUE` in argv (the last one), else None."""
  value = None
  for i, arg in enumerate(argv):
    if arg == name and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith(name + "="):
      value = arg.split("=", 1)[1]
  return value


def _local_dirs(argv: list[str], flags: dict[str, tuple | None]) -> list[str]:
  """argv with each gs:// value of `flags` replaced by a local mirror of it, uploaded every
  30 s and at exit (olmo_jax/paths.py). The study works on ordinary files (cells, cached
  scores, results, report), so a bucket workdir is mirrored whole: flags[name] None
  downloads everything there first (a resumed study skips its finished cells); () nothing.
  --results gs://...: the table is downloaded next to its mirror."""
  from olmo_jax import paths
  out = list(argv)
  for i, arg in enumerate(out):
    name, eq, value = arg.partition("=")
    if name not in flags:
      continue
    j = i if eq else i + 1
    value = value if eq else (out[j] if j < len(out) else "")
    if not paths.is_remote(value):
      continue
    try:  # shape, bucket and endpoint named in one line before anything is mirrored
      paths.check_bucket(value, name, write=name != "--results")
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      raise SystemExit(2) from None
    if name == "--results":  # a file: fetched into its directory's mirror
      local = os.path.join(paths.mirror(os.path.dirname(value), ()), os.path.basename(value))
      if paths.isfile(value):  # else read_table names the missing file
        paths.fs().get(paths._key(value), local)
    else:
      local = paths.mirror(value, flags[name])
      print(f"{name} {value}: working in its local mirror {local} (uploaded every "
            f"{paths.MIRROR_EVERY_S:.0f} s and at exit)", file=sys.stderr)
    out[j] = f"{name}={local}" if eq else local
  return out


if __name__ == "__main__":
  sys.exit(main())
