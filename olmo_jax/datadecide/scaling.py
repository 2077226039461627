"""Scaling-law prediction of the target's scores as DataDecide fits them, and its decision
accuracy."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
from scipy import optimize

from eval.metrics import higher_is_better
from olmo_jax.datadecide.decisions import _accuracy_row, _target_map
from olmo_jax.datadecide.fits import (
  HUBER_DELTA,
  fit_power_law_2p,
  fit_power_law_3p,
  fit_power_law_5p,
  fit_sigmoid,
  huber,
  power_law_3p,
  power_law_5p,
  sigmoid,
)
from olmo_jax.datadecide.scores import (
  RUN,
  TARGET_SAME,
  _target_compute,
  _warn,
  oriented,
  resolve_target_metrics,
  size_order,
  target_scores,
)

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
