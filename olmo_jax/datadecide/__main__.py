"""`python -m olmo_jax.datadecide`: run a DataDecide study, or report on a results table.

  python -m olmo_jax.datadecide --config configs/datadecide/demo.py --workdir runs/dd
      [--plan] [--launch] [--workers N] [--no-report]
  python -m olmo_jax.datadecide report --results TABLE --target SIZE --output DIR
      [--headline TASK/METRIC] [--last-k K] [--recipe-map JSON] [--recipes recipes.json]
      [--allow-truncated]

Bad input (a missing file or column, an unknown size or recipe, a target absent from the
table) is reported in one line with exit code 2, before anything is computed or written.
"""

from __future__ import annotations

import argparse
import json
import sys


def report_main(argv) -> int:
  p = argparse.ArgumentParser(prog="python -m olmo_jax.datadecide report",
                              description="Analyse a results table and write the report.")
  p.add_argument("--results", required=True,
                 help="results table (.parquet/.csv): ours or DataDecide's published layout")
  p.add_argument("--target", required=True, help="the size whose ranking is predicted, e.g. 1B")
  p.add_argument("--output", required=True, help="directory for report.md and the files")
  p.add_argument("--headline", default=None,
                 help="TASK/METRIC of the recommendation (default: highest SNR at the largest "
                      "proxy size)")
  p.add_argument("--last-k", type=int, default=1,
                 help="score each run by the mean of its last K checkpoints (default 1: final)")
  p.add_argument("--recipes", action="append", default=[],
                 help="comma-separated recipes to keep, or a study's recipes.json (a path "
                      "ending in .json): the report's Recipes table (data and curation chain "
                      "of each recipe); may be given twice, once for each")
  p.add_argument("--sizes", default=None, help="comma-separated sizes to keep (target included)")
  p.add_argument("--recipe-map", default=None,
                 help='JSON {"display name": "recipe"} for published tables')
  p.add_argument("--forms", default="3p,5p", help="scaling-law forms to fit (3p, 5p)")
  p.add_argument("--allow-truncated", action="store_true",
                 help="keep runs whose last step is short of their planned final step "
                      "(default: named in the warnings and left out)")
  a = p.parse_args(argv)
  from olmo_jax.datadecide import recipes as recipes_lib
  from olmo_jax.datadecide import report, results
  try:
    if a.last_k < 1:
      raise results.InputError(f"--last-k {a.last_k} must be >= 1")
    forms = tuple(f for f in a.forms.split(",") if f)
    bad = [f for f in forms if f not in ("3p", "5p")]
    if bad:
      raise results.InputError(f"--forms: unknown form(s) {', '.join(bad)}; use 3p and/or 5p")
    try:
      rmap = json.loads(a.recipe_map) if a.recipe_map else None
    except json.JSONDecodeError as e:
      raise results.InputError(f"--recipe-map is not valid JSON ({e})") from None
    table = results.read_table(a.results, rmap)
    files = [v for v in a.recipes if v.endswith(".json")]
    lists = [v for v in a.recipes if not v.endswith(".json")]
    if len(files) > 1 or len(lists) > 1:
      raise results.InputError("--recipes: give at most one recipe list and one recipes.json")
    described = recipes_lib.read(files[0]) if files else None
    recipes = lists[0].split(",") if lists else None
    sizes_ = a.sizes.split(",") if a.sizes else None
    report.check_inputs(table, a.target, a.headline, recipes, sizes_)
    if recipes:
      table = table[table["recipe"].isin(recipes)]
    if sizes_:
      table = table[table["size"].isin(sizes_)]
    table, warned = results.drop_truncated(table, a.allow_truncated)
    report.check_inputs(table, a.target, a.headline)
    out = report.write_report(table, a.target, a.output, last_k=a.last_k,
                              headline=a.headline, forms=forms, recipes=described,
                              warnings=warned)
  except (results.InputError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  rec = out["recommendation"]
  print(f"best recipe at {rec['decided_at_size']}: {rec['best_recipe']}"
        + (f" (margin {rec['margin']:.4g} over {rec['runner_up']})" if "runner_up" in rec else ""))
  print(f"report written to {a.output}/report.md ({len(rec['warnings'])} warning(s))")
  return 0


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "report":
    return report_main(argv[1:])
  from olmo_jax.datadecide import study
  return study.main(argv)


if __name__ == "__main__":
  sys.exit(main())
