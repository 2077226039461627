"""Scaling-law prediction of the target's scores as DataDecide fits them, and its decision
accuracy."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd

from eval.metrics import higher_is_better
from olmo_jax import sizes
from olmo_jax.datadecide.decisions import _accuracy_row, _target_map
from olmo_jax.datadecide.fits import (
  LAW_PARAMS,
  fit_one_step,
  fit_power_law_2p,
  fit_power_law_3p,
  fit_power_law_5p,
  fit_sigmoid,
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


# DataDecide's fits (scaling_laws/fit_scaling_laws.py in allenai/DataDecide) use the default
# seed's runs of 150M, 300M, 530M and 750M to predict 1B, and two variants without the largest
# one or two sizes; FIT_RUNS 'all' fits every proxy size and seed instead.
DATADECIDE_FIT_SIZES = ("150M", "300M", "530M", "750M")
FIT_RUNS = ("datadecide", "all")


def fit_variants(proxy: pd.DataFrame, fit_runs: str = "all", warnings: list | None = None
                 ) -> list[tuple[str, list[str], list[int]]]:
  """[(variant, sizes, seeds)] of the runs each scaling-law fit uses.

  fit_runs 'all': one variant, 'all', every proxy size and seed. 'datadecide': DataDecide's
  sizes (150M-750M when the table has at least two of them, else every proxy size) and the
  default seed (olmo_jax.sizes.DEFAULT_SEED, else the table's smallest seed, named in a
  warning): 'default' on all of them, 'no_<largest>' without the largest, and
  'no_<largest>_no_<next>' without the two largest (DataDecide's no_750M, no_750M_no_530M).
  """
  if fit_runs not in FIT_RUNS:
    raise ValueError(f"fit_runs={fit_runs!r}; choose one of {', '.join(FIT_RUNS)}")
  order = size_order(proxy)
  if fit_runs == "all":
    return [("all", order, sorted(int(x) for x in proxy["seed"].unique()))]
  base = [z for z in order if z in DATADECIDE_FIT_SIZES]
  base = base if len(base) >= 2 else order
  seeds = set(int(x) for x in proxy.loc[proxy["size"].isin(base), "seed"].unique())
  seed = sizes.DEFAULT_SEED if sizes.DEFAULT_SEED in seeds else min(seeds)
  if seed != sizes.DEFAULT_SEED:
    _warn(warnings, f"scaling laws: the default seed {sizes.DEFAULT_SEED} is not in the table; "
                    f"the fits use seed {seed} (DataDecide fits one seed)")
  out = [("default", base, [seed])]
  if len(base) >= 2:
    out.append((f"no_{base[-1]}", base[:-1], [seed]))
  if len(base) >= 3:
    out.append((f"no_{base[-1]}_no_{base[-2]}", base[:-2], [seed]))
  return out


def setup_label(setup: str, variant: str) -> str:
  """DataDecide's name of a setup fitted on a variant's sizes: 3_param-default + no_750M ->
  3_param-no_750M, 3_param-helper_points -> 3_param-no_750M-helper_points, 5_param-ai2 ->
  5_param-ai2-no_750M; variants 'default' and 'all' keep the setup's name."""
  if variant in ("default", "all"):
    return setup
  if "-default" in setup:
    return setup.replace("-default", f"-{variant}")
  law, _, rest = setup.partition("-")
  if law in ("3_param", "2_param") and "1_step" not in rest:
    return f"{law}-{variant}-{rest}"
  return f"{setup}-{variant}"


def scaling_law_predictions(table: pd.DataFrame, target: str, *, target_compute=None,
                            target_tokens=None, forms=("3p", "5p"), loss_metric=None,
                            tasks=None, warnings: list | None = None,
                            fit_runs: str = "all") -> pd.DataFrame:
  """Every recipe's predicted target score per (task, metric) and setup, as DataDecide fits.

  forms: DataDecide setup names (SETUPS) or the aliases 3p, 5p. fit_runs: which proxy runs
  the fits use (fit_variants: 'all', or 'datadecide': its sizes and default seed, in three
  variants). Step 1 fits each recipe's loss on one point per fit size (its runs' mean over
  their last 10% of checkpoints, then over the fit seeds); step 2 fits each recipe's sigmoid
  (least squares) on its runs' last 90% (or 50%) of checkpoints, optionally with the helper
  point; a fit with fewer points than parameters is not made (status 'under-determined ...',
  predicted NaN). The target size's rows are never fitted on. Columns: task, metric, setup
  (DataDecide's name, setup_label), form, variant, fit_sizes, recipe, loss_metric,
  predicted_loss, predicted, actual, abs_error, rel_error, n_points, status, compute (FLOPs of
  the recipe's runs the fit used), compute_fraction, largest_size, fit, step2 (JSON).
  """
  setups = [setup_name(f) for f in forms]
  proxy = table[table["size"] != target]
  tgt = target_scores(table, target) if (table["size"] == target).any() else None
  point = _target_point(table, target, target_compute, target_tokens)
  rows = []
  for variant, fit_sizes, seeds in fit_variants(proxy, fit_runs, warnings) if len(proxy) else []:
    runs = proxy[proxy["size"].isin(fit_sizes) & proxy["seed"].isin(seeds)]
    for task in sorted(runs["task"].unique()) if tasks is None else tasks:
      lm = loss_metric or default_loss_metric(runs, task)
      if lm is None:
        _warn(warnings, f"{task}: no loss-like metric (loss, bpb, ...) to fit step 1 on: "
                        f"no scaling-law prediction")
        continue
      rows += _task_predictions(runs[runs["task"] == task], task, lm, setups, variant,
                                fit_sizes, point, tgt)
  out = pd.DataFrame(rows)
  _warn_under(out, warnings)
  return out


def _task_predictions(trows, task, lm, setups, variant, fit_sizes, point, tgt) -> list[dict]:
  """The prediction rows of one task and fit variant (scaling_law_predictions)."""
  pts = _fit_points(trows)
  rows = []
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
      rows.append({"task": task, "metric": metric, "setup": setup_label(setup, variant),
                   "form": _short(setup), "variant": variant, "fit_sizes": ",".join(fit_sizes),
                   "recipe": recipe, "loss_metric": lm, **r, "actual": actual,
                   "abs_error": abs(r["predicted"] - actual),
                   "rel_error": abs(r["predicted"] - actual) / abs(actual) if actual
                   else np.nan, "compute": compute, "compute_fraction": compute / point[0],
                   "largest_size": fit_sizes[-1]})
  return rows


def _method(g: pd.DataFrame) -> str:
  """The decision-accuracy method of one setup's predictions: scaling_law_<form>, plus
  -<variant> for DataDecide's size variants other than the default."""
  variant = g["variant"].iloc[0] if "variant" in g else "all"
  return f"scaling_law_{g['form'].iloc[0]}" + ("" if variant in ("default", "all")
                                               else f"-{variant}")


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
                   "target_metric": tm, "method": _method(g),
                   "setup": setup, "fit_sizes": g["fit_sizes"].iloc[0] if "fit_sizes" in g
                   else "", **row, "step": "final", "compute": compute,
                   "compute_fraction": compute / c_target,
                   "mean_abs_error": float(ok["abs_error"].mean()) if len(ok) else np.nan,
                   "mean_rel_error": float(ok["rel_error"].mean()) if len(ok) else np.nan})
  return pd.DataFrame(rows)
