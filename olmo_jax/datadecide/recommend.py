"""The recommendation: the best recipe on the headline at the largest proxy size, with its
evidence (margin, confidence, agreeing metrics, scaling-law picks, the target's measured best)."""

from __future__ import annotations

import pandas as pd

from eval import metrics as metrics_lib
from olmo_jax.datadecide import confidence
from olmo_jax.datadecide.result import Analysis
from olmo_jax.datadecide.scores import primary_metric, target_scores


def recommend(res: Analysis, table: pd.DataFrame, n_boot: int = 1000) -> dict:
  """Best recipe at the largest proxy size on the headline metric, with its evidence."""
  task, metric = res.headline
  size = res.proxies[-1]
  rk = res.rankings
  cell = rk[(rk["size"] == size) & (rk["task"] == task) & (rk["metric"] == metric)]
  cell = cell.sort_values(["rank", "recipe"])
  best = cell.iloc[0]
  out = {"target_size": res.target, "decided_at_size": size,
         "headline": {"task": task, "metric": metric,
                      "higher_is_better": metrics_lib.higher_is_better(metric)},
         "best_recipe": best["recipe"], "best_score": float(best["mean"]),
         "ranking": [{"recipe": r["recipe"], "rank": int(r["rank"]), "mean": float(r["mean"]),
                      "std": float(r["std"]), "n_seeds": int(r["n_seeds"])}
                     for _, r in cell.iterrows()]}
  if len(cell) < 2:
    out.update({"confidence": None, "compared": False,
                "confidence_note": "one recipe: nothing was compared"})
  else:
    second = cell.iloc[1]
    out.update({"compared": True, "runner_up": second["recipe"],
                "margin": abs(float(best["mean"]) - float(second["mean"]))})
    out.update(_confidence(res, size, task, metric, best["recipe"], n_boot))
  out.update(_support(res, rk, size, best["recipe"]))
  out.update(_scaling_and_target(res, table, task, metric, out["best_recipe"]))
  return out


def _confidence(res: Analysis, size, task, metric, best, n_boot) -> dict:
  """The chance that the pick is the target's best (confidence.headline_confidence), and the
  measured decision accuracy of the headline at `size` against the target's primary."""
  c = confidence.headline_confidence(res.table, size, res.target, task, metric, best, n_boot)
  out = {"confidence": c["confidence"], "confidence_note": c["method"],
         "proxy_bootstrap": c["proxy_bootstrap"],
         "confidence_method": {k: c[k] for k in ("n_boot", "n_recipes")}}
  da = res.decision_accuracy_all
  row = da[(da["size"] == size) & (da["task"] == task) & (da["metric"] == metric)
           & (da["method"] == "single_scale") & (da["step"] == "final")
           & (da["protocol"] == "seed_mean")
           & (da["target_metric"] == primary_metric(task, [metric]))]
  if len(row):
    out["decision_accuracy_at_decided_size"] = float(row["decision_accuracy"].iloc[0])
  return out


def _support(res, rk, size, best) -> dict:
  """Which (task, metric) cells at `size` pick the same best recipe, with their SNR."""
  support = []
  snr = res.snr
  for (t, m), g in rk[rk["size"] == size].groupby(["task", "metric"]):
    g = g.sort_values(["rank", "recipe"])
    s = snr[(snr["size"] == size) & (snr["task"] == t) & (snr["metric"] == m)]["snr"]
    support.append({"task": t, "metric": m, "best_recipe": g.iloc[0]["recipe"],
                    "agrees": bool(g.iloc[0]["recipe"] == best),
                    "snr": float(s.iloc[0]) if len(s) else None})
  return {"supporting_metrics": support,
          "agreeing_metrics": f"{sum(s['agrees'] for s in support)} of {len(support)}"}


def _scaling_and_target(res, table, task, metric, best) -> dict:
  """The scaling laws' picks and, when the target was trained, its measured best."""
  out = {}
  sl = res.scaling_law
  if len(sl):
    h = sl[(sl["task"] == task) & (sl["metric"] == metric) & sl["predicted"].notna()]
    asc = not metrics_lib.higher_is_better(metric)
    out["scaling_law_best"] = {setup: g.sort_values("predicted", ascending=asc).iloc[0][
        "recipe"] for setup, g in h.groupby("setup", sort=False)}
  full = res.table
  if (full["size"] == res.target).any():
    tg = target_scores(full, res.target)
    tg = tg[(tg["task"] == task) & (tg["metric"] == metric)]
    if len(tg):
      asc = not metrics_lib.higher_is_better(metric)
      out["target_best_recipe"] = tg.sort_values("value", ascending=asc).iloc[0]["recipe"]
      out["matches_target"] = bool(out["target_best_recipe"] == best)
  return out
