"""The DataDecide report: report.md with PNG figures, recommendation.json, decision_accuracy.csv.

`write_report(table, target, output)` runs the analysis (analysis.py) on a results table and
writes, under `output/`:
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
import math
import os

import numpy as np
import pandas as pd

from olmo_jax import paths
from olmo_jax.datadecide import analysis as A
from olmo_jax.datadecide.results import InputError

DA_COLUMNS = ["size", "task", "metric", "method", "protocol", "decision_accuracy",
              "compute_fraction", "step", "std", "n_seeds", "n_pairs", "missing",
              "target_metric", "compute", "n_runs", "n_target_ties", "setup",
              "mean_abs_error", "mean_rel_error"]


def _fmt(v, digits=3) -> str:
  if isinstance(v, (float, np.floating)):
    if math.isnan(v):
      return "-"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
      return f"{v:.3g}"
    return f"{v:.{digits}f}"
  return str(v)


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
  """A GitHub-flavoured markdown table of a DataFrame (index not included)."""
  cols = [str(c) for c in df.columns]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for row in df.itertuples(index=False):
    lines.append("| " + " | ".join(_fmt(v, digits) for v in row) + " |")
  return "\n".join(lines)


def check_inputs(table: pd.DataFrame, target: str, headline: str | None = None,
                 recipes=None, sizes_=None, target_metrics=()) -> None:
  """Rejects a target size, recipe, size, headline or target metric the table does not hold
  (InputError)."""
  present = A.size_order(table)
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
             if m not in (A.TARGET_PRIMARY, A.TARGET_SAME) and m not in have]
  if unknown:
    raise InputError(f"--target_metric {', '.join(unknown)}: no such metric in the table; it "
                     f"has {', '.join(sorted(have))} (or use 'primary' / 'same')")
  if headline == f"{A.MACRO_TASK}/{A.MACRO_METRIC}" and table["task"].nunique() < 2:
    raise InputError(f"--headline {headline}: the macro average needs two or more tasks; "
                     f"name a TASK/METRIC")
  if headline and headline != f"{A.MACRO_TASK}/{A.MACRO_METRIC}":
    task, _, metric = headline.partition("/")
    if not ((table["task"] == task) & (table["metric"] == metric)).any():
      raise InputError(f"--headline {headline}: no rows with task {task!r} and metric "
                       f"{metric!r}; write it as TASK/METRIC")


def analyse(table: pd.DataFrame, target: str, *, last_k: int = 1, headline: str | None = None,
            forms=("3p", "5p"), noise_checkpoints: int = 5,
            target_metrics=A.DEFAULT_TARGET_METRICS, ties: str = "half") -> dict:
  """Every analysis of the report, as DataFrames, plus the warnings list.

  `decision_accuracy` holds the rows whose target metric is the proxy metric itself (what the
  figures draw); `decision_accuracy_all` every row (decision_accuracy.csv). `scaling_law`
  holds the fitted predictions, `scaling_law_all` under-determined ones too (the CSV).
  `table` is the input plus the macro task's rows.
  """
  w: list[str] = []
  if table["recipe"].nunique() < 2:
    w.append(f"only one recipe ({table['recipe'].iloc[0]}): nothing was compared; the "
             f"'recommendation' is that recipe by default, not a decision")
  macro = A.macro_table(table) if table["task"].nunique() > 1 else table.iloc[0:0]
  full = pd.concat([table, macro], ignore_index=True) if len(macro) else table
  sizes_ = A.size_order(table)
  proxies = [s for s in sizes_ if s != target]
  single = A.decision_accuracy(full, target, last_k=last_k, warnings=w,
                               target_metrics=target_metrics, ties=ties)
  ckpt = A.checkpoint_decision_accuracy(full, target, target_metrics=target_metrics, ties=ties)
  finals = (table[table["size"] != target].groupby("size")["step"].max())
  ckpt = ckpt[ckpt["step"] < ckpt["size"].map(finals)] if len(ckpt) else ckpt
  preds = A.scaling_law_predictions(table, target, forms=forms, warnings=w)
  sl = (A.scaling_law_decision_accuracy(preds, table, target, warnings=w,
                                        target_metrics=target_metrics, ties=ties)
        if len(preds) else pd.DataFrame())
  da = pd.concat([single, ckpt, sl], ignore_index=True)
  da = da[[c for c in DA_COLUMNS if c in da.columns]]
  snr = A.snr(full, noise_checkpoints=noise_checkpoints, warnings=w)
  task, metric = _headline(full, headline)
  ranks = A.rankings(full, last_k=last_k, warnings=w)
  same = da[da["target_metric"] == da["metric"]] if "target_metric" in da else da
  single_same = same[same["method"] == "single_scale"]
  return {"target": target, "sizes": sizes_, "proxies": proxies, "headline": (task, metric),
          "decision_accuracy": same.reset_index(drop=True), "decision_accuracy_all": da,
          "frontier": A.frontier(da[da["method"] == "single_scale"]),
          "frontier_same": A.frontier(single_same),
          "scaling_law": preds[preds["status"] == "ok"] if len(preds) else preds,
          "scaling_law_all": preds,
          "scaling_law_da": sl, "snr": snr, "rankings": ranks,
          "rank_agreement": A.rank_agreement(full, task, metric, last_k), "warnings": w,
          "last_k": last_k, "ties": ties, "table": full}


def _headline(full: pd.DataFrame, headline: str | None) -> tuple[str, str]:
  """(task, metric) of the recommendation: the user's, else the macro average of the tasks'
  primary metrics, else the only task's primary metric (never chosen by SNR)."""
  if headline:
    task, _, metric = headline.partition("/")
    return task, metric
  if (full["task"] == A.MACRO_TASK).any():
    return A.MACRO_TASK, A.MACRO_METRIC
  task = sorted(full["task"].unique())[0]
  metrics = sorted(full.loc[full["task"] == task, "metric"].unique())
  return task, A.primary_metric(task, metrics) or metrics[0]


def recommend(res: dict, table: pd.DataFrame, n_boot: int = 1000) -> dict:
  """Best recipe at the largest proxy size on the headline metric, with its evidence."""
  task, metric = res["headline"]
  size = res["proxies"][-1]
  rk = res["rankings"]
  cell = rk[(rk["size"] == size) & (rk["task"] == task) & (rk["metric"] == metric)]
  cell = cell.sort_values(["rank", "recipe"])
  best = cell.iloc[0]
  out = {"target_size": res["target"], "decided_at_size": size,
         "headline": {"task": task, "metric": metric,
                      "higher_is_better": A.higher_is_better(metric)},
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


def _confidence(res, size, task, metric, best, n_boot) -> dict:
  """The bootstrap confidence (analysis.bootstrap_best) over the headline's tasks and seeds."""
  full = res["table"]
  if task == A.MACRO_TASK:  # the macro: resample the tasks it averages and their seeds
    prim = {t: A.primary_metric(t, g["metric"].unique())
            for t, g in full[full["task"] != A.MACRO_TASK].groupby("task")}
    parts = [(t, m) for t, m in prim.items() if m is not None]
  else:
    parts = [(task, metric)]
  sub = full[full["size"] == size]
  s = A.run_scores(pd.concat([sub[(sub["task"] == t) & (sub["metric"] == m)]
                              for t, m in parts]))
  if s["task"].nunique() < 2 and s.groupby("recipe")["seed"].nunique().max() < 2:
    return {"confidence": None,
            "confidence_note": "one task and one seed: nothing to resample the margin by"}
  b = A.bootstrap_best(s, best, A.higher_is_better(metric), n_boot)
  return {"confidence": b["confidence"], "confidence_note": b["method"],
          "confidence_method": {k: b[k] for k in ("n_boot", "n_tasks", "n_seeds")}}


def _support(res, rk, size, best) -> dict:
  """Which (task, metric) cells at `size` pick the same best recipe, with their SNR."""
  support = []
  snr = res["snr"]
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
  sl = res["scaling_law"]
  if len(sl):
    h = sl[(sl["task"] == task) & (sl["metric"] == metric) & sl["predicted"].notna()]
    for form, g in h.groupby("form"):
      asc = not A.higher_is_better(metric)
      out[f"scaling_law_{form}_best"] = g.sort_values("predicted", ascending=asc).iloc[0][
          "recipe"]
  full = res["table"]
  if (full["size"] == res["target"]).any():
    tg = A.target_scores(full, res["target"])
    tg = tg[(tg["task"] == task) & (tg["metric"] == metric)]
    if len(tg):
      asc = not A.higher_is_better(metric)
      out["target_best_recipe"] = tg.sort_values("value", ascending=asc).iloc[0]["recipe"]
      out["matches_target"] = bool(out["target_best_recipe"] == best)
  return out


# ---------------------------------------------------------------------------------------------
# Figures


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
TOP_K = 8  # recipes drawn in colour when there are more than 10; the rest are grey


def recipe_styles(recipes: list[str], order: list[str] | None = None, top_k: int = TOP_K
                  ) -> dict[str, dict]:
  """{recipe: matplotlib style}: up to 10 recipes each get a colour and a marker of their
  own; beyond that the first `top_k` of `order` (the ranking) do, and the rest are grey."""
  plt = _plt()
  cmap = plt.get_cmap("tab10")
  order = [r for r in (order or []) if r in recipes] + sorted(set(recipes) - set(order or []))
  shown = order if len(recipes) <= 10 else order[:top_k]
  out = {}
  for i, r in enumerate(shown):
    out[r] = {"color": cmap(i % 10), "marker": MARKERS[i % len(MARKERS)], "alpha": 0.85,
              "lw": 1.4, "zorder": 4, "label": r}
  for r in order[len(shown):]:
    out[r] = {"color": "0.65", "marker": ".", "alpha": 0.35, "lw": 0.7, "zorder": 2,
              "label": None}
  return out


def _headline_order(res: dict) -> list[str]:
  """Recipes best first on the headline metric at the largest proxy size."""
  task, metric = res["headline"]
  rk = res["rankings"]
  cell = rk[(rk["size"] == res["proxies"][-1]) & (rk["task"] == task) & (rk["metric"] == metric)]
  return list(cell.sort_values(["rank", "recipe"])["recipe"])


def _legend_outside(fig, ax_or_fig, handles, labels, title: str, n_grey: int) -> None:
  import matplotlib.lines as mlines
  if n_grey:
    handles = list(handles) + [mlines.Line2D([], [], color="0.65", marker=".", lw=0.7)]
    labels = list(labels) + [f"{n_grey} other recipes"]
  ax_or_fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
                   title=title, title_fontsize=7, frameon=False)


def _fitted_ylim(ax, values, pad: float = 0.06) -> None:
  v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
  if len(v):
    lo, hi = float(v.min()), float(v.max())
    span = (hi - lo) or abs(hi) * 0.1 or 1.0
    ax.set_ylim(lo - pad * span, hi + pad * span)


def _fit_curve(sl: pd.DataFrame, task: str, metric: str, recipe: str, cs: np.ndarray):
  """The recipe's 3p law (through its sigmoid for a metric), or None when it was not fitted."""
  if not len(sl):
    return None
  f = sl[(sl["task"] == task) & (sl["form"] == "3p") & (sl["recipe"] == recipe)
         & (sl["metric"] == metric)]
  fit = json.loads(f.iloc[0]["fit"]) if len(f) else None
  if not fit:
    return None
  y = A.power_law_3p(cs, fit)
  step2 = json.loads(f.iloc[0]["step2"])
  return y if step2 is None else A.sigmoid(y, step2)


def _scaling_panels(table: pd.DataFrame, res: dict) -> list[str]:
  task, metric = res["headline"]
  lm = A.default_loss_metric(table, task)
  panels = [m for m in dict.fromkeys([lm, metric]) if m]
  if len(panels) == 1:  # the headline is the loss: show the task's best-SNR accuracy too
    snr = res["snr"]
    other = snr[(snr["task"] == task) & (snr["size"] == res["proxies"][-1])
                & snr["metric"].map(A.higher_is_better)].sort_values("snr", ascending=False)
    panels += list(other["metric"].head(1))
  return panels


def fig_scaling(table: pd.DataFrame, res: dict, path: str) -> str:
  """Loss and headline metric vs compute per recipe, with the fitted 3-parameter curves.

  Top row: the values; bottom row: each recipe's difference from the mean of all recipes at
  the same checkpoint, where a large grid's recipes can be told apart. Up to 10 recipes: a
  colour and marker each; more: the best 8 at the largest proxy in colour (legend in rank
  order), the others grey. y-limits follow the measured points (curves may leave the frame).
  """
  plt = _plt()
  table = res.get("table", table)  # with the macro task where the analysis adds one
  task = res["headline"][0]
  panels = _scaling_panels(table, res)
  recipes = sorted(table["recipe"].unique())
  order = _headline_order(res)
  styles = recipe_styles(recipes, order)
  fig, axes = plt.subplots(2, len(panels), figsize=(5.6 * len(panels) + 2.4, 7.6),
                           squeeze=False, sharex=True, layout="constrained",
                           height_ratios=(3, 2))
  handles = {}
  for j, m in enumerate(panels):
    handles.update(_scaling_panel(axes[0][j], axes[1][j], table, res, task, m, recipes,
                                  styles))
  ranked = [r for r in order if r in handles] + sorted(set(handles) - set(order))
  n_grey = sum(1 for r in recipes if not styles[r]["label"])
  title = "recipe (star = target)" + (f"\nbest {len(handles)} at {res['proxies'][-1]} in "
                                      f"colour, by rank" if n_grey else "")
  _legend_outside(fig, axes[0][-1], [handles[r] for r in ranked],
                  [f"{i + 1}. {r}" if n_grey else r for i, r in enumerate(ranked)], title,
                  n_grey)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def _scaling_panel(ax, dax, table, res, task, m, recipes, styles) -> dict:
  """One metric: values (ax) and differences from the recipes' mean (dax); legend handles."""
  sub = table[(table["task"] == task) & (table["metric"] == m)]
  pts = sub.groupby(["recipe", "size", "step"], as_index=False).agg(
      value=("value", "mean"), compute=("compute", "mean"))
  pts["diff"] = pts["value"] - pts.groupby(["size", "step"])["value"].transform("mean")
  proxy = pts[pts["size"] != res["target"]]
  t_compute = table[table["size"] == res["target"]]["compute"].max()
  cs = np.logspace(np.log10(proxy["compute"][proxy["compute"] > 0].min()),
                   np.log10(t_compute), 60) if len(proxy) else None
  handles, drawn = {}, False
  for r in sorted(recipes, key=lambda r: styles[r]["zorder"]):
    st = styles[r]
    kw = {"color": st["color"], "marker": st["marker"], "alpha": st["alpha"],
          "zorder": st["zorder"], "linewidths": 0}
    p = proxy[proxy["recipe"] == r]
    h = ax.scatter(p["compute"], p["value"], s=12, **kw)
    dax.scatter(p["compute"], p["diff"], s=10, **kw)
    if st["label"]:
      handles[r] = h
    q = pts[(pts["recipe"] == r) & (pts["size"] == res["target"])]
    if len(q):
      q = q[q["step"] == q["step"].max()]
      for a, col in ((ax, "value"), (dax, "diff")):
        a.scatter(q["compute"], q[col], s=80 if st["label"] else 30, marker="*",
                  color=st["color"], edgecolor="black", linewidth=0.5, zorder=6)
    y = _fit_curve(res["scaling_law"], task, m, r, cs) if cs is not None else None
    if y is not None:
      drawn = True
      ax.plot(cs, y, color=st["color"], lw=st["lw"], alpha=min(1.0, st["alpha"] + 0.1),
              zorder=st["zorder"])
  _fitted_ylim(ax, pts["value"])
  _fitted_ylim(dax, pts["diff"])
  ax.set_xscale("log")
  ax.set_ylabel(m)
  dax.set_ylabel(f"{m} - mean of recipes", fontsize=8)
  dax.axhline(0, color="black", lw=0.6)
  dax.set_xlabel("training compute of one run (FLOPs, 6ND)")
  fit = "3-param L(C)" if not A.higher_is_better(m) else "L(C) then sigmoid"
  ax.set_title(f"{task}: {m} (" + (f"fit: {fit}" if drawn else "no fit drawn: under-determined")
               + ")", fontsize=10)
  for a in (ax, dax):
    a.grid(alpha=0.3)
  return handles


def spent_fraction(da: pd.DataFrame) -> pd.Series:
  """Compute each row's protocol spent, as a fraction of one target run.

  per_seed: one proxy run; seed_mean: every seed's run (n_seeds x one run). Tables whose rows
  already count the protocol's runs (an `n_runs` column) are taken as they are.
  """
  if "n_runs" in da.columns:
    return da["compute_fraction"].astype(float)
  mult = np.where((da["protocol"] == "seed_mean") & da["n_seeds"].notna(),
                  da["n_seeds"].fillna(1).astype(float), 1.0)
  return da["compute_fraction"].astype(float) * mult


def _da_cells(res: dict, ok: pd.DataFrame, da: pd.DataFrame):
  """(task, metric) panels to draw (headline first), and those omitted (nothing defined)."""
  h = res["headline"]
  snr = res["snr"]  # every task x metric of the table, decided or not
  every = sorted(set(zip(da["task"], da["metric"])) | set(zip(snr["task"], snr["metric"])))
  every = [h] * (h in every) + [c for c in every if c != h]
  have = set(zip(ok["task"], ok["metric"]))
  return [c for c in every if c in have], [c for c in every if c not in have]


def thin_labels(pos: dict[str, float], min_gap_decades: float = 0.2) -> list[tuple]:
  """[(x, name)] left to right, skipping a name closer than `min_gap_decades` (log10 x) to the
  previous one kept, so labels on a log axis never collide."""
  keep, last = [], -np.inf
  for name, x in sorted(pos.items(), key=lambda kv: kv[1]):
    if x > 0 and np.log10(x) - last >= min_gap_decades:
      keep.append((x, name))
      last = np.log10(x)
  return keep


def _size_axis(ax, fin: pd.DataFrame, names: bool) -> None:
  """Marks the sizes' final checkpoints on a top axis, named (thinned) when `names`."""
  from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator
  pos = fin.groupby("size")["x"].min().to_dict()
  keep = thin_labels(pos)
  top = ax.secondary_xaxis("top")
  top.set_xscale("log")
  top.xaxis.set_major_locator(FixedLocator([x for x, _ in keep]))
  top.xaxis.set_major_formatter(FixedFormatter([s if names else "" for _, s in keep]))
  top.xaxis.set_minor_locator(NullLocator())
  top.tick_params(length=3, pad=1, labelsize=6, labelrotation=90)


DA_MARKS = {"per_seed": ("o", "tab:blue"), "seed_mean": ("s", "tab:orange")}
LAW_STYLES = [("*", "tab:green"), ("P", "tab:red"), ("X", "tab:purple"), ("D", "tab:brown"),
              ("v", "tab:pink"), ("^", "tab:olive"), ("<", "tab:cyan"), (">", "0.3")]


def _da_panel(ax, d: pd.DataFrame, laws: list[str], task: str, metric: str,
              size_names: bool) -> list[float]:
  """One task x metric: single-scale points, frontier, scaling laws; returns the y values."""
  from matplotlib.ticker import NullFormatter
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow log range labels its minor ticks
  ys = []
  for proto, (mk, col) in DA_MARKS.items():
    p = d[(d["method"] == "single_scale") & (d["protocol"] == proto)]
    inter, fin = p[p["step"] != "final"], p[p["step"] == "final"]
    ax.scatter(inter["x"], inter["decision_accuracy"], s=6, color=col, alpha=0.25, marker=mk,
               linewidths=0)
    ax.scatter(fin["x"], fin["decision_accuracy"], s=22, color=col, marker=mk,
               edgecolor="black", linewidth=0.4, zorder=4, label=f"single scale, {proto}")
    ys += list(p["decision_accuracy"])
    if proto == "per_seed" and "std" in fin and fin["std"].notna().any():
      ax.errorbar(fin["x"], fin["decision_accuracy"], yerr=fin["std"], fmt="none", ecolor=col,
                  alpha=0.5, lw=0.8)
      ys += list(fin["decision_accuracy"] - fin["std"].fillna(0))
    front = A.frontier(p.assign(compute_fraction=p["x"]))
    if len(front):
      front = front.sort_values("compute_fraction")
      ax.step(front["compute_fraction"], front["decision_accuracy"], where="post", color=col,
              lw=0.9, alpha=0.8)
  for method, (mk, col) in zip(laws, LAW_STYLES):
    p = d[d["method"] == method]
    ax.scatter(p["x"], p["decision_accuracy"], s=60, marker=mk, color=col, edgecolor="black",
               linewidth=0.4, zorder=5, label=method)
    ys += list(p["decision_accuracy"])
  single = d[(d["method"] == "single_scale") & (d["step"] == "final")]
  if len(single):
    _size_axis(ax, single[single["protocol"] == "per_seed"], size_names)
  ax.axhline(0.5, color="grey", lw=0.7, ls=":")
  ax.set_title(f"{task} / {metric}", fontsize=8)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)
  return ys


def fig_decision_accuracy(res: dict, path: str, cols: int = 6) -> str:
  """Decision accuracy vs the compute each protocol spent, one panel per task and metric.

  Every task x metric with a defined decision accuracy is drawn; the others are named in the
  title. x: compute spent / one target run (seed_mean pays for every seed's run), sizes named
  on the top axis; y-limits fitted to the points.
  """
  plt = _plt()
  da = res["decision_accuracy"]
  ok = da[da["decision_accuracy"].notna() & (da["compute_fraction"] > 0)].copy()
  ok["x"] = spent_fraction(ok)
  cells, omitted = _da_cells(res, ok, da)
  if not cells:  # e.g. every recipe tied at the target: nothing to draw
    return _empty_figure(path, "no decision accuracy is defined (all target pairs tied?)")
  laws = sorted(m for m in ok["method"].unique() if m != "single_scale")
  cols = min(cols, len(cells))
  rows = math.ceil(len(cells) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols + 1.8, 2.7 * rows + 1.2),
                           squeeze=False, layout="constrained")
  for i, (ax, (task, metric)) in enumerate(zip(axes.flat, cells)):
    d = ok[(ok["task"] == task) & (ok["metric"] == metric)]
    ys = _da_panel(ax, d, laws, task, metric, size_names=i < cols)
    _fitted_ylim(ax, ys + [0.5, 1.0], pad=0.05)
  for ax in list(axes.flat)[len(cells):]:
    ax.axis("off")
  for ax in axes[:, 0]:
    ax.set_ylabel("decision accuracy", fontsize=8)
  for ax in axes[-1, :]:
    ax.set_xlabel("compute spent / one target run", fontsize=8)
  handles, labels = axes.flat[0].get_legend_handles_labels()
  for ax in list(axes.flat)[1:len(cells)]:
    for h, lab in zip(*ax.get_legend_handles_labels()):
      if lab not in labels:
        handles.append(h)
        labels.append(lab)
  _legend_outside(fig, axes[0][-1], handles, labels, "prediction", 0)
  title = (f"Decision accuracy vs compute (target {res['target']}; {len(cells)} task x metric "
           f"panels)")
  if omitted:
    title += "\nnot drawn (no untied target pair): " + ", ".join(f"{t}/{m}" for t, m in omitted)
  fig.suptitle(title + "\nsizes (final checkpoints, per_seed) on the top axes", fontsize=11)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def _empty_figure(path: str, text: str) -> str:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 2))
  ax.axis("off")
  ax.text(0.5, 0.5, text, ha="center", va="center")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def fig_rank_agreement(res: dict, path: str) -> str:
  """Heatmap: pairwise order agreement between the rankings of every two sizes."""
  plt = _plt()
  m = res["rank_agreement"]
  k = len(m)
  cell = 1.2 if k <= 6 else 0.62
  fig, ax = plt.subplots(figsize=(cell * k + 2.5, cell * k + 1.8))
  im = ax.imshow(m.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
  ax.set_xticks(range(k), m.columns, rotation=45 if k > 6 else 0, ha="right" if k > 6 else
                "center", fontsize=8)
  ax.set_yticks(range(k), m.index, fontsize=8)
  for i in range(k):
    for j in range(k):
      v = m.iloc[i, j]
      ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
              color="white" if (not np.isnan(v) and v < 0.6) else "black",
              fontsize=9 if k <= 6 else 6.5)
  task, metric = res["headline"]
  ax.set_title(f"Rank agreement between sizes\n{task} / {metric}", fontsize=10)
  fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of recipe pairs ordered alike")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------------------------
# The report


def write_report(table: pd.DataFrame, target: str, output: str, *, last_k: int = 1,
                 headline: str | None = None, forms=("3p", "5p"),
                 noise_checkpoints: int = 5, title: str = "DataDecide report",
                 recipes: dict | None = None, target_metrics=A.DEFAULT_TARGET_METRICS,
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
  res = analyse(table, target, last_k=last_k, headline=headline, forms=forms,
                noise_checkpoints=noise_checkpoints, target_metrics=target_metrics, ties=ties)
  res["warnings"][:0] = list(warnings or ())
  rec = recommend(res, table, n_boot)
  os.makedirs(output, exist_ok=True)
  _atomic_csv(res["decision_accuracy_all"], os.path.join(output, "decision_accuracy.csv"))
  for name, key in (("scaling_law", "scaling_law_all"), ("rankings", "rankings"),
                    ("snr", "snr"), ("frontier", "frontier")):
    _atomic_csv(res[key], os.path.join(output, f"{name}.csv"))
  figs = {"scaling": fig_scaling(res["table"], res, os.path.join(output, "fig_scaling.png")),
          "da": fig_decision_accuracy(res, os.path.join(output, "fig_decision_accuracy.png")),
          "rank": fig_rank_agreement(res, os.path.join(output, "fig_rank_agreement.png"))}
  rec["warnings"] = res["warnings"]
  _atomic_text(json.dumps(rec, indent=2, default=_json_default) + "\n",
               os.path.join(output, "recommendation.json"))
  _atomic_text(render_markdown(table, res, rec, figs, title, recipes),
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


def recipes_markdown(table: pd.DataFrame, recipes: dict) -> list[str]:
  """The Recipes section: each recipe of the table with its data and curation chain."""
  def cell(v) -> str:
    return " ".join(str(v).split()).replace("|", "\\|")  # '|' separates globs in paths
  lines = ["## Recipes", "", "| recipe | data | curation chain |", "|---|---|---|"]
  for r in sorted(table["recipe"].unique()):
    d = recipes.get(r)
    data, chain = (d.get("data", "-"), d.get("curation", "-")) if d else (
        "(not in the recipes file)", "-")
    lines.append(f"| {cell(r)} | {cell(data)} | {cell(chain)} |")
  return lines + [""]


def primary_tables(res: dict, protocol: str) -> dict[str, pd.DataFrame]:
  """{task: metric x proxy size table} of decision accuracy against each task's primary
  metric (single scale, final checkpoints), plus 'macro average' (mean over the tasks)."""
  da = res["decision_accuracy_all"]
  fin = da[(da["method"] == "single_scale") & (da["step"] == "final")
           & (da["protocol"] == protocol) & (da["task"] != A.MACRO_TASK)]
  full = res["table"]
  prim = {t: A.primary_metric(t, g["metric"].unique()) for t, g in full.groupby("task")}
  fin = fin[fin["target_metric"] == fin["task"].map(prim)]
  order = [z for z in res["proxies"] if z in set(fin["size"])]
  out = {}
  for t, g in fin.groupby("task"):
    out[f"{t} (vs {prim[t]})"] = g.pivot_table(
        index="metric", columns="size", values="decision_accuracy",
        dropna=False).reindex(columns=order)
  if fin["task"].nunique() > 1:
    out["macro average"] = fin.pivot_table(index="metric", columns="size",
                                           values="decision_accuracy", aggfunc="mean",
                                           dropna=False).reindex(columns=order)
  return out


def primary_markdown(res: dict) -> list[str]:
  """The paper's view: proxy metric x proxy size -> decision accuracy vs the primary metric."""
  lines = [f"## Decision accuracy against the target's primary metric ({res['target']})", "",
           "Each proxy metric at each proxy size ranks the recipes; the score is the share of "
           "recipe pairs ordered as the target's primary metric orders them. The macro average "
           "is the mean over tasks.", ""]
  for protocol in A.PROTOCOLS:
    for name, piv in primary_tables(res, protocol).items():
      if name != "macro average" and protocol != "per_seed":
        continue  # per task: per_seed only (the paper's protocol), to keep the report short
      lines += [f"{name}, {protocol}:", "", markdown_table(piv.reset_index()), ""]
  snr = res["snr"]
  da = res["decision_accuracy_all"]
  size = res["proxies"][-1]
  fin = da[(da["method"] == "single_scale") & (da["step"] == "final") & (da["size"] == size)
           & (da["protocol"] == "per_seed")]
  side = fin.merge(snr[snr["size"] == size][["task", "metric", "snr"]], on=["task", "metric"])
  if len(side):
    lines += [f"Decision accuracy (per_seed) and SNR at {size}:", "",
              markdown_table(side[["task", "metric", "target_metric", "decision_accuracy",
                                   "snr"]]), ""]
  return lines


def _md_summary(table: pd.DataFrame, res: dict, title: str) -> list[str]:
  """The title and what the table holds."""
  task, metric = res["headline"]
  target = res["target"]
  lines: list[str] = []
  lines += [f"# {title}", ""]
  scored = ("final checkpoint" if res["last_k"] == 1
            else f"mean of its last {res['last_k']} checkpoints")
  lines += [f"Results: {table['recipe'].nunique()} recipes, sizes {', '.join(res['sizes'])}, "
            f"{table['seed'].nunique()} seed(s), {table['task'].nunique()} task(s), "
            f"{table['metric'].nunique()} metric(s), {len(table)} rows. Target size: "
            f"**{target}**. Headline: **{task} / {metric}** "
            f"({'higher' if A.higher_is_better(metric) else 'lower'} is better"
            + ("; the mean over tasks of each task's primary metric" if task == A.MACRO_TASK
               else "") + f"). Scores are each run's {scored}. Ties: `{res['ties']}`.", ""]
  return lines


def _md_recommendation(res: dict, rec: dict) -> list[str]:
  """The recommended recipe, its confidence and what agrees with it."""
  task, metric = res["headline"]
  target = res["target"]
  lines: list[str] = []
  lines += ["## Recommendation", ""]
  if not rec.get("compared", True):
    lines += [f"**Warning: only one recipe ({rec['best_recipe']}) is in the table: nothing "
              f"was compared, so this is not a decision.**", ""]
  lines.append(f"- Best recipe at {rec['decided_at_size']}: **{rec['best_recipe']}** "
               f"({metric} {_fmt(rec['best_score'], 4)})")
  if "runner_up" in rec:
    conf = rec.get("confidence")
    lines.append(f"- Runner-up: {rec['runner_up']}, margin {_fmt(rec['margin'], 4)}; "
                 f"confidence {('%.3f' % conf) if conf is not None else 'n/a'}")
    lines.append(f"- Confidence method: {rec['confidence_note']}")
  lines.append(f"- Metrics at {rec['decided_at_size']} that pick the same recipe: "
               f"{rec['agreeing_metrics']}")
  for form in ("3p", "5p"):
    if f"scaling_law_{form}_best" in rec:
      lines.append(f"- Scaling law ({form}) predicts best at {target}: "
                   f"{rec[f'scaling_law_{form}_best']}")
  if "target_best_recipe" in rec:
    lines.append(f"- Best at the target {target} (measured): {rec['target_best_recipe']} "
                 f"({'matches' if rec['matches_target'] else 'does NOT match'} the "
                 f"recommendation)")
  lines.append("")
  return lines


def _md_rankings(res: dict) -> list[str]:
  """The headline's ranking of the recipes at every size."""
  task, metric = res["headline"]
  lines: list[str] = []
  lines += [f"## Rankings ({task} / {metric}, seed mean +- population std)", ""]
  rk = res["rankings"]
  rk = rk[(rk["task"] == task) & (rk["metric"] == metric)]
  wide = {}
  for _, r in rk.iterrows():
    wide.setdefault(r["recipe"], {})[r["size"]] = f"{r['rank']}. {_fmt(r['mean'], 4)} +- " \
                                                  f"{_fmt(r['std'], 4)}"
  order = [s for s in res["sizes"] if s in set(rk["size"])]
  wt = pd.DataFrame([{"recipe": k, **{s: v.get(s, "missing") for s in order}}
                     for k, v in sorted(wide.items())])
  lines += [markdown_table(wt), ""]
  return lines


def _md_decision_accuracy(res: dict, figs: dict) -> list[str]:
  """Decision accuracy of the headline and of every task and metric, with its figure."""
  task, metric = res["headline"]
  target = res["target"]
  da = res["decision_accuracy"]
  lines: list[str] = []
  lines += [f"## Decision accuracy against {target} (same metric)", ""]
  fin = da[(da["step"] == "final") & (da["task"] == task) & (da["metric"] == metric)]
  if len(fin):
    show = fin[["size", "method", "protocol", "decision_accuracy", "std", "n_seeds",
                "n_pairs", "compute_fraction"]]
    lines += [f"{task} / {metric} (per_seed: mean and population std over seeds):", "",
              markdown_table(show), ""]
  big = da[(da["step"] == "final") & (da["method"] == "single_scale")
           & (da["size"] == res["proxies"][-1])]
  if len(big):
    piv = big.pivot_table(index=["task", "metric"], columns="protocol",
                          values="decision_accuracy").reset_index()
    lines += [f"Every task and metric at {res['proxies'][-1]} (single scale):", "",
              markdown_table(piv), ""]
  lines += [f"![decision accuracy vs compute]({os.path.basename(figs['da'])})", "",
            "Each panel (every task and metric; any without a defined decision accuracy is "
            "named in the title): decision accuracy against the compute the prediction spent, "
            "as a fraction of one target run: one proxy run for per_seed, every seed's run for "
            "seed_mean. Sizes are named on the top axis. Small faint points are intermediate "
            "checkpoints, large points each size's final checkpoint (error bars: std over "
            "seeds), lines the frontier; the large markers of other shapes are the scaling-law "
            "predictions (compute of all proxy sizes together).", ""]
  return lines


def _md_scaling(res: dict, figs: dict) -> list[str]:
  """The two-step scaling-law predictions and their figure."""
  task, metric = res["headline"]
  target = res["target"]
  lines: list[str] = []
  sl = res["scaling_law_da"]
  if len(sl):
    lines += ["## Two-step scaling-law prediction", ""]
    h = sl[(sl["task"] == task)]
    lines += [markdown_table(h[["task", "metric", "target_metric", "setup", "decision_accuracy",
                                "missing", "mean_abs_error", "mean_rel_error",
                                "compute_fraction"]]), ""]
    p = res["scaling_law"]
    p = p[(p["task"] == task) & (p["metric"] == metric)]
    if len(p):
      lines += [f"Predicted vs measured {metric} at {target}:", "",
                markdown_table(p[["recipe", "form", "predicted_loss", "predicted", "actual",
                                  "rel_error"]], 4), ""]
  lines += [f"![metric vs compute]({os.path.basename(figs['scaling'])})", "",
            "Points: seed-mean scores of every checkpoint of the proxy runs; stars: the target "
            "runs; lines: the fitted 3-parameter law per recipe (step 2 through the sigmoid), "
            "extrapolated to the target's compute.", ""]
  return lines


def _md_agreement_snr_warnings(res: dict, figs: dict) -> list[str]:
  """Rank agreement, signal to noise and the warnings."""
  lines: list[str] = []
  lines += ["## Rank agreement between sizes", "",
            f"![rank agreement]({os.path.basename(figs['rank'])})", "",
            "Fraction of recipe pairs that two sizes order the same way (seed means, final "
            "checkpoints).", ""]
  snr = res["snr"]
  lines += [f"## Signal to noise at {res['proxies'][-1]}", ""]
  s = snr[snr["size"] == res["proxies"][-1]].sort_values("snr", ascending=False)
  lines += [markdown_table(s[["task", "metric", "signal", "noise", "snr", "n_recipes"]]), ""]
  lines += ["## Warnings", ""]
  lines += [f"- {w}" for w in res["warnings"]] or ["- none"]
  lines.append("")
  return lines


def render_markdown(table: pd.DataFrame, res: dict, rec: dict, figs: dict, title: str,
                    recipes: dict | None = None) -> str:
  """report.md: summary, recipes, recommendation, rankings, decision accuracy, scaling laws,
  rank agreement, SNR and warnings."""
  lines = _md_summary(table, res, title)
  if recipes is not None:
    lines += recipes_markdown(table, recipes)
  lines += _md_recommendation(res, rec)
  lines += _md_rankings(res)
  lines += primary_markdown(res)
  lines += _md_decision_accuracy(res, figs)
  lines += _md_scaling(res, figs)
  lines += _md_agreement_snr_warnings(res, figs)
  return "\n".join(lines)
