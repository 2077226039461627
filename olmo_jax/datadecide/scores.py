"""Scores of runs, targets and rankings; the macro task (defined in the
package docstring)."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from eval.metrics import higher_is_better  # the one home of each metric's direction
from eval.tasks import OLMES_PRIMARY  # pure Python; no model import

RUN = ["recipe", "size", "seed"]
CELL = ["size", "task", "metric"]


def _warn(warnings: list | None, msg: str) -> None:
  if warnings is not None and msg not in warnings:
    warnings.append(msg)


def size_order(table: pd.DataFrame) -> list[str]:
  """The table's sizes, smallest compute first (by each size's largest compute)."""
  c = table.groupby("size")["compute"].max().sort_values(kind="stable")
  return list(c.index)


# ---------------------------------------------------------------------------------------------
# Scores per run


def run_scores(table: pd.DataFrame, last_k: int = 1, warnings: list | None = None
               ) -> pd.DataFrame:
  """One score per (recipe, size, seed, task, metric): final step, or mean of the last k.

  Columns: recipe, size, seed, task, metric, value, step (the run's final step), compute,
  tokens (at the final step).
  """
  if last_k < 1:
    raise ValueError(f"last_k={last_k} must be >= 1")
  t = table
  final = t.groupby(RUN, as_index=False)["step"].max().rename(columns={"step": "final_step"})
  steps = t[RUN + ["step"]].drop_duplicates()
  steps["pos"] = steps.groupby(RUN)["step"].rank(ascending=False, method="first")
  keep = steps.loc[steps["pos"] <= last_k, RUN + ["step"]]
  sub = t.merge(keep, on=RUN + ["step"])
  sub = sub.merge(final, on=RUN)
  at_final = sub[sub["step"] == sub["final_step"]]
  have_final = at_final[RUN + ["task", "metric"]].drop_duplicates()
  out = sub.groupby(RUN + ["task", "metric"], as_index=False).agg(
      value=("value", "mean"), step=("final_step", "first"))
  out = out.merge(have_final.assign(_ok=True), on=RUN + ["task", "metric"], how="inner")
  lost = (t[RUN + ["task", "metric"]].drop_duplicates().merge(final, on=RUN)
          .merge(have_final.assign(_ok=True), on=RUN + ["task", "metric"], how="left"))
  for r in lost[lost["_ok"].isna()].itertuples(index=False):
    _warn(warnings, f"run {r.recipe}/{r.size}/seed {r.seed} has no {r.task}/{r.metric} value at "
                    f"its final step {r.final_step}: left out of that cell")
  out = out.drop(columns="_ok")
  cost = at_final.groupby(RUN, as_index=False).agg(compute=("compute", "max"),
                                                   tokens=("tokens", "max"))
  return out.merge(cost, on=RUN, how="left").reset_index(drop=True)


def target_scores(table: pd.DataFrame, target: str, warnings: list | None = None
                  ) -> pd.DataFrame:
  """Target score per (recipe, task, metric): mean over the target seeds at their final step."""
  t = table[table["size"] == target]
  if t.empty:
    raise ValueError(f"target size {target!r} is not in the results table; sizes present: "
                     f"{', '.join(size_order(table))}")
  s = run_scores(t, 1, warnings)
  return s.groupby(["recipe", "task", "metric"], as_index=False).agg(
      value=("value", "mean"), n_seeds=("seed", "nunique"), compute=("compute", "mean"))


def _target_compute(table: pd.DataFrame, target: str) -> float:
  t = table[table["size"] == target]
  final = t.groupby(RUN)["step"].transform("max")
  return float(t.loc[t["step"] == final, "compute"].mean())


MACRO_TASK, MACRO_METRIC = "macro", "primary"


def macro_table(table: pd.DataFrame, warnings: list | None = None) -> pd.DataFrame:
  """Rows of the macro task (DataDecide's aggregate: the mean over tasks before ranking).

  Per (recipe, size, seed, step): metric 'primary', the mean over tasks of each task's primary
  metric; and for every metric that every task has (bpb, correct_prob, ...), the mean over
  tasks of that metric, under its own name. Only checkpoints with every task count. Tasks
  without a primary metric are left out of 'primary'; empty when no task has one.
  """
  prim = {t: primary_metric(t, g["metric"].unique(), warnings)
          for t, g in table.groupby("task")}
  keep = [(t, m) for t, m in prim.items() if m is not None]
  if not keep:
    return table.iloc[0:0]
  parts = [_task_mean(table, keep, MACRO_METRIC)]
  n_tasks = table["task"].nunique()
  per_metric = table.groupby("metric")["task"].nunique()
  for m in sorted(per_metric[per_metric == n_tasks].index):
    parts.append(_task_mean(table, [(t, m) for t in sorted(table["task"].unique())], m))
  return pd.concat(parts, ignore_index=True)[list(table.columns)]


def _task_mean(table: pd.DataFrame, cells: list[tuple[str, str]], name: str) -> pd.DataFrame:
  """The mean over `cells` (task, metric) per run and step, as macro rows named `name`."""
  sel = pd.concat([table[(table["task"] == t) & (table["metric"] == m)] for t, m in cells])
  g = sel.groupby(RUN + ["step"], as_index=False).agg(
      value=("value", "mean"), n=("task", "nunique"), tokens=("tokens", "max"),
      compute=("compute", "max"))
  g = g[g["n"] == len(cells)].drop(columns="n")
  return g.assign(task=MACRO_TASK, metric=name)


# ---------------------------------------------------------------------------------------------
# Rankings


def rankings(table: pd.DataFrame, last_k: int = 1, warnings: list | None = None
             ) -> pd.DataFrame:
  """Single-scale ranking per (size, task, metric): recipes by seed mean, best first.

  Columns: size, task, metric, rank (1 = best, ties share the best rank), recipe, mean, std
  (population, over seeds), n_seeds, compute (one run, final step).
  """
  s = run_scores(table, last_k, warnings)
  g = s.groupby(CELL + ["recipe"], as_index=False).agg(
      mean=("value", "mean"), std=("value", lambda v: float(np.std(v))),
      n_seeds=("seed", "nunique"), compute=("compute", "mean"))
  sign = np.where([higher_is_better(m) for m in g["metric"]], -1.0, 1.0)
  g["_key"] = sign * g["mean"]
  g["rank"] = g.groupby(CELL)["_key"].rank(method="min").astype(int)
  g = g.sort_values(CELL + ["rank", "recipe"]).drop(columns="_key")
  _report_missing(g, table, warnings)
  return g[CELL + ["rank", "recipe", "mean", "std", "n_seeds", "compute"]].reset_index(drop=True)


def _report_missing(g: pd.DataFrame, table: pd.DataFrame, warnings: list | None) -> None:
  """Warns about recipes absent from a (size, task, metric) cell that others have."""
  if warnings is None:
    return
  recipes = set(table["recipe"].unique())
  for (size, task, metric), sub in g.groupby(CELL):
    missing = sorted(recipes - set(sub["recipe"]))
    if missing:
      _warn(warnings, f"size {size}, {task}/{metric}: no score for recipe(s) "
                      f"{', '.join(missing)}; pairs with them are not counted there")


PROTOCOLS = ("per_seed", "seed_mean")
TARGET_PRIMARY, TARGET_SAME = "primary", "same"
DEFAULT_TARGET_METRICS = (TARGET_PRIMARY, TARGET_SAME)


def primary_metric(task: str, metrics: Iterable[str] = (), warnings: list | None = None
                   ) -> str | None:
  """The task's OLMES primary metric (eval/tasks.py), else its accuracy-like metric, or None.

  metrics: the metrics the table holds for the task; a primary it lacks is not returned. The
  macro task's primary is 'primary' (the mean of the tasks' primaries). A fallback to an
  accuracy-like metric is named in `warnings`.
  """
  have = list(metrics)
  if task == MACRO_TASK:
    return MACRO_METRIC if not have or MACRO_METRIC in have else None
  family = str(task).split(":")[0]
  m = OLMES_PRIMARY.get(family)
  if m is not None and (not have or m in have):
    return m
  for cand in ("acc_raw", "accuracy", "acc"):
    if cand in have:
      why = (f"its OLMES primary metric {m} is not in the table" if m else
             "it has no OLMES primary metric")
      _warn(warnings, f"{task}: {why}; 'primary' means {cand} there")
      return cand
  return None


def resolve_target_metrics(table: pd.DataFrame, target_metrics=DEFAULT_TARGET_METRICS,
                           warnings: list | None = None) -> dict[tuple[str, str], list[str]]:
  """{(task, proxy metric): [target metrics]}: 'primary' and 'same' resolved, names kept.

  A named target metric a task lacks is skipped for that task (with a warning).
  """
  out = {}
  for task, g in table.groupby("task"):
    have = sorted(g["metric"].unique())
    prim = primary_metric(task, have, warnings)
    for tm in target_metrics:
      if tm not in (TARGET_PRIMARY, TARGET_SAME) and tm not in have:
        _warn(warnings, f"{task} has no {tm}: not a target metric there")
    for m in have:
      tms = []
      for tm in target_metrics:
        name = prim if tm == TARGET_PRIMARY else m if tm == TARGET_SAME else tm
        if name is not None and name in have and name not in tms:
          tms.append(name)
      out[(task, m)] = tms
  return out


def oriented(values: pd.Series, metric: str) -> pd.Series:
  """Scores with higher = better (losses, bpb, ... negated), for cross-metric comparisons."""
  return values if higher_is_better(metric) else -values
