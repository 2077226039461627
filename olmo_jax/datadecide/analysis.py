"""DataDecide analysis: pure functions over a results table (see results.py). No JAX.

Definitions (REFERENCE.md section 5), with the choices this module makes explicit:

- A run is one (recipe, size, seed). Its final step is the largest step it has any row for.
  Its single-scale score for (task, metric) is the value at that final step, or with
  `last_k > 1` the mean over its last k checkpoints (its k largest steps). A run without a
  value at its final step for some (task, metric) is left out of that cell and reported.
- Target scores: at the target size, each recipe's mean over the target seeds of the value at
  each seed's final step.
- Decision accuracy: over every pair of recipes present both in the prediction and at the
  target, the fraction ordered as at the target. The prediction ranks by a proxy metric; the
  target by a target metric: the task's OLMES primary metric ('primary'), the proxy metric
  itself ('same'), or any named metric (DataDecide's cross-metric view: e.g. correct_prob at
  60M against acc_per_char at 1B). Scores are oriented so that higher is better first.
  Ties, `ties='half'` (default): a pair tied at the target has no order to recover and is
  left out (`n_target_ties`); a pair tied in the prediction counts 1/2 (the expected score of
  breaking the tie at random). `ties='datadecide'` (DataDecide's single_scale evaluator,
  binary_accuracy): every pair counts; a tied (abstaining) prediction scores 0 and a pair
  tied at the target scores 1 whenever the prediction decides.
- Protocols: `per_seed` treats each proxy seed as one prediction attempt (mean, population
  std, min, max over seeds; a recipe lacking that seed drops out of that attempt, reported);
  `seed_mean` ranks recipes by their mean over the proxy seeds.
- Rankings order recipes by their seed mean (best first: higher is better unless the metric
  is a loss, bpb or perplexity); tied recipes share the best rank of the tie ("min" ranking).
- Recipes present at some sizes but missing at another, or missing for a (task, metric), are
  never dropped silently: every function appends a line to `warnings` (a list) when given one,
  and the tables carry `n_recipes` and `missing`.
- compute: the FLOPs (6 N tokens, up to the scored step) one prediction of the protocol
  spent: one run for `per_seed`, every seed's run for `seed_mean` (n_runs x one run), every
  proxy run a scaling law was fitted on (all seeds of all proxy sizes of a recipe).
  compute_fraction = compute / one target run's compute at its final step.
- Scaling laws, as DataDecide fits them (SETUPS: its 8 setup names): step 1 fits each
  recipe's loss (a lower-is-better metric, bpb first) against compute, 3-parameter
  L(C) = A / C^alpha + E, 2-parameter A / C^alpha, or 5-parameter A / N^alpha + B / D^beta + E,
  on one point per proxy size: each run's mean over its last 10% of checkpoints by count
  (index min(n-1, ceil(0.9 n)) on), then the mean over seeds (DataDecide used one seed), at
  the final step's compute; Huber loss (delta 1e-3) on log residuals, L-BFGS-B. Step 2 fits
  each recipe's sigmoid Acc(L) = a / (1 + exp(-k (L - L0))) + b by least squares on its runs'
  last 90% (or 50%) of checkpoints by count (index ceil(0.1 n) on, seed means), with the
  helper point (L = 0, Acc = 1) when asked. 1-step setups fit sigmoid(law) to the metric
  directly. A fit with fewer points than parameters is not made: status 'under-determined',
  left out of decision accuracy. Predictions within TIE_RTOL (relative) are a tie.
- Signal-to-noise at (size, task, metric) (Heineman et al. 2025, without the trend):
  signal = (max - min) / |mean| of the recipes' seed-mean final scores; noise = run-to-run
  variation over the same |mean|: the pooled std of the final scores over seeds where recipes
  have >= 2 seeds, else the late checkpoints' jitter once the learning curve all runs share
  (the mean over runs at each step) and each run's offset are removed; SNR = signal / noise.
- The macro task ('macro', metric 'primary'): per run and step, the mean over tasks of each
  task's primary metric; the report's default headline.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Iterable

import numpy as np
import pandas as pd
import threadpoolctl
from scipy import optimize

from eval.metrics import higher_is_better  # the one home of each metric's direction

RUN = ["recipe", "size", "seed"]
CELL = ["size", "task", "metric"]
HUBER_DELTA = 1e-3


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


# ---------------------------------------------------------------------------------------------
# Pairwise agreement


TIES = ("half", "datadecide")


def pairwise_agreement(pred: pd.Series, target: pd.Series, ties: str = "half",
                       pred_rtol: float = 0.0) -> tuple[float, int, int]:
  """(decision accuracy, pairs counted, pairs tied at the target) of two recipe -> score maps.

  Scores are oriented (higher = better) by the caller. Only recipes with a finite score in
  both count. Two predictions within `pred_rtol` x the larger magnitude are a tie (abstain).
  ties='half': a target-tied pair is not counted, an abstaining prediction scores 1/2.
  ties='datadecide': every pair counts; an abstaining prediction scores 0 and a target-tied
  pair scores 1 when the prediction decides (DataDecide's single_scale binary_accuracy).
  """
  if ties not in TIES:
    raise ValueError(f"ties={ties!r} is unknown; choose one of {', '.join(TIES)}")
  # Plain dicts: this runs once per (size, step, task, metric, seed), pandas indexing is slow.
  pm = {k: v for k, v in zip(pred.index, pred.to_numpy(np.float64)) if not np.isnan(v)}
  tm = {k: v for k, v in zip(target.index, target.to_numpy(np.float64)) if not np.isnan(v)}
  common = sorted(pm.keys() & tm.keys())
  if len(common) < 2:
    return float("nan"), 0, 0
  p = np.array([pm[k] for k in common])
  t = np.array([tm[k] for k in common])
  iu = np.triu_indices(len(common), 1)
  diff = (p[:, None] - p[None, :])[iu]
  scale = np.maximum(np.abs(p[:, None]), np.abs(p[None, :]))[iu]
  dp = np.where(np.abs(diff) <= pred_rtol * scale, 0.0, np.sign(diff))
  dt = np.sign(t[:, None] - t[None, :])[iu]
  tied = dt == 0
  if ties == "datadecide":
    score = np.where(dp == 0, 0.0, np.where(tied, 1.0, (dp == dt).astype(np.float64)))
    return float(score.mean()), int(dp.size), int(tied.sum())
  n = int((~tied).sum())
  if n == 0:
    return float("nan"), 0, int(tied.sum())
  score = np.where(dp == 0, 0.5, (dp == dt).astype(np.float64))[~tied].sum()
  return float(score / n), n, int(tied.sum())


# ---------------------------------------------------------------------------------------------
# Macro average and recommendation confidence

MACRO_TASK, MACRO_METRIC = "macro", "primary"


def macro_table(table: pd.DataFrame) -> pd.DataFrame:
  """Rows of the macro average: per (recipe, size, seed, step), the mean over tasks of each
  task's primary metric (task 'macro', metric 'primary'); only checkpoints with every task.

  Tasks without a primary metric (primary_metric is None) are left out; empty when none has.
  """
  prim = {t: primary_metric(t, g["metric"].unique()) for t, g in table.groupby("task")}
  keep = [(t, m) for t, m in prim.items() if m is not None]
  if not keep:
    return table.iloc[0:0]
  sel = pd.concat([table[(table["task"] == t) & (table["metric"] == m)] for t, m in keep])
  g = sel.groupby(RUN + ["step"], as_index=False).agg(
      value=("value", "mean"), n=("task", "nunique"), tokens=("tokens", "max"),
      compute=("compute", "max"))
  g = g[g["n"] == len(keep)].drop(columns="n")
  return g.assign(task=MACRO_TASK, metric=MACRO_METRIC)[list(table.columns)]


def bootstrap_best(scores: pd.DataFrame, best: str, higher: bool, n_boot: int = 1000,
                   seed: int = 0) -> dict:
  """How often `best` stays best when seeds and tasks are resampled (a bootstrap).

  scores: run scores with recipe, seed, task, value (one size, each task's headline metric).
  Each draw resamples the tasks with replacement, then each recipe's seeds with replacement
  (per task), and ranks recipes by the mean over drawn tasks of their drawn seeds' mean.
  Returns {confidence (share of draws where `best` wins, ties shared), n_boot, n_tasks,
  n_seeds (most per recipe), method}.
  """
  rng = np.random.default_rng(seed)
  tasks = sorted(scores["task"].unique())
  recipes = sorted(scores["recipe"].unique())
  vals = {(t, r): g["value"].to_numpy(np.float64)
          for (t, r), g in scores.groupby(["task", "recipe"])}
  n_seeds = max(len(v) for v in vals.values())
  wins = 0.0
  for _ in range(n_boot):
    drawn = rng.choice(len(tasks), len(tasks), replace=True)
    total = {r: 0.0 for r in recipes}
    for i in drawn:
      for r in recipes:
        v = vals.get((tasks[i], r))
        total[r] += np.nan if v is None else float(rng.choice(v, len(v)).mean())
    key = {r: (total[r] if higher else -total[r]) for r in recipes}
    top = max(key.values())
    winners = [r for r, k in key.items() if k == top]
    wins += (1.0 / len(winners)) if best in winners else 0.0
  return {"confidence": wins / n_boot, "n_boot": n_boot, "n_tasks": len(tasks),
          "n_seeds": n_seeds,
          "method": (f"bootstrap over tasks and seeds: {n_boot} draws; each resamples the "
                     f"{len(tasks)} task(s) with replacement, then each recipe's seeds with "
                     f"replacement, and ranks recipes by the mean over drawn tasks of their "
                     f"drawn seeds' mean; confidence = share of draws where the recommended "
                     f"recipe is best (ties shared)")}


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


# ---------------------------------------------------------------------------------------------
# Decision accuracy


PROTOCOLS = ("per_seed", "seed_mean")
TARGET_PRIMARY, TARGET_SAME = "primary", "same"
DEFAULT_TARGET_METRICS = (TARGET_PRIMARY, TARGET_SAME)


def primary_metric(task: str, metrics: Iterable[str] = ()) -> str | None:
  """The task's OLMES primary metric (eval/tasks.py), else its accuracy-like metric, or None.

  metrics: the metrics the table holds for the task; a primary it lacks is not returned.
  """
  from eval.tasks import OLMES_PRIMARY  # pure Python; no model import
  have = list(metrics)
  family = str(task).split(":")[0]
  m = OLMES_PRIMARY.get(family)
  if m is not None and (not have or m in have):
    return m
  for cand in ("acc_raw", "accuracy", "acc"):
    if cand in have:
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
    prim = primary_metric(task, have)
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


def _predictions(scores: pd.DataFrame, protocol: str) -> Iterable[tuple[object, pd.Series]]:
  """(attempt label, recipe -> score) per prediction attempt of one cell's run scores."""
  if protocol == "seed_mean":
    yield "mean", scores.groupby("recipe")["value"].mean()
  elif protocol == "per_seed":
    for seed, sub in scores.groupby("seed"):
      yield seed, sub.set_index("recipe")["value"]
  else:
    raise ValueError(f"protocol={protocol!r} is unknown; choose one of {', '.join(PROTOCOLS)}")


def _accuracy_row(scores: pd.DataFrame, tgt: pd.Series, protocol: str,
                  warnings: list | None, where: str, metric: str | None = None,
                  ties: str = "half", pred_rtol: float = 0.0) -> dict:
  """Decision accuracy of one cell's run scores against the target (one protocol).

  tgt: recipe -> target score, already oriented (higher = better); metric: the proxy metric
  (its direction orients the prediction; None: already oriented).
  """
  all_recipes = set(tgt.dropna().index)
  accs, pairs, ties_n, missing = [], [], [], set()
  for label, pred in _predictions(scores, protocol):
    lost = all_recipes - set(pred.dropna().index)
    if lost:
      missing |= lost
      what = "" if protocol == "seed_mean" else f" (seed {label})"
      _warn(warnings, f"{where}{what}: recipe(s) {', '.join(sorted(lost))} have a target score "
                      f"but no prediction; their pairs are not counted")
    if metric is not None:
      pred = oriented(pred, metric)
    acc, n, nt = pairwise_agreement(pred, tgt, ties, pred_rtol)
    if n:
      accs.append(acc)
      pairs.append(n)
      ties_n.append(nt)
  a = np.asarray(accs, np.float64)
  return {
      "protocol": protocol,
      "decision_accuracy": float(a.mean()) if a.size else float("nan"),
      "std": float(a.std()) if a.size else float("nan"),
      "min": float(a.min()) if a.size else float("nan"),
      "max": float(a.max()) if a.size else float("nan"),
      "n_seeds": int(a.size), "n_pairs": int(max(pairs)) if pairs else 0,
      "n_target_ties": int(max(ties_n)) if ties_n else 0,
      "missing": ",".join(sorted(missing)),
  }


def _spent(cell: pd.DataFrame, protocol: str) -> tuple[float, int]:
  """(FLOPs one prediction of the protocol spent, runs per prediction) of a cell's scores.

  per_seed: one run; seed_mean: every seed's run (n_seeds x one run's compute).
  """
  per_run = cell.groupby(["recipe", "seed"])["compute"].max()
  one = float(per_run.mean())
  runs = 1 if protocol == "per_seed" else int(cell["seed"].nunique())
  return one * runs, runs


def _cell_rows(cell: pd.DataFrame, size, task, metric, step, targets: dict,
               target_metrics: list[str], protocols, c_target: float, warnings,
               ties: str) -> list[dict]:
  """Decision-accuracy rows of one (size, task, metric, step) cell: target metric x protocol."""
  rows = []
  for tm in target_metrics:
    t = targets.get((task, tm))
    if t is None:
      _warn(warnings, f"{task}/{tm} has no target score: not evaluated")
      continue
    t = oriented(t, tm)
    for protocol in protocols:
      where = f"size {size}, {task}/{metric}" + (f" vs {tm}" if tm != metric else "")
      row = _accuracy_row(cell, t, protocol, warnings, where, metric, ties)
      compute, runs = _spent(cell, protocol)
      rows.append({"size": size, "task": task, "metric": metric, "target_metric": tm,
                   "method": "single_scale", **row, "step": step, "n_runs": runs,
                   "compute": compute, "compute_fraction": compute / c_target})
  return rows


def decision_accuracy(table: pd.DataFrame, target: str, *, protocols=PROTOCOLS,
                      last_k: int = 1, warnings: list | None = None,
                      target_metrics=DEFAULT_TARGET_METRICS, ties: str = "half"
                      ) -> pd.DataFrame:
  """Single-scale decision accuracy of every proxy size's final checkpoints vs the target.

  Every proxy metric is scored against each of `target_metrics` ('primary': the task's OLMES
  primary metric; 'same': the proxy metric itself; or a metric name).
  Columns: size, task, metric, target_metric, method ('single_scale'), protocol,
  decision_accuracy, std, min, max, n_seeds (prediction attempts), n_pairs, n_target_ties,
  missing, step ('final'), n_runs (runs per attempt), compute (FLOPs the protocol spent per
  attempt), compute_fraction (compute / one target run).
  """
  tgt = target_scores(table, target, warnings)
  c_target = _target_compute(table, target)
  proxy = table[table["size"] != target]
  scores = run_scores(proxy, last_k, warnings)
  tms = resolve_target_metrics(table, target_metrics, warnings)
  targets = _target_map(tgt)
  rows = []
  for (size, task, metric), cell in scores.groupby(CELL):
    rows += _cell_rows(cell, size, task, metric, "final", targets, tms.get((task, metric), []),
                       protocols, c_target, warnings, ties)
  return _sorted(pd.DataFrame(rows), table)


def _target_map(tgt: pd.DataFrame) -> dict:
  """{(task, metric): recipe -> target score} of target_scores' table."""
  return {k: g.set_index("recipe")["value"] for k, g in tgt.groupby(["task", "metric"])}


def checkpoint_decision_accuracy(table: pd.DataFrame, target: str, *, protocols=PROTOCOLS,
                                 warnings: list | None = None,
                                 target_metrics=DEFAULT_TARGET_METRICS, ties: str = "half"
                                 ) -> pd.DataFrame:
  """Decision accuracy of every proxy checkpoint step (for the compute frontier).

  Same columns as decision_accuracy, with `step` the checkpoint step; each step scores the
  runs that have it, and its compute is theirs up to that step.
  """
  tgt = target_scores(table, target, warnings)
  c_target = _target_compute(table, target)
  proxy = table[table["size"] != target]
  tms = resolve_target_metrics(table, target_metrics)
  targets = _target_map(tgt)
  rows = []
  for (size, task, metric, step), cell in proxy.groupby(CELL + ["step"]):
    rows += _cell_rows(cell, size, task, metric, int(step), targets,
                       tms.get((task, metric), []), protocols, c_target, None, ties)
  return _sorted(pd.DataFrame(rows), table)


def _sorted(df: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
  if df.empty:
    return df
  order = {s: i for i, s in enumerate(size_order(table))}
  df = df.assign(_o=df["size"].map(order))
  keys = ["task", "metric"]
  if "target_metric" in df:  # the same-metric rows first, then the other targets
    df = df.assign(_cross=df["target_metric"] != df["metric"])
    keys += ["_cross", "target_metric"]
  return df.sort_values(keys + ["protocol", "compute_fraction", "_o"], kind="stable").drop(
      columns=["_o", "_cross"], errors="ignore").reset_index(drop=True)


def frontier(points: pd.DataFrame) -> pd.DataFrame:
  """The compute vs decision-accuracy frontier of each (task, metric, method, protocol).

  A point is on the frontier when no point of its group at the same or lower compute_fraction
  has a higher decision accuracy (the upper-left staircase).
  """
  keys = [k for k in ("task", "metric", "target_metric", "method", "protocol")
          if k in points.columns]
  out = []
  for _, g in points.dropna(subset=["decision_accuracy"]).groupby(keys):
    g = g.sort_values(["compute_fraction", "decision_accuracy"], ascending=[True, False])
    best = -np.inf
    for _, r in g.iterrows():
      if r["decision_accuracy"] > best:
        out.append(r)
        best = r["decision_accuracy"]
  return pd.DataFrame(out).reset_index(drop=True)


def rank_agreement(table: pd.DataFrame, task: str, metric: str, last_k: int = 1
                   ) -> pd.DataFrame:
  """Pairwise order agreement between the seed-mean rankings of every two sizes.

  A square DataFrame (sizes x sizes, smallest first) of decision accuracies.
  """
  s = run_scores(table[(table["task"] == task) & (table["metric"] == metric)], last_k)
  means = s.groupby(["size", "recipe"])["value"].mean()
  order = [z for z in size_order(table) if z in means.index.get_level_values(0)]
  m = pd.DataFrame(np.nan, index=order, columns=order)
  for a in order:
    for b in order:
      m.loc[a, b] = pairwise_agreement(means.loc[a], means.loc[b])[0]
  return m


# ---------------------------------------------------------------------------------------------
# Signal to noise


def _checkpoint_noise(table: pd.DataFrame, noise_checkpoints: int) -> pd.DataFrame:
  """Late-checkpoint jitter per (size, task, metric), the common learning curve removed.

  Over each run's last `noise_checkpoints` steps: residual = value - the mean over every run
  of the cell at that step (the learning curve all recipes share), minus the run's mean
  residual (the recipe's offset); pooled std sqrt(sum r^2 / sum (k - 1)). Columns: size, task,
  metric, noise_checkpoint (absolute), n_checkpoints.
  """
  t = table[RUN + ["task", "metric", "step", "value"]].copy()
  t["pos"] = t.groupby(RUN + ["task", "metric"])["step"].rank(ascending=False, method="first")
  t = t[t["pos"] <= noise_checkpoints]
  t["r"] = t["value"] - t.groupby(CELL + ["step"])["value"].transform("mean")
  t["r"] = t["r"] - t.groupby(RUN + ["task", "metric"])["r"].transform("mean")
  per_run = t.assign(r2=t["r"] ** 2).groupby(RUN + ["task", "metric"]).agg(
      ss=("r2", "sum"), k=("r2", "size")).reset_index()
  per_run = per_run[per_run["k"] > 1]
  g = per_run.groupby(CELL).agg(ss=("ss", "sum"), k=("k", "sum"), runs=("k", "size"))
  out = pd.DataFrame({"noise_checkpoint": np.sqrt(g["ss"] / (g["k"] - g["runs"]))})
  out["n_checkpoints"] = noise_checkpoints
  return out.reset_index()


def snr(table: pd.DataFrame, noise_checkpoints: int = 5, warnings: list | None = None
        ) -> pd.DataFrame:
  """Signal, noise and SNR per (size, task, metric) as Heineman et al. (2025), without trend.

  signal = (max - min) / |mean| of the recipes' seed-mean final scores; noise = run-to-run
  variation relative to the same mean: the pooled sample std of the final scores over seeds
  (recipes with >= 2 seeds), else the late-checkpoint jitter of _checkpoint_noise.
  Columns: size, task, metric, snr, signal, noise, noise_source ('seeds' | 'checkpoints'),
  noise_seed, noise_checkpoint (both relative to |mean|; NaN where undefined), n_recipes,
  n_seeds (most seeds of a recipe), n_checkpoints.
  """
  s = run_scores(table, 1, warnings)
  ck = _checkpoint_noise(table, noise_checkpoints).set_index(CELL)
  rows = []
  for (size, task, metric), g in s.groupby(CELL):
    per = g.groupby("recipe")["value"]
    m = per.mean().to_numpy()
    mean = float(np.mean(m))
    rel = abs(mean) if mean != 0 else np.nan
    signal = float((m.max() - m.min()) / rel) if len(m) > 1 else np.nan
    var, dof = per.var(ddof=1), per.count() - 1
    seed_noise = (float(np.sqrt((var[dof > 0] * dof[dof > 0]).sum() / dof[dof > 0].sum())) / rel
                  if (dof > 0).any() else np.nan)
    ck_noise = (float(ck.loc[(size, task, metric), "noise_checkpoint"]) / rel
                if (size, task, metric) in ck.index else np.nan)
    noise, source = (seed_noise, "seeds") if not np.isnan(seed_noise) else (ck_noise,
                                                                            "checkpoints")
    if np.isnan(noise):
      _warn(warnings, f"size {size}, {task}/{metric}: one seed and fewer than 2 checkpoints "
                      f"per run: noise (and SNR) undefined")
    ratio = (np.nan if np.isnan(signal) or np.isnan(noise)
             else signal / noise if noise > 0 else (np.inf if signal > 0 else np.nan))
    rows.append({"size": size, "task": task, "metric": metric, "snr": ratio, "signal": signal,
                 "noise": noise, "noise_source": source, "noise_seed": seed_noise,
                 "noise_checkpoint": ck_noise, "n_recipes": len(m),
                 "n_seeds": int(per.count().max()), "n_checkpoints": noise_checkpoints})
  return _by_size(pd.DataFrame(rows), table)


def _by_size(df: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
  if df.empty:
    return df
  order = {s: i for i, s in enumerate(size_order(table))}
  return (df.assign(_o=df["size"].map(order)).sort_values(["task", "metric", "_o"])
          .drop(columns="_o").reset_index(drop=True))


# ---------------------------------------------------------------------------------------------
# Scaling-law fits


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
  """Huber loss of residuals r (quadratic inside delta, linear outside)."""
  a = np.abs(r)
  return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _fit(model, y: np.ndarray, starts: list[np.ndarray], bounds, delta: float,
         log_residuals: bool) -> tuple[np.ndarray, float]:
  """Minimises sum Huber(residual) with L-BFGS-B from each start; the best result.

  `model(theta)` returns (prediction [n], d prediction / d theta [n, p]).
  """
  y = np.asarray(y, np.float64)
  ly = np.log(y) if log_residuals else None

  def objective(theta):
    pred, jac = model(theta)
    if log_residuals:
      if np.any(pred <= 0):
        return 1e30, np.zeros_like(theta)
      r = np.log(pred) - ly
      dr = jac / pred[:, None]
    else:
      r, dr = pred - y, jac
    return float(huber(r, delta).sum()), np.clip(r, -delta, delta) @ dr

  best, best_f = None, np.inf
  # L-BFGS-B's BLAS calls are on tiny vectors: extra BLAS threads only spin (33x slower
  # on a loaded 2-core machine).
  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    for x0 in starts:
      res = optimize.minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                              options={"maxiter": 500, "ftol": 1e-13, "gtol": 1e-11})
      if np.isfinite(res.fun) and res.fun < best_f:
        best, best_f = res.x, float(res.fun)
  if best is None:
    raise ValueError("scaling-law fit failed from every starting point")
  return best, best_f


def _fit_least_squares(model, y: np.ndarray, starts: list[np.ndarray], bounds
                       ) -> tuple[np.ndarray, float]:
  """Minimises half the sum of squared residuals (trust-region least squares, analytic
  Jacobian) from each start; the best result. `model` as in _fit."""
  y = np.asarray(y, np.float64)
  lo, hi = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
  best, best_f = None, np.inf
  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    for x0 in starts:
      res = optimize.least_squares(lambda th: model(th)[0] - y, np.clip(x0, lo, hi),
                                   jac=lambda th: model(th)[1], bounds=(lo, hi),
                                   method="trf", xtol=1e-10, ftol=1e-12, gtol=1e-10,
                                   max_nfev=500)
      f = 0.5 * float(res.fun @ res.fun)
      if np.isfinite(f) and f < best_f - 1e-15:
        best, best_f = res.x, f
  if best is None:
    raise ValueError("least-squares fit failed from every starting point")
  return best, best_f


def fit_power_law_3p(c: np.ndarray, loss: np.ndarray, delta: float = HUBER_DELTA) -> dict:
  """Fits L(C) = A / C^alpha + E; returns {A, alpha, E, objective}.

  c: compute in FLOPs [n]; loss: [n] (positive).
  """
  c, loss = np.asarray(c, np.float64), np.asarray(loss, np.float64)
  x = np.log(c)
  xm = float(x.mean())
  xc = x - xm

  def model(th):  # th = (log A' , alpha, log E) with A' = A * exp(-alpha * xm)
    la, al, le = th
    t1, t2 = np.exp(la - al * xc), np.exp(le)
    pred = t1 + t2
    return pred, np.stack([t1, -xc * t1, np.full_like(t1, t2)], 1)

  lo = float(loss.min())
  starts = [np.array([math.log(max(float(loss.mean()) - f * lo, 1e-12)), al,
                      math.log(max(f * lo, 1e-12))])
            for al in (0.05, 0.2, 0.5) for f in (0.5, 0.9)]
  bounds = [(-60.0, 60.0), (0.0, 5.0), (math.log(lo * 1e-6), math.log(float(loss.max())))]
  th, f = _fit(model, loss, starts, bounds, delta, log_residuals=bool(lo > 0))
  la, al, le = th
  return {"A": float(math.exp(la + al * xm)), "alpha": float(al), "E": float(math.exp(le)),
          "objective": f, "n_points": int(len(c))}


def fit_power_law_2p(c: np.ndarray, loss: np.ndarray, delta: float = HUBER_DELTA) -> dict:
  """Fits L(C) = A / C^alpha (DataDecide's 2_param: no irreducible term); {A, alpha, E=0}.

  c: compute in FLOPs [n]; loss: [n] (positive).
  """
  c, loss = np.asarray(c, np.float64), np.asarray(loss, np.float64)
  xc = np.log(c) - float(np.log(c).mean())

  def model(th):
    t1 = np.exp(th[0] - th[1] * xc)
    return t1, np.stack([t1, -xc * t1], 1)

  starts = [np.array([math.log(float(loss.mean())), al]) for al in (0.05, 0.2, 0.5)]
  th, f = _fit(model, loss, starts, [(-60.0, 60.0), (0.0, 5.0)], delta, log_residuals=True)
  return {"A": float(math.exp(th[0] + th[1] * float(np.log(c).mean()))),
          "alpha": float(th[1]), "E": 0.0, "objective": f, "n_points": int(len(c))}


def power_law_3p(c, p: dict) -> np.ndarray:
  """L(C) = A / C^alpha + E."""
  return p["A"] * np.asarray(c, np.float64) ** (-p["alpha"]) + p["E"]


def fit_power_law_5p(n: np.ndarray, d: np.ndarray, loss: np.ndarray,
                     delta: float = HUBER_DELTA) -> dict:
  """Fits L(N, D) = A / N^alpha + B / D^beta + E; returns {A, alpha, B, beta, E, objective}.

  n: parameters [k]; d: training tokens [k]; loss: [k] (positive).
  """
  n, d, loss = (np.asarray(v, np.float64) for v in (n, d, loss))
  xn, xd = np.log(n), np.log(d)
  nm, dm = float(xn.mean()), float(xd.mean())
  xn, xd = xn - nm, xd - dm

  def model(th):
    la, al, lb, be, le = th
    t1, t2, t3 = np.exp(la - al * xn), np.exp(lb - be * xd), np.exp(le)
    pred = t1 + t2 + t3
    return pred, np.stack([t1, -xn * t1, t2, -xd * t2, np.full_like(t1, t3)], 1)

  lo, mean = float(loss.min()), float(loss.mean())
  starts = []
  for al, be, f in itertools.product((0.1, 0.5), (0.1, 0.5), (0.5, 0.9)):
    part = math.log(max((mean - f * lo) / 2, 1e-12))
    starts.append(np.array([part, al, part, be, math.log(max(f * lo, 1e-12))]))
  bounds = [(-60.0, 60.0), (0.0, 5.0), (-60.0, 60.0), (0.0, 5.0),
            (math.log(lo * 1e-6), math.log(float(loss.max())))]
  th, f = _fit(model, loss, starts, bounds, delta, log_residuals=bool(lo > 0))
  la, al, lb, be, le = th
  return {"A": float(math.exp(la + al * nm)), "alpha": float(al),
          "B": float(math.exp(lb + be * dm)), "beta": float(be), "E": float(math.exp(le)),
          "objective": f, "n_points": int(len(n))}


def power_law_5p(n, d, p: dict) -> np.ndarray:
  """L(N, D) = A / N^alpha + B / D^beta + E."""
  n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
  return p["A"] * n ** (-p["alpha"]) + p["B"] * d ** (-p["beta"]) + p["E"]


def fit_sigmoid(loss: np.ndarray, acc: np.ndarray, delta: float = HUBER_DELTA,
                least_squares: bool = False) -> dict:
  """Fits Acc(L) = a / (1 + exp(-k (L - L0))) + b; returns {a, k, L0, b, objective}.

  loss: [n]; acc: [n]. Accuracy falls as loss rises, so k comes out negative.
  least_squares: minimise the sum of squared residuals (DataDecide's step 2, a curve fit)
  instead of the Huber loss on log residuals.
  """
  x, y = np.asarray(loss, np.float64), np.asarray(acc, np.float64)
  span = float(np.ptp(x)) or 1.0
  lo, hi = float(y.min()), float(y.max())
  positive = lo > 0

  def model(th):
    a, k, l0, b = th
    z = np.clip(-k * (x - l0), -500, 500)
    s = 1.0 / (1.0 + np.exp(z))
    ds = s * (1 - s)
    pred = a * s + b
    return pred, np.stack([s, a * ds * (x - l0), -a * ds * k, np.ones_like(s)], 1)

  yr = max(hi - lo, 1e-6)
  starts = [np.array([yr * fa, -kk / span, float(np.quantile(x, q)), max(lo * fb, 1e-9)])
            for fa in (1.0, 2.0) for kk in (2.0, 8.0, 30.0) for q in (0.25, 0.5, 0.75)
            for fb in (0.5, 0.95)]
  top = max(abs(hi), abs(lo), 1e-6)
  bounds = [(0.0, 10 * top), (-1e4 / span, 1e4 / span), (float(x.min()) - 5 * span,
                                                          float(x.max()) + 5 * span),
            ((1e-9 if positive else -10 * top), 10 * top)]
  if least_squares:  # a trust-region solver needs fewer starts than the Huber fit's grid
    few = [st for st in starts if st[0] == yr and abs(st[2] - np.quantile(x, 0.5)) < 1e-12
           and st[3] == max(lo * 0.5, 1e-9)]
    th, f = _fit_least_squares(model, y, few, bounds)
  else:
    th, f = _fit(model, y, starts, bounds, delta, log_residuals=positive)
  a, k, l0, b = th
  return {"a": float(a), "k": float(k), "L0": float(l0), "b": float(b), "objective": f,
          "n_points": int(len(x))}


def sigmoid(loss, p: dict) -> np.ndarray:
  """Acc(L) = a / (1 + exp(-k (L - L0))) + b."""
  x = np.asarray(loss, np.float64)
  return p["a"] / (1.0 + np.exp(np.clip(-p["k"] * (x - p["L0"]), -500, 500))) + p["b"]


# ---------------------------------------------------------------------------------------------
# Scaling-law prediction (DataDecide's setups)


# DataDecide's scaling-law setups (scaling_laws/fit_scaling_laws.py in allenai/DataDecide):
# step-1 form, one or two steps, the helper point, the share of checkpoints fed to step 2.
SETUPS = {
    "3_param-default": {"law": "3p", "one_step": False, "helper": False, "step2": 0.9},
    "3_param-helper_points": {"law": "3p", "one_step": False, "helper": True, "step2": 0.9},
    "3_param-step2=0.5": {"law": "3p", "one_step": False, "helper": False, "step2": 0.5},
    "3_param-helper_points-step2=0.5": {"law": "3p", "one_step": False, "helper": True,
                                        "step2": 0.5},
    "5_param-ai2": {"law": "5p", "one_step": False, "helper": False, "step2": 0.9},
    "5_param-1_step-ai2": {"law": "5p", "one_step": True, "helper": False, "step2": 0.9},
    "3_param-1_step": {"law": "3p", "one_step": True, "helper": False, "step2": 0.9},
    "2_param-default": {"law": "2p", "one_step": False, "helper": False, "step2": 0.9},
}
FORM_ALIASES = {"3p": "3_param-default", "5p": "5_param-ai2", "2p": "2_param-default"}
LAW_PARAMS = {"2p": 2, "3p": 3, "5p": 5}
SIGMOID_PARAMS = 4
HELPER_POINT = (0.0, 1.0)  # (loss, metric): a perfect model scores 1 (DataDecide's default max)
TIE_RTOL = 1e-6  # scaling-law predictions closer than this (relative) are a tie


def setup_name(form: str) -> str:
  """A DataDecide setup name from a setup name or a short alias (3p, 5p)."""
  name = FORM_ALIASES.get(form, form)
  if name not in SETUPS:
    raise ValueError(f"scaling-law setup {form!r} is unknown; choose from "
                     f"{', '.join(list(FORM_ALIASES) + list(SETUPS))}")
  return name


def _short(setup: str) -> str:
  return {v: k for k, v in FORM_ALIASES.items()}.get(setup, setup)


def default_loss_metric(table: pd.DataFrame, task: str) -> str | None:
  """The lower-is-better metric of `task` used as step 1's loss (bpb first), or None."""
  metrics = sorted(table.loc[table["task"] == task, "metric"].unique())
  lower = [m for m in metrics if not higher_is_better(m)]
  for pref in ("bits_per_byte", "bpb", "loss"):
    for m in lower:
      if m == pref:
        return m
  return lower[0] if lower else None


def _last_share(rows: pd.DataFrame, share: float, mean: bool) -> pd.DataFrame:
  """Each run's last `share` of checkpoints by count (DataDecide's indexing).

  share 0.1 with mean=True: step 1's point, the mean from index min(n-1, ceil(0.9 n)) on;
  otherwise the checkpoints from index ceil((1 - share) n) on.
  """
  r = rows.sort_values("step")
  pos = r.groupby(RUN + ["metric"]).cumcount()
  n = r.groupby(RUN + ["metric"])["step"].transform("size")
  if mean:
    first = np.minimum(n - 1, np.ceil((1.0 - share) * n - 1e-9))
  else:
    first = np.ceil((1.0 - share) * n - 1e-9)
  return r[pos >= first]


def _fit_points(rows: pd.DataFrame) -> pd.DataFrame:
  """Step-1 points per (recipe, size, metric): value averaged over each run's last 10% of
  checkpoints, then over seeds; compute and tokens of the final step; n_seeds."""
  last = _last_share(rows, 0.1, mean=True)
  per_run = last.groupby(RUN + ["metric"], as_index=False).agg(value=("value", "mean"))
  fin = rows[rows["step"] == rows.groupby(RUN)["step"].transform("max")]
  cost = fin.groupby(RUN, as_index=False).agg(compute=("compute", "max"),
                                              tokens=("tokens", "max"))
  per_run = per_run.merge(cost, on=RUN)
  return per_run.groupby(["recipe", "size", "metric"], as_index=False).agg(
      value=("value", "mean"), compute=("compute", "mean"), tokens=("tokens", "mean"),
      n_seeds=("seed", "nunique"))


def _law(law: str, pts: pd.DataFrame):
  """(fitted parameters, predict(compute, tokens)) of a step-1 law on (recipe's) points."""
  c, d, y = pts["compute"].to_numpy(), pts["tokens"].to_numpy(), pts["value"].to_numpy()
  if law == "3p":
    f = fit_power_law_3p(c, y)
    return f, lambda cc, dd: power_law_3p(cc, f)
  if law == "2p":
    f = fit_power_law_2p(c, y)
    return f, lambda cc, dd: power_law_3p(cc, f)
  f = fit_power_law_5p(c / (6.0 * d), d, y)
  return f, lambda cc, dd: power_law_5p(cc / (6.0 * dd), dd, f)


def fit_one_step(c, d, y, law: str, delta: float = HUBER_DELTA) -> dict:
  """DataDecide's 1-step law: metric = sigmoid(law(C or N, D)) fitted in one Huber fit.

  c, d: compute and tokens [n]; y: the metric [n] (positive). 7 parameters with 3p or 5p ...
  (p: law parameters then a, k, L0, b); L-BFGS-B with numerical gradients.
  """
  c, d, y = (np.asarray(v, np.float64) for v in (c, d, y))
  nlaw = LAW_PARAMS[law]

  def predict(th, cc, dd):
    lp = dict(zip(("A", "alpha", "E"), np.exp([th[0]]).tolist() + [th[1], th[2]]))
    if law == "5p":
      lp = {"A": math.exp(th[0]), "alpha": th[1], "B": math.exp(th[2]), "beta": th[3],
            "E": th[4]}
      x = power_law_5p(cc / (6.0 * dd), dd, lp)
    else:
      x = power_law_3p(cc, lp)
    return sigmoid(x, dict(zip(("a", "k", "L0", "b"), th[nlaw:])))

  def loss(th):
    p = predict(th, c, d)
    if np.any(p <= 0) or not np.all(np.isfinite(p)):
      return 1e30
    return float(huber(np.log(p) - np.log(y), delta).sum())

  lc = float(np.log(c).mean())
  starts = []
  for al, k in itertools.product((0.1, 0.3), (-2.0, -8.0)):
    law0 = [math.log(max(float(y.mean()), 1e-6)) + al * lc, al, 1.0] if law != "5p" else [
        5.0, al, 5.0, al, 1.0]
    starts.append(np.array(law0 + [float(np.ptp(y)) * 2 or 0.5, k, 2.0, float(y.min()) / 2]))
  best = min((optimize.minimize(loss, x0, method="L-BFGS-B", options={"maxiter": 2000})
              for x0 in starts), key=lambda r: r.fun)
  th = best.x
  return {"theta": th.tolist(), "law": law, "objective": float(best.fun),
          "n_points": int(len(y)), "_predict": lambda cc, dd: predict(th, cc, dd)}


def _step2_points(rows: pd.DataFrame, lm: str, metric: str, share: float) -> pd.DataFrame:
  """(loss, metric) seed means per (size, step) of each run's last `share` of checkpoints."""
  last = _last_share(rows[rows["metric"].isin([lm, metric])], share, mean=False)
  return (last.groupby(["size", "step", "metric"])["value"].mean().unstack()
          .reindex(columns=[lm, metric]).dropna())


def _target_point(table, target, target_compute, target_tokens):
  """(compute, tokens) of one target run at its final step, from the table when not given."""
  if target_compute is not None and target_tokens is not None:
    return float(target_compute), float(target_tokens)
  t = table[table["size"] == target]
  if t.empty:
    raise ValueError(f"target size {target!r} is not in the table: pass target_compute "
                     f"and target_tokens")
  t = t[t["step"] == t.groupby(RUN)["step"].transform("max")]
  return (float(t["compute"].mean()) if target_compute is None else target_compute,
          float(t["tokens"].mean()) if target_tokens is None else target_tokens)


class _RecipeFits:
  """Cached fits of one recipe and task: step-1 laws, step-2 sigmoids, 1-step laws."""

  def __init__(self, rows, pts, lm, point):
    self.rows, self.pts, self.lm, self.point = rows, pts, lm, point
    self.cache = {}

  def law(self, law):
    if ("law", law) not in self.cache:
      p = self.pts[self.pts["metric"] == self.lm]
      k = LAW_PARAMS[law]
      if len(p) < k:
        self.cache[("law", law)] = f"under-determined: {len(p)} proxy sizes < {k} parameters"
      else:
        f, predict = _law(law, p)
        self.cache[("law", law)] = (f, float(predict(*self.point)), len(p))
    return self.cache[("law", law)]

  def step2(self, metric, helper, share):
    key = ("s2", metric, helper, share)
    if key not in self.cache:
      both = _step2_points(self.rows, self.lm, metric, share)
      x, y = both[self.lm].to_numpy(), both[metric].to_numpy()
      if helper and higher_is_better(metric):
        x, y = np.append(x, HELPER_POINT[0]), np.append(y, HELPER_POINT[1])
      self.cache[key] = (f"under-determined: {len(x)} step-2 points < {SIGMOID_PARAMS} "
                         f"parameters" if len(x) < SIGMOID_PARAMS
                         else fit_sigmoid(x, y, least_squares=True))
    return self.cache[key]

  def one_step(self, metric, law):
    p = self.pts[self.pts["metric"] == metric]
    k = LAW_PARAMS[law] + SIGMOID_PARAMS
    if len(p) < k:
      return f"under-determined: {len(p)} proxy sizes < {k} parameters"
    if (p["value"] <= 0).any():
      return "1-step fit needs positive values (log residuals)"
    f = fit_one_step(p["compute"], p["tokens"], p["value"], law)
    return f, float(f.pop("_predict")(*self.point)), len(p)


def _predict(fits: _RecipeFits, setup: str, metric: str) -> dict:
  """One recipe's prediction of `metric` under `setup`: a dict of the row's fit columns."""
  cfg = SETUPS[setup]
  if cfg["one_step"] and metric != fits.lm:
    r = fits.one_step(metric, cfg["law"])
    if isinstance(r, str):
      return {"status": r}
    f, pred, n = r
    return {"status": "ok", "predicted_loss": np.nan, "predicted": pred, "n_points": n,
            "fit": json.dumps(f), "step2": "null"}
  r = fits.law(cfg["law"])
  if isinstance(r, str):
    return {"status": r}
  f, pl, n = r
  curve = None
  if metric != fits.lm:
    curve = fits.step2(metric, cfg["helper"], cfg["step2"])
    if isinstance(curve, str):
      return {"status": curve, "predicted_loss": pl}
  pred = pl if curve is None else float(sigmoid(pl, curve))
  return {"status": "ok", "predicted_loss": pl, "predicted": pred, "n_points": n,
          "fit": json.dumps(f), "step2": json.dumps(curve)}


def scaling_law_predictions(table: pd.DataFrame, target: str, *, target_compute=None,
                            target_tokens=None, forms=("3p", "5p"), loss_metric=None,
                            tasks=None, warnings: list | None = None) -> pd.DataFrame:
  """Every recipe's predicted target score per (task, metric) and setup, as DataDecide fits.

  forms: DataDecide setup names (SETUPS) or the aliases 3p, 5p. Step 1 fits each recipe's
  loss on one point per proxy size (its runs' mean over their last 10% of checkpoints, then
  over seeds); step 2 fits each recipe's sigmoid (least squares) on its runs' last 90% (or
  50%) of checkpoints, optionally with the helper point; a fit with fewer points than
  parameters is not made (status 'under-determined ...', predicted NaN). The target size's
  rows are never fitted on. Columns: task, metric, setup, form, recipe, loss_metric,
  predicted_loss, predicted, actual, abs_error, rel_error, n_points, status, compute (FLOPs of
  the recipe's proxy runs, every seed), compute_fraction, largest_size, fit, step2 (JSON).
  """
  setups = [setup_name(f) for f in forms]
  proxy = table[table["size"] != target]
  tgt = target_scores(table, target) if (table["size"] == target).any() else None
  point = _target_point(table, target, target_compute, target_tokens)
  largest = size_order(proxy)[-1] if len(proxy) else ""
  rows = []
  for task in sorted(proxy["task"].unique()) if tasks is None else tasks:
    lm = loss_metric or default_loss_metric(proxy, task)
    if lm is None:
      _warn(warnings, f"{task}: no loss-like metric (loss, bpb, ...) to fit step 1 on: "
                      f"no scaling-law prediction")
      continue
    trows = proxy[proxy["task"] == task]
    pts = _fit_points(trows)
    for recipe, rrows in trows.groupby("recipe"):
      rp = pts[pts["recipe"] == recipe]
      fits = _RecipeFits(rrows, rp, lm, point)
      spent = rp[rp["metric"] == lm]
      compute = float((spent["compute"] * spent["n_seeds"]).sum())
      for setup, metric in itertools.product(setups, sorted(trows["metric"].unique())):
        r = {"predicted_loss": np.nan, "predicted": np.nan, "n_points": 0, "fit": "null",
             "step2": "null", **_predict(fits, setup, metric)}
        actual = np.nan
        if tgt is not None:
          hit = tgt[(tgt["recipe"] == recipe) & (tgt["task"] == task) & (tgt["metric"] == metric)]
          actual = float(hit["value"].iloc[0]) if len(hit) else np.nan
        rows.append({"task": task, "metric": metric, "setup": setup, "form": _short(setup),
                     "recipe": recipe, "loss_metric": lm, **r, "actual": actual,
                     "abs_error": abs(r["predicted"] - actual),
                     "rel_error": abs(r["predicted"] - actual) / abs(actual) if actual
                     else np.nan, "compute": compute, "compute_fraction": compute / point[0],
                     "largest_size": largest})
  out = pd.DataFrame(rows)
  _warn_under(out, warnings)
  return out


def _warn_under(preds: pd.DataFrame, warnings: list | None) -> None:
  """One warning per (task, setup, reason) naming the recipes whose fit was not made."""
  if preds.empty:
    return
  bad = preds[preds["status"] != "ok"]
  for (task, setup, status), g in bad.groupby(["task", "setup", "status"]):
    _warn(warnings, f"scaling law {setup}, {task} ({', '.join(sorted(g['metric'].unique()))}): "
                    f"{status} for recipe(s) {', '.join(sorted(g['recipe'].unique()))}; left "
                    f"out of decision accuracy")


def scaling_law_decision_accuracy(preds: pd.DataFrame, table: pd.DataFrame, target: str,
                                  warnings: list | None = None,
                                  target_metrics=(TARGET_SAME,), ties: str = "half",
                                  tie_rtol: float = TIE_RTOL) -> pd.DataFrame:
  """Decision accuracy of the scaling-law predictions (method scaling_law_<form>).

  Only fitted predictions count (under-determined fits are left out and listed in
  `missing`); predictions within `tie_rtol` (relative) are a tie. `size` is the largest proxy
  size fitted on; protocol is seed_mean; compute is every proxy run the fits used (mean over
  recipes).
  """
  tgt = target_scores(table, target)
  tms = resolve_target_metrics(table, target_metrics)
  targets = _target_map(tgt)
  c_target = _target_compute(table, target)
  rows = []
  for (task, metric, setup), g in preds.groupby(["task", "metric", "setup"]):
    ok = g[g["status"] == "ok"]
    for tm in tms.get((task, metric), [metric]):
      t = targets.get((task, tm))
      if t is None:
        continue
      scores = ok.rename(columns={"predicted": "value"}).assign(seed=0)
      row = _accuracy_row(scores, oriented(t, tm), "seed_mean", None, "", metric, ties,
                          tie_rtol)
      row["missing"] = ",".join(sorted(set(g["recipe"]) - set(ok["recipe"])))
      compute = float(g["compute"].mean())
      rows.append({"size": g["largest_size"].iloc[0], "task": task, "metric": metric,
                   "target_metric": tm, "method": f"scaling_law_{g['form'].iloc[0]}",
                   "setup": setup, **row, "step": "final", "compute": compute,
                   "compute_fraction": compute / c_target,
                   "mean_abs_error": float(ok["abs_error"].mean()) if len(ok) else np.nan,
                   "mean_rel_error": float(ok["rel_error"].mean()) if len(ok) else np.nan})
  return pd.DataFrame(rows)
