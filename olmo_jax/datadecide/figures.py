"""The report's figures (matplotlib, Agg backend): metric vs compute with the scaling laws,
decision accuracy vs compute, rank agreement between sizes."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from olmo_jax.datadecide import analysis as A
from olmo_jax.datadecide.result import Analysis


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


def _headline_order(res: Analysis) -> list[str]:
  """Recipes best first on the headline metric at the largest proxy size."""
  task, metric = res.headline
  rk = res.rankings
  cell = rk[(rk["size"] == res.proxies[-1]) & (rk["task"] == task) & (rk["metric"] == metric)]
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


def _scaling_panels(table: pd.DataFrame, res: Analysis) -> list[str]:
  task, metric = res.headline
  lm = A.default_loss_metric(table, task)
  panels = [m for m in dict.fromkeys([lm, metric]) if m]
  if len(panels) == 1:  # the headline is the loss: show the task's best-SNR accuracy too
    snr = res.snr
    other = snr[(snr["task"] == task) & (snr["size"] == res.proxies[-1])
                & snr["metric"].map(A.higher_is_better)].sort_values("snr", ascending=False)
    panels += list(other["metric"].head(1))
  return panels


def fig_scaling(table: pd.DataFrame, res: Analysis, path: str) -> str:
  """Loss and headline metric vs compute per recipe, with the fitted 3-parameter curves.

  Top row: the values; bottom row: each recipe's difference from the mean of all recipes at
  the same checkpoint, where a large grid's recipes can be told apart. Up to 10 recipes: a
  colour and marker each; more: the best 8 at the largest proxy in colour (legend in rank
  order), the others grey. y-limits follow the measured points (curves may leave the frame).
  """
  plt = _plt()
  table = res.table  # with the macro task where the analysis adds one
  task = res.headline[0]
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
  title = "recipe (star = target)" + (f"\nbest {len(handles)} at {res.proxies[-1]} in "
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
  proxy = pts[pts["size"] != res.target]
  t_compute = table[table["size"] == res.target]["compute"].max()
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
    q = pts[(pts["recipe"] == r) & (pts["size"] == res.target)]
    if len(q):
      q = q[q["step"] == q["step"].max()]
      for a, col in ((ax, "value"), (dax, "diff")):
        a.scatter(q["compute"], q[col], s=80 if st["label"] else 30, marker="*",
                  color=st["color"], edgecolor="black", linewidth=0.5, zorder=6)
    y = _fit_curve(res.scaling_law, task, m, r, cs) if cs is not None else None
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


def _da_cells(res: Analysis, ok: pd.DataFrame, da: pd.DataFrame):
  """(task, metric) panels to draw (headline first), and those omitted (nothing defined)."""
  h = res.headline
  snr = res.snr  # every task x metric of the table, decided or not
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


def fig_decision_accuracy(res: Analysis, path: str, cols: int = 6) -> str:
  """Decision accuracy vs the compute each protocol spent, one panel per task and metric.

  Every task x metric with a defined decision accuracy is drawn; the others are named in the
  title. x: compute spent / one target run (seed_mean pays for every seed's run), sizes named
  on the top axis; y-limits fitted to the points.
  """
  plt = _plt()
  da = res.decision_accuracy
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
  title = (f"Decision accuracy vs compute (target {res.target}; {len(cells)} task x metric "
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


def fig_rank_agreement(res: Analysis, path: str) -> str:
  """Heatmap: pairwise order agreement between the rankings of every two sizes."""
  plt = _plt()
  m = res.rank_agreement
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
  task, metric = res.headline
  ax.set_title(f"Rank agreement between sizes\n{task} / {metric}", fontsize=10)
  fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of recipe pairs ordered alike")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
