"""Decision accuracy: pairwise agreement of a prediction with the target, per cell, per
checkpoint, the compute frontier and rank agreement between sizes."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from scipy import special

from olmo_jax.datadecide import TIES
from olmo_jax.datadecide.scores import (
  CELL,
  DEFAULT_TARGET_METRICS,
  PROTOCOLS,
  _target_compute,
  _warn,
  oriented,
  resolve_target_metrics,
  run_scores,
  size_order,
  target_scores,
)


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
      # per_seed: the attempts; seed_mean: the seeds each recipe's mean averages (the most)
      "n_seeds": int(a.size) if protocol == "per_seed" else int(
          scores.groupby("recipe")["seed"].nunique().max()) if len(scores) else 0,
      "n_pairs": int(max(pairs)) if pairs else 0,
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
  decision_accuracy, std, min, max, n_seeds (per_seed: the attempts; seed_mean: the seeds
  averaged), n_pairs, n_target_ties,
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


def target_ceiling(table: pd.DataFrame, target: str, target_metrics=DEFAULT_TARGET_METRICS,
                   ties: str = "half") -> pd.DataFrame:
  """The target's own noise as a ceiling on any proxy's decision accuracy.

  The target's seed means are measured with noise, so even a perfect proxy (one that orders
  the recipes by their true target quality) disagrees with them on close pairs. Per (task,
  target metric): the mean over recipe pairs of Phi(|d| / s), d the difference of the two
  recipes' target means and s its standard error (the seed variance pooled over recipes, over
  each recipe's n): the chance that the measured target orders the pair as the truth does,
  taking the measured differences as true (an estimate, which errs high where the recipes
  differ by less than the noise). Pairs tied at the target count as `ties` does. Columns:
  task, target_metric, target_ceiling (NaN without two seeds per recipe), n_target_seeds.
  """
  s = run_scores(table[table["size"] == target])
  tms = {tm for v in resolve_target_metrics(table, target_metrics).values() for tm in v}
  rows = []
  for (task, metric), g in s[s["metric"].isin(tms)].groupby(["task", "metric"]):
    per = g.groupby("recipe")["value"]
    mean, n = per.mean().to_numpy(), per.count().to_numpy()
    dof = np.maximum(n - 1, 0)
    pooled = float((per.var(ddof=1).fillna(0).to_numpy() * dof).sum() / max(dof.sum(), 1))
    se2 = pooled / n  # the seed variance pooled over recipes: 3 seeds alone say little
    iu = np.triu_indices(len(mean), 1)
    d = np.abs(mean[:, None] - mean[None, :])[iu]
    sd = np.sqrt(se2[:, None] + se2[None, :])[iu]
    ok = (d > 0) if ties == "half" else np.ones_like(d, dtype=bool)
    ceil = np.nan
    if len(d) and n.min() >= 2 and ok.any():
      z = np.divide(d, sd, out=np.full_like(d, np.inf), where=sd > 0)
      ceil = float(special.ndtr(z[ok]).mean())
    rows.append({"task": task, "target_metric": metric, "target_ceiling": ceil,
                 "n_target_seeds": int(n.min()) if len(n) else 0})
  return pd.DataFrame(rows, columns=["task", "target_metric", "target_ceiling",
                                     "n_target_seeds"])
