"""The DataDecide report: report.md with PNG figures, recommendation.json, decision_accuracy.csv.

`write_report(table, target, output)` runs the analysis (scores.py, decisions.py, noise.py,
scaling.py) on a results table and writes, under `output/`:
  report.md              tables (rankings, decision accuracy of each proxy metric against the
                         target's primary metric, scaling-law errors, SNR), the figures, the
                         recommendation and every warning of the analysis
  recommendation.json    best recipe on the headline (default: macro of the tasks' primary
                         metrics), margin over the runner-up, supporting metrics, a bootstrap
                         confidence over tasks and seeds with its method
  decision_accuracy.csv  size, task, metric, method, protocol, decision_accuracy,
                         compute_fraction (+ step, std, n_seeds, n_pairs, missing,
                         target_metric, compute, n_runs, n_target_ties, setup, errors)
  scaling_law.csv, rankings.csv, snr.csv, frontier.csv
  fig_scaling.png, fig_decision_accuracy.png, fig_rank_agreement.png
No JAX; matplotlib with the Agg backend.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from olmo_jax import paths
from olmo_jax.datadecide import decisions as decisions_lib
from olmo_jax.datadecide import figures, figures_scaling, markdown, recommend
from olmo_jax.datadecide import noise as noise_lib
from olmo_jax.datadecide import scores as scores_lib
from olmo_jax.datadecide.result import Analysis
from olmo_jax.datadecide.results import InputError
from olmo_jax.datadecide.scaling import scaling_law_decision_accuracy, scaling_law_predictions

DA_COLUMNS = ["size", "task", "metric", "method", "protocol", "decision_accuracy",
              "compute_fraction", "step", "std", "n_seeds", "n_pairs", "missing",
              "target_metric", "target_ceiling", "compute", "n_runs", "n_target_ties", "setup",
              "fit_sizes", "mean_abs_error", "mean_rel_error"]
DEFAULT_FORMS = ("3p",)  # DataDecide's 3_param setup, in its three size variants


def check_inputs(table: pd.DataFrame, target: str, headline: str | None = None,
                 recipes=None, sizes_=None, target_metrics=()) -> None:
  """Rejects a target size, recipe, size, headline or target metric the table does not hold
  (InputError)."""
  if not len(table):
    raise InputError("the results table has no rows (after --recipes / --sizes / truncated "
                     "runs are left out): nothing to analyse; check --results and the filters")
  if not np.isfinite(table["value"].to_numpy(np.float64)).any():
    raise InputError("every value of the results table is missing (NaN): nothing to analyse")
  present = scores_lib.size_order(table)
  if target not in present:
    raise InputError(f"--target {target}: size absent from the results table; sizes present: "
                     f"{', '.join(present)}")
  if len(present) < 2:
    raise InputError("the results table holds only the target size: add proxy sizes")
  for name, asked, have in (("recipe", recipes, set(table["recipe"])),
                            ("size", sizes_, set(present))):
    unknown = sorted(set(asked or ()) - have)
    if unknown:
      raise InputError(f"unknown {name}(s) {', '.join(unknown)}: the table has "
                       f"{', '.join(sorted(have))}")
  have = set(table["metric"])
  unknown = [m for m in target_metrics
             if m not in (scores_lib.TARGET_PRIMARY, scores_lib.TARGET_SAME) and m not in have]
  if unknown:
    raise InputError(f"--target_metric {', '.join(unknown)}: no such metric in the table; it "
                     f"has {', '.join(sorted(have))} (or use 'primary' / 'same')")
  macro_name = f"{scores_lib.MACRO_TASK}/{scores_lib.MACRO_METRIC}"
  if headline == macro_name and table["task"].nunique() < 2:
    raise InputError(f"--headline {headline}: the macro average needs two or more tasks; "
                     f"name a TASK/METRIC")
  if headline and headline != macro_name:
    task, _, metric = headline.partition("/")
    if not ((table["task"] == task) & (table["metric"] == metric)).any():
      raise InputError(f"--headline {headline}: no rows with task {task!r} and metric "
                       f"{metric!r}; write it as TASK/METRIC")


def drop_missing(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
  """The table without rows whose value is missing (NaN or infinite), and one warning per
  (recipe, size) that lost rows, naming how many."""
  bad = ~np.isfinite(table["value"].to_numpy(np.float64))
  if not bad.any():
    return table, []
  lost = table[bad].groupby(["recipe", "size"]).size()
  total = table.groupby(["recipe", "size"]).size()
  return table[~bad], [f"recipe {r} at size {z}: {n} of {total[(r, z)]} values are missing "
                       f"(NaN or infinite) and left out" for (r, z), n in lost.items()]


def analyse(table: pd.DataFrame, target: str, *, last_k: int = 1, headline: str | None = None,
            forms=DEFAULT_FORMS, noise_checkpoints: int = 5,
            target_metrics=scores_lib.DEFAULT_TARGET_METRICS, ties: str = "half",
            fit_runs: str = "datadecide") -> Analysis:
  """Every analysis of the report (an Analysis: DataFrames plus the warnings list).

  `table` of the result is the input plus the macro task's rows (every metric averaged over
  tasks); decision accuracy, rankings, SNR and the scaling laws all see the macro task.
  fit_runs: the runs the scaling laws fit on (analysis.fit_variants: 'datadecide' or 'all').
  """
  w: list[str] = []
  if table["recipe"].nunique() < 2:
    w.append(f"only one recipe ({table['recipe'].iloc[0]}): nothing was compared; the "
             f"'recommendation' is that recipe by default, not a decision")
  macro = scores_lib.macro_table(table, w) if table["task"].nunique() > 1 else table.iloc[0:0]
  full = pd.concat([table, macro], ignore_index=True) if len(macro) else table
  sizes_ = scores_lib.size_order(table)
  proxies = [s for s in sizes_ if s != target]
  single = decisions_lib.decision_accuracy(full, target, last_k=last_k, warnings=w,
                                           target_metrics=target_metrics, ties=ties)
  ckpt = decisions_lib.checkpoint_decision_accuracy(full, target, target_metrics=target_metrics,
                                                    ties=ties)
  finals = (table[table["size"] != target].groupby("size")["step"].max())
  ckpt = ckpt[ckpt["step"] < ckpt["size"].map(finals)] if len(ckpt) else ckpt
  preds = scaling_law_predictions(full, target, forms=forms, warnings=w, fit_runs=fit_runs)
  sl = (scaling_law_decision_accuracy(preds, full, target, warnings=w,
                                      target_metrics=target_metrics, ties=ties)
        if len(preds) else pd.DataFrame())
  ceiling = decisions_lib.target_ceiling(full, target, target_metrics, ties)
  da = pd.concat([single, ckpt, sl], ignore_index=True)
  if len(da):
    da = da.merge(ceiling[["task", "target_metric", "target_ceiling"]],
                  on=["task", "target_metric"], how="left")
  da = da[[c for c in DA_COLUMNS if c in da.columns]]
  snr = noise_lib.snr(full, noise_checkpoints=noise_checkpoints, warnings=w)
  task, metric = _headline(full, headline)
  ranks = scores_lib.rankings(full, last_k=last_k, warnings=w)
  same = da[da["target_metric"] == da["metric"]] if "target_metric" in da else da
  single_same = same[same["method"] == "single_scale"]
  return Analysis(
      target=target, sizes=sizes_, proxies=proxies, headline=(task, metric),
      decision_accuracy=same.reset_index(drop=True), decision_accuracy_all=da,
      frontier=decisions_lib.frontier(da[da["method"] == "single_scale"]),
      frontier_same=decisions_lib.frontier(single_same),
      scaling_law=preds[preds["status"] == "ok"] if len(preds) else preds,
      scaling_law_all=preds, scaling_law_da=sl, snr=snr, rankings=ranks,
      rank_agreement=decisions_lib.rank_agreement(full, task, metric, last_k), warnings=w,
      last_k=last_k,
      ties=ties, table=full, ceiling=ceiling, fit_runs=fit_runs)


def _headline(full: pd.DataFrame, headline: str | None) -> tuple[str, str]:
  """(task, metric) of the recommendation: the user's, else the macro average of the tasks'
  primary metrics, else the only task's primary metric (never chosen by SNR)."""
  if headline:
    task, _, metric = headline.partition("/")
    return task, metric
  if (full["task"] == scores_lib.MACRO_TASK).any():
    return scores_lib.MACRO_TASK, scores_lib.MACRO_METRIC
  task = sorted(full["task"].unique())[0]
  metrics = sorted(full.loc[full["task"] == task, "metric"].unique())
  return task, scores_lib.primary_metric(task, metrics) or metrics[0]


def write_report(table: pd.DataFrame, target: str, output: str, *, last_k: int = 1,
                 headline: str | None = None, forms=DEFAULT_FORMS, fit_runs: str = "datadecide",
                 noise_checkpoints: int = 5, title: str = "DataDecide report",
                 recipes: dict | None = None, target_metrics=scores_lib.DEFAULT_TARGET_METRICS,
                 ties: str = "half", n_boot: int = 1000,
                 warnings: list[str] | None = None) -> dict:
  """Analyses `table` against `target` and writes the report files into `output`.

  warnings: found before the analysis (e.g. truncated runs, results.drop_truncated), listed
  first among the report's warnings.
  recipes: {recipe: {"data": str, "curation": str}} (a study's recipes.json, recipes.py):
  the report's Recipes table; None: no table. target_metrics: 'primary', 'same' or metric
  names (analysis.decision_accuracy); ties: 'half' or 'datadecide'.
  """
  check_inputs(table, target, headline, target_metrics=target_metrics)
  table, missing = drop_missing(table)
  check_inputs(table, target, headline, target_metrics=target_metrics)
  res = analyse(table, target, last_k=last_k, headline=headline, forms=forms, fit_runs=fit_runs,
                noise_checkpoints=noise_checkpoints, target_metrics=target_metrics, ties=ties)
  res.warnings[:0] = list(warnings or ()) + missing
  rec = recommend.recommend(res, table, n_boot)
  os.makedirs(output, exist_ok=True)
  _atomic_csv(res.decision_accuracy_all, os.path.join(output, "decision_accuracy.csv"))
  for name, key in (("scaling_law", "scaling_law_all"), ("rankings", "rankings"),
                    ("snr", "snr"), ("frontier", "frontier")):
    _atomic_csv(getattr(res, key), os.path.join(output, f"{name}.csv"))
  out = lambda name: os.path.join(output, name)  # noqa: E731
  figs = {"scaling": figures_scaling.fig_scaling(res.table, res, out("fig_scaling.png")),
          "da": figures.fig_decision_accuracy(res, out("fig_decision_accuracy.png"))[0],
          "da_same": figures.fig_decision_accuracy(res, out("fig_decision_accuracy_same.png"),
                                                   against=scores_lib.TARGET_SAME)[0],
          "rank": figures.fig_rank_agreement(res, out("fig_rank_agreement.png"))}
  rec["warnings"] = res.warnings
  _atomic_text(json.dumps(rec, indent=2, default=_json_default) + "\n",
               os.path.join(output, "recommendation.json"))
  _atomic_text(markdown.render_markdown(table, res, rec, figs, title, recipes),
               os.path.join(output, "report.md"))
  return {"result": res, "recommendation": rec}


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  raise TypeError(type(o))


def _atomic_csv(df: pd.DataFrame, path: str) -> None:
  paths.write_atomic(path, df.to_csv(index=False))


def _atomic_text(text: str, path: str) -> None:
  paths.write_atomic(path, text)
