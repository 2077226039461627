"""DataDecide analysis: pure functions over a results table (see results.py). No JAX.

Definitions (REFERENCE.md section 5), with the choices this module makes explicit:

- A run is one (recipe, size, seed). Its final step is the largest step it has any row for.
  Its single-scale score for (task, metric) is the value at that final step, or with
  `last_k > 1` the mean over its last k checkpoints (its k largest steps). A run without a
  value at its final step for some (task, metric) is left out of that cell and reported.
- Target scores: at the target size, each recipe's mean over the target seeds of the value at
  each seed's final step.
- Decision accuracy: over every pair of recipes present both in the prediction and at the
  target, the fraction ordered as at the target. Ties: a pair tied at the target has no order
  to recover and is left out of the count (reported as `n_target_ties`); a pair tied in the
  prediction but not at the target counts 1/2 (the expected score of breaking the tie at
  random). Ordering is direction-free, so lower-is-better metrics need no special case.
- Protocols: `per_seed` treats each proxy seed as one prediction attempt (mean, population
  std, min, max over seeds; a recipe lacking that seed drops out of that attempt, reported);
  `seed_mean` ranks recipes by their mean over the proxy seeds.
- Rankings order recipes by their seed mean (best first: higher is better unless the metric
  is a loss, bpb or perplexity); tied recipes share the best rank of the tie ("min" ranking).
- Recipes present at some sizes but missing at another, or missing for a (task, metric), are
  never dropped silently: every function appends a line to `warnings` (a list) when given one,
  and the tables carry `n_recipes` and `missing`.
- compute_fraction: one proxy run's compute (6 N tokens) up to the scored step over one target
  run's compute at its final step. For a scaling-law prediction it is the sum over the proxy
  sizes used (one run each).
- Two-step scaling law: step 1 fits each recipe's loss (a lower-is-better metric) against
  compute, 3-parameter L(C) = A / C^alpha + E or 5-parameter L(N, D) = A / N^alpha + B / D^beta
  + E, on one point per proxy size: the mean over seeds and over the last 10% of checkpoints
  (steps >= 0.9 x the final step). Step 2 maps loss to the metric with a sigmoid
  Acc(L) = a / (1 + exp(-k (L - L0))) + b, fitted on every proxy checkpoint (seed means) of all
  recipes pooled (one curve per task and metric). Both minimise a Huber loss (delta 1e-3) on
  log residuals with L-BFGS-B from a grid of starts (plain residuals where a value is <= 0).
  When the predicted metric is the loss itself, step 2 is the identity.
- Signal-to-noise at (size, task, metric): signal = (max - min) / |mean| of the recipes'
  seed-mean final scores; noise = the mean over runs of std / |mean| of a run's last
  `noise_checkpoints` checkpoints; SNR = signal / noise.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Iterable

import numpy as np
import pandas as pd
import threadpoolctl
from scipy import optimize

RUN = ["recipe", "size", "seed"]
CELL = ["size", "task", "metric"]
_LOWER_BETTER = re.compile(r"(loss|bpb|bits_per_byte|perplexity|ppl|nll|\bce\b|error)", re.I)
HUBER_DELTA = 1e-3


def higher_is_better(metric: str) -> bool:
  """False for losses, bits per byte, perplexities and error rates."""
  return _LOWER_BETTER.search(str(metric)) is None


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


def pairwise_agreement(pred: pd.Series, target: pd.Series) -> tuple[float, int, int]:
  """(decision accuracy, pairs counted, pairs tied at the target) of two recipe -> score maps.

  Only recipes with a finite score in both count. See the module docstring for ties.
  """
  # Plain dicts: this runs once per (size, step, task, metric, seed), pandas indexing is slow.
  pm = {k: v for k, v in zip(pred.index, pred.to_numpy(np.float64)) if not np.isnan(v)}
  tm = {k: v for k, v in zip(target.index, target.to_numpy(np.float64)) if not np.isnan(v)}
  common = sorted(pm.keys() & tm.keys())
  if len(common) < 2:
    return float("nan"), 0, 0
  p = np.array([pm[k] for k in common])
  t = np.array([tm[k] for k in common])
  iu = np.triu_indices(len(common), 1)
  dp = np.sign(p[:, None] - p[None, :])[iu]
  dt = np.sign(t[:, None] - t[None, :])[iu]
  counted = dt != 0
  n = int(counted.sum())
  if n == 0:
    return float("nan"), 0, int((~counted).sum())
  score = np.where(dp == 0, 0.5, (dp == dt).astype(np.float64))[counted].sum()
  return float(score / n), n, int((~counted).sum())


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
                  warnings: list | None, where: str) -> dict:
  """Decision accuracy of one cell's run scores against the target (one protocol)."""
  all_recipes = set(tgt.dropna().index)
  accs, pairs, ties, missing = [], [], [], set()
  for label, pred in _predictions(scores, protocol):
    lost = all_recipes - set(pred.dropna().index)
    if lost:
      missing |= lost
      what = "" if protocol == "seed_mean" else f" (seed {label})"
      _warn(warnings, f"{where}{what}: recipe(s) {', '.join(sorted(lost))} have a target score "
                      f"but no prediction; their pairs are not counted")
    acc, n, nt = pairwise_agreement(pred, tgt)
    if n:
      accs.append(acc)
      pairs.append(n)
      ties.append(nt)
  a = np.asarray(accs, np.float64)
  return {
      "protocol": protocol,
      "decision_accuracy": float(a.mean()) if a.size else float("nan"),
      "std": float(a.std()) if a.size else float("nan"),
      "min": float(a.min()) if a.size else float("nan"),
      "max": float(a.max()) if a.size else float("nan"),
      "n_seeds": int(a.size), "n_pairs": int(max(pairs)) if pairs else 0,
      "n_target_ties": int(max(ties)) if ties else 0,
      "missing": ",".join(sorted(missing)),
  }


def decision_accuracy(table: pd.DataFrame, target: str, *, protocols=PROTOCOLS,
                      last_k: int = 1, warnings: list | None = None) -> pd.DataFrame:
  """Single-scale decision accuracy of every proxy size's final checkpoints vs the target.

  Columns: size, task, metric, method ('single_scale'), protocol, decision_accuracy, std, min,
  max, n_seeds, n_pairs, n_target_ties, missing, step ('final'), compute_fraction.
  """
  tgt = target_scores(table, target, warnings)
  c_target = _target_compute(table, target)
  proxy = table[table["size"] != target]
  scores = run_scores(proxy, last_k, warnings)
  rows = []
  targets = _target_map(tgt)
  for (size, task, metric), cell in scores.groupby(CELL):
    t = targets.get((task, metric))
    if t is None:
      _warn(warnings, f"{task}/{metric} has no target score at {target}: not evaluated")
      continue
    for protocol in protocols:
      row = _accuracy_row(cell, t, protocol, warnings, f"size {size}, {task}/{metric}")
      rows.append({"size": size, "task": task, "metric": metric, "method": "single_scale",
                   **row, "step": "final",
                   "compute_fraction": float(cell["compute"].mean()) / c_target})
  return _sorted(pd.DataFrame(rows), table)


def _target_map(tgt: pd.DataFrame) -> dict:
  """{(task, metric): recipe -> target score} of target_scores' table."""
  return {k: g.set_index("recipe")["value"] for k, g in tgt.groupby(["task", "metric"])}


def checkpoint_decision_accuracy(table: pd.DataFrame, target: str, *, protocols=PROTOCOLS,
                                 warnings: list | None = None) -> pd.DataFrame:
  """Decision accuracy of every proxy checkpoint step (for the compute frontier).

  Same columns as decision_accuracy, with `step` the checkpoint step; each step scores the
  runs that have it.
  """
  tgt = target_scores(table, target, warnings)
  c_target = _target_compute(table, target)
  proxy = table[table["size"] != target]
  rows = []
  targets = _target_map(tgt)
  for (size, task, metric, step), cell in proxy.groupby(CELL + ["step"]):
    t = targets.get((task, metric))
    if t is None:
      continue
    for protocol in protocols:
      row = _accuracy_row(cell, t, protocol, None, "")
      rows.append({"size": size, "task": task, "metric": metric, "method": "single_scale",
                   **row, "step": int(step),
                   "compute_fraction": float(cell["compute"].mean()) / c_target})
  return _sorted(pd.DataFrame(rows), table)


def _sorted(df: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
  if df.empty:
    return df
  order = {s: i for i, s in enumerate(size_order(table))}
  df = df.assign(_o=df["size"].map(order))
  return df.sort_values(["task", "metric", "protocol", "compute_fraction", "_o"],
                        kind="stable").drop(columns="_o").reset_index(drop=True)


def frontier(points: pd.DataFrame) -> pd.DataFrame:
  """The compute vs decision-accuracy frontier of each (task, metric, method, protocol).

  A point is on the frontier when no point of its group at the same or lower compute_fraction
  has a higher decision accuracy (the upper-left staircase).
  """
  keys = [k for k in ("task", "metric", "method", "protocol") if k in points.columns]
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


def snr(table: pd.DataFrame, noise_checkpoints: int = 5, warnings: list | None = None
        ) -> pd.DataFrame:
  """Signal, noise and SNR per (size, task, metric) (module docstring for the definitions)."""
  s = run_scores(table, 1, warnings)
  means = s.groupby(CELL + ["recipe"])["value"].mean().reset_index()
  rows = []
  t = table.copy()
  t["pos"] = t.groupby(RUN + ["task", "metric"])["step"].rank(ascending=False, method="first")
  last = t[t["pos"] <= noise_checkpoints]
  run_noise = last.groupby(RUN + ["task", "metric"])["value"].agg(
      lambda v: float(np.std(v) / abs(np.mean(v))) if len(v) > 1 and np.mean(v) != 0
      else np.nan).reset_index()
  for (size, task, metric), g in means.groupby(CELL):
    m = g["value"].to_numpy()
    mean = float(np.mean(m))
    signal = float((m.max() - m.min()) / abs(mean)) if mean != 0 and len(m) > 1 else np.nan
    rn = run_noise[(run_noise["size"] == size) & (run_noise["task"] == task)
                   & (run_noise["metric"] == metric)]["value"]
    if rn.isna().all():
      _warn(warnings, f"size {size}, {task}/{metric}: fewer than 2 checkpoints per run, "
                      f"noise (and SNR) undefined")
    noise = float(rn.mean()) if rn.notna().any() else np.nan
    ratio = (signal / noise if noise > 0 else (np.inf if signal > 0 else np.nan)) \
        if not (np.isnan(signal) or np.isnan(noise)) else np.nan
    rows.append({"size": size, "task": task, "metric": metric, "signal": signal,
                 "noise": noise, "snr": ratio, "n_recipes": len(m)})
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
            for al in (0.05, 0.2, 0.5, 1.0) for f in (0.01, 0.5, 0.9)]
  bounds = [(-60.0, 60.0), (0.0, 5.0), (math.log(lo * 1e-6), math.log(float(loss.max())))]
  th, f = _fit(model, loss, starts, bounds, delta, log_residuals=bool(lo > 0))
  la, al, le = th
  return {"A": float(math.exp(la + al * xm)), "alpha": float(al), "E": float(math.exp(le)),
          "objective": f, "n_points": int(len(c))}


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
  for al, be, f in itertools.product((0.1, 0.3, 0.7), (0.1, 0.3, 0.7), (0.01, 0.5, 0.9)):
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


def fit_sigmoid(loss: np.ndarray, acc: np.ndarray, delta: float = HUBER_DELTA) -> dict:
  """Fits Acc(L) = a / (1 + exp(-k (L - L0))) + b; returns {a, k, L0, b, objective}.

  loss: [n]; acc: [n]. Accuracy falls as loss rises, so k comes out negative.
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
  th, f = _fit(model, y, starts, bounds, delta, log_residuals=positive)
  a, k, l0, b = th
  return {"a": float(a), "k": float(k), "L0": float(l0), "b": float(b), "objective": f,
          "n_points": int(len(x))}


def sigmoid(loss, p: dict) -> np.ndarray:
  """Acc(L) = a / (1 + exp(-k (L - L0))) + b."""
  x = np.asarray(loss, np.float64)
  return p["a"] / (1.0 + np.exp(np.clip(-p["k"] * (x - p["L0"]), -500, 500))) + p["b"]


# ---------------------------------------------------------------------------------------------
# Two-step scaling-law prediction


def default_loss_metric(table: pd.DataFrame, task: str) -> str | None:
  """The lower-is-better metric of `task` used as step 1's loss (bpb first), or None."""
  metrics = sorted(table.loc[table["task"] == task, "metric"].unique())
  lower = [m for m in metrics if not higher_is_better(m)]
  for pref in ("bits_per_byte", "bpb", "loss"):
    for m in lower:
      if m == pref:
        return m
  return lower[0] if lower else None


def _fit_points(proxy: pd.DataFrame, tail: float = 0.1) -> pd.DataFrame:
  """Mean over seeds and the last `tail` of checkpoints per (recipe, size): C, N, D, value."""
  final = proxy.groupby(RUN)["step"].transform("max")
  last = proxy[proxy["step"] >= (1.0 - tail) * final]
  per_run = last.groupby(RUN, as_index=False).agg(value=("value", "mean"),
                                                  compute=("compute", "mean"),
                                                  tokens=("tokens", "mean"))
  return per_run.groupby(["recipe", "size"], as_index=False).agg(
      value=("value", "mean"), compute=("compute", "mean"), tokens=("tokens", "mean"))


def scaling_law_predictions(table: pd.DataFrame, target: str, *, target_compute=None,
                            target_tokens=None, forms=("3p", "5p"), loss_metric=None,
                            tasks=None, warnings: list | None = None) -> pd.DataFrame:
  """Two-step prediction of every recipe's target score per (task, metric) and form.

  The target size's own rows (when present) are never used for fitting. `target_compute`
  and `target_tokens` (one target run at its final step) default to the table's target rows.
  Columns: task, metric, form, recipe, loss_metric, predicted_loss, predicted, actual
  (target score or NaN), abs_error, rel_error, n_points, compute_fraction (all proxy sizes
  together), largest_size (the largest proxy size fitted on), fit and step2 (the fitted
  parameters as JSON; step2 is null when the metric is the loss itself).
  """
  proxy = table[table["size"] != target]
  have_target = bool((table["size"] == target).any())
  tgt = target_scores(table, target) if have_target else None
  if target_compute is None or target_tokens is None:
    if not have_target:
      raise ValueError(f"target size {target!r} is not in the table: pass target_compute "
                       f"and target_tokens")
    t = table[table["size"] == target]
    t = t[t["step"] == t.groupby(RUN)["step"].transform("max")]
    target_compute = float(t["compute"].mean()) if target_compute is None else target_compute
    target_tokens = float(t["tokens"].mean()) if target_tokens is None else target_tokens
  target_params = target_compute / (6.0 * target_tokens)
  run_final = proxy[proxy["step"] == proxy.groupby(RUN)["step"].transform("max")]
  proxy_compute = float(run_final.groupby("size")["compute"].mean().sum())
  largest = size_order(proxy)[-1] if len(proxy) else ""
  rows = []
  for task in sorted(proxy["task"].unique()) if tasks is None else tasks:
    lm = loss_metric or default_loss_metric(proxy, task)
    if lm is None:
      _warn(warnings, f"{task}: no loss-like metric (loss, bpb, ...) to fit step 1 on: "
                      f"no scaling-law prediction")
      continue
    lrows = proxy[(proxy["task"] == task) & (proxy["metric"] == lm)]
    if lrows.empty:
      continue
    pts = _fit_points(lrows)
    nsizes = pts.groupby("recipe")["size"].nunique()
    fits, under = {}, {}
    for recipe, p in pts.groupby("recipe"):
      if nsizes[recipe] < 2:
        _warn(warnings, f"{task}/{lm}: recipe {recipe} has fewer than 2 proxy sizes: no "
                        f"scaling-law fit")
        continue
      for form in forms:
        k = 3 if form == "3p" else 5
        if len(p) < k:
          under.setdefault(form, []).append(recipe)
        if form == "3p":
          f = fit_power_law_3p(p["compute"], p["value"])
          pl = float(power_law_3p(target_compute, f))
        else:
          f = fit_power_law_5p(p["compute"] / (6.0 * p["tokens"]), p["tokens"], p["value"])
          pl = float(power_law_5p(target_params, target_tokens, f))
        fits[(recipe, form)] = (pl, len(p), f)
    for form, names in under.items():
      _warn(warnings, f"{task}/{lm} {form}: fewer points (proxy sizes) than the "
                      f"{3 if form == '3p' else 5} parameters for recipe(s) {', '.join(names)}: "
                      f"the fit is under-determined")
    # Step 2 per metric of the task: one sigmoid over every proxy checkpoint (seed means).
    task_rows = proxy[proxy["task"] == task]
    ckpt = task_rows.groupby(["recipe", "size", "step", "metric"])["value"].mean().unstack()
    for metric in sorted(task_rows["metric"].unique()):
      if metric == lm:
        curve = None
      else:
        both = ckpt[[lm, metric]].dropna()
        if len(both) < 4:
          _warn(warnings, f"{task}/{metric}: fewer than 4 checkpoints with both {lm} and "
                          f"{metric}: no step-2 fit")
          continue
        curve = fit_sigmoid(both[lm].to_numpy(), both[metric].to_numpy())
      for (recipe, form), (pl, npts, f) in fits.items():
        pred = pl if curve is None else float(sigmoid(pl, curve))
        actual = np.nan
        if tgt is not None:
          hit = tgt[(tgt["recipe"] == recipe) & (tgt["task"] == task) & (tgt["metric"] == metric)]
          actual = float(hit["value"].iloc[0]) if len(hit) else np.nan
        rows.append({"task": task, "metric": metric, "form": form, "recipe": recipe,
                     "loss_metric": lm, "predicted_loss": pl, "predicted": pred,
                     "actual": actual, "abs_error": abs(pred - actual),
                     "rel_error": abs(pred - actual) / abs(actual) if actual else np.nan,
                     "n_points": npts, "compute_fraction": proxy_compute / target_compute,
                     "largest_size": largest, "fit": json.dumps(f),
                     "step2": json.dumps(curve)})
  return pd.DataFrame(rows)


def scaling_law_decision_accuracy(preds: pd.DataFrame, table: pd.DataFrame, target: str,
                                  warnings: list | None = None) -> pd.DataFrame:
  """Decision accuracy of the scaling-law predictions (methods scaling_law_3p / _5p).

  `size` is the largest proxy size the laws were fitted on; protocol is seed_mean.
  """
  tgt = target_scores(table, target)
  rows = []
  for (task, metric, form), g in preds.groupby(["task", "metric", "form"]):
    t = tgt[(tgt["task"] == task) & (tgt["metric"] == metric)].set_index("recipe")["value"]
    scores = g.rename(columns={"predicted": "value"}).assign(seed=0)
    row = _accuracy_row(scores, t, "seed_mean", warnings,
                        f"scaling law {form}, {task}/{metric}")
    rows.append({"size": g["largest_size"].iloc[0], "task": task, "metric": metric,
                 "method": f"scaling_law_{form}", **row, "step": "final",
                 "compute_fraction": float(g["compute_fraction"].iloc[0]),
                 "mean_abs_error": float(g["abs_error"].mean()),
                 "mean_rel_error": float(g["rel_error"].mean())})
  return pd.DataFrame(rows)
