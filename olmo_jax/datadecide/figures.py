"""The report's figures (matplotlib, Agg backend): metric vs compute with the scaling laws,
decision accuracy vs compute, rank agreement between sizes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from olmo_jax.datadecide.result import Analysis
from olmo_jax.datadecide.scores import MACRO_TASK, TARGET_PRIMARY, primary_metric


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
TOP_K = 8  # recipes drawn in colour when there are more than 10; the rest are grey
# tab10 without its grey (the colour of "other recipes"), and black as a tenth colour
RECIPE_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                 "tab:pink", "tab:olive", "tab:cyan", "black")


def recipe_styles(recipes: list[str], order: list[str] | None = None, top_k: int = TOP_K
                  ) -> dict[str, dict]:
  """{recipe: matplotlib style}: up to 10 recipes each get a colour and a marker of their
  own; beyond that the first `top_k` of `order` (the ranking) do, and the rest are grey."""
  order = [r for r in (order or []) if r in recipes] + sorted(set(recipes) - set(order or []))
  shown = order if len(recipes) <= 10 else order[:top_k]
  out = {}
  for i, r in enumerate(shown):
    out[r] = {"color": RECIPE_COLORS[i % len(RECIPE_COLORS)],
              "marker": MARKERS[i % len(MARKERS)], "alpha": 0.85, "lw": 1.4, "zorder": 4,
              "label": r}
  for r in order[len(shown):]:
    out[r] = {"color": "0.65", "marker": ".", "alpha": 0.35, "lw": 0.7, "zorder": 2,
              "label": None}
  return out


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


# The decision-accuracy figure: one panel per task, every proxy metric of the task in it.
METRIC_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                 "tab:pink", "tab:olive", "tab:cyan")
LAW_MARKERS = ("*", "P", "X", "D", "v", "^", "<", ">")


def da_rows(res: Analysis, against: str = TARGET_PRIMARY) -> pd.DataFrame:
  """The decision_accuracy.csv rows the figure draws: final checkpoints, per_seed for single
  scale (the mean over seeds) and every scaling-law setup, each proxy metric scored against
  the target's primary metric of its task (against='primary') or against itself ('same');
  x = the compute the prediction spent / one target run (spent_fraction)."""
  da = res.decision_accuracy_all
  if not len(da):
    return da.assign(x=[])
  prim = {t: primary_metric(t, g["metric"].unique()) for t, g in res.table.groupby("task")}
  want = da["task"].map(prim) if against == TARGET_PRIMARY else da["metric"]
  keep = ((da["target_metric"] == want) & (da["step"] == "final")
          & ((da["method"] != "single_scale") | (da["protocol"] == "per_seed"))
          & da["decision_accuracy"].notna() & (da["compute_fraction"] > 0))
  out = da[keep].copy()
  out["x"] = spent_fraction(out)
  return out.reset_index(drop=True)


def _task_order(res: Analysis, rows: pd.DataFrame) -> list[str]:
  tasks = sorted(rows["task"].unique())
  return [t for t in (MACRO_TASK,) if t in tasks] + [t for t in tasks if t != MACRO_TASK]


def _da_task_panel(ax, d: pd.DataFrame, colors: dict, laws: list[str], task: str,
                   names: bool) -> list[float]:
  """One task: a line per proxy metric over the sizes, the scaling-law setups as markers, the
  target's noise ceiling dashed (decisions.target_ceiling); returns the y values drawn."""
  from matplotlib.ticker import NullFormatter
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(NullFormatter())
  ys = []
  for metric, g in d.groupby("metric", sort=True):
    col = colors[metric]
    single = g[g["method"] == "single_scale"].sort_values("x")
    ax.plot(single["x"], single["decision_accuracy"], "-o", color=col, ms=3.5, lw=1.2,
            label=metric, gid=f"{task}\t{metric}\tsingle_scale")
    ys += list(single["decision_accuracy"])
    for method, mk in zip(laws, LAW_MARKERS):
      p = g[g["method"] == method]
      if len(p):
        ax.plot(p["x"], p["decision_accuracy"], linestyle="none", marker=mk, ms=9, color=col,
                markeredgecolor="black", markeredgewidth=0.5, zorder=5,
                gid=f"{task}\t{metric}\t{method}")
        ys += list(p["decision_accuracy"])
  ceil = d["target_ceiling"].dropna().unique() if "target_ceiling" in d else []
  for c in ceil[:1] if len(set(np.round(ceil, 9))) == 1 else []:
    ax.axhline(c, color="black", ls="--", lw=0.9, label="target noise ceiling")
    ys.append(float(c))
  single = d[(d["method"] == "single_scale")]
  if len(single):
    _size_axis(ax, single, names)
  ax.axhline(0.5, color="grey", lw=0.7, ls=":")
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)
  return ys


def fig_decision_accuracy(res: Analysis, path: str, against: str = TARGET_PRIMARY,
                          cols: int = 4) -> tuple[str, pd.DataFrame]:
  """Decision accuracy of every proxy metric vs the compute spent, one panel per task.

  against 'primary': each proxy metric is scored against the target's primary metric of its
  task (the paper's question: which proxy metric predicts the target's accuracy); 'same':
  against itself at the target. Lines: single scale (final checkpoints, mean over seeds) over
  the sizes, named on the top axes; markers: the scaling-law setups; dashed: the target's noise
  ceiling (decisions.target_ceiling). Returns (path, the plotted points read
  back from the figure: task, metric, method, x, decision_accuracy).
  """
  plt = _plt()
  rows = da_rows(res, against)
  if not len(rows):
    return _empty_figure(path, "no decision accuracy is defined (all target pairs tied?)"), \
        pd.DataFrame(columns=["task", "metric", "method", "x", "decision_accuracy"])
  tasks = _task_order(res, rows)
  metrics = sorted(rows["metric"].unique())
  colors = {m: METRIC_COLORS[i % len(METRIC_COLORS)] for i, m in enumerate(metrics)}
  laws = sorted(m for m in rows["method"].unique() if m != "single_scale")
  cols = min(cols, len(tasks))
  nrows = math.ceil(len(tasks) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols + 2.2, 2.9 * nrows + 1.4),
                           squeeze=False, layout="constrained")
  prim = {t: primary_metric(t, g["metric"].unique()) for t, g in res.table.groupby("task")}
  for i, (ax, task) in enumerate(zip(axes.flat, tasks)):
    ys = _da_task_panel(ax, rows[rows["task"] == task], colors, laws, task, names=i < cols)
    _fitted_ylim(ax, ys + [0.5, 1.0], pad=0.05)
    ax.set_title(f"{task} (target: {prim.get(task) if against == TARGET_PRIMARY else 'same'})",
                 fontsize=8)
  for ax in list(axes.flat)[len(tasks):]:
    ax.axis("off")
  for ax in axes[:, 0]:
    ax.set_ylabel("decision accuracy", fontsize=8)
  for ax in axes[-1, :]:
    ax.set_xlabel("compute spent / one target run", fontsize=8)
  _da_legend(axes, colors, laws)
  what = ("the target's PRIMARY metric" if against == TARGET_PRIMARY
          else "the SAME metric at the target")
  fig.suptitle(f"Decision accuracy: each proxy metric (colour) at each proxy size, scored "
               f"against {what} at {res.target}\nsingle scale: final checkpoints, per_seed "
               f"(mean over seeds); sizes on the top axes", fontsize=10)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plotted = _read_back(axes)
  plt.close(fig)
  return path, plotted


def _da_legend(axes, colors: dict, laws: list[str]) -> None:
  import matplotlib.lines as mlines
  handles = [mlines.Line2D([], [], color=c, marker="o", ms=4, label=m) for m, c in colors.items()]
  handles += [mlines.Line2D([], [], color="0.4", marker=mk, ls="none", ms=8,
                            markeredgecolor="black", label=law)
              for law, mk in zip(laws, LAW_MARKERS)]
  handles.append(mlines.Line2D([], [], color="black", ls="--",
                               label="target noise ceiling"))
  axes[0][-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
                     title="proxy metric / prediction", title_fontsize=7, frameon=False)


def _read_back(axes) -> pd.DataFrame:
  """Every point of the decision-accuracy lines and markers, as drawn."""
  rows = []
  for ax in axes.flat:
    for line in ax.get_lines():
      gid = line.get_gid()
      if not gid:
        continue
      task, metric, method = gid.split("\t")
      for x, y in zip(*line.get_data()):
        rows.append({"task": task, "metric": metric, "method": method, "x": float(x),
                     "decision_accuracy": float(y)})
  return pd.DataFrame(rows, columns=["task", "metric", "method", "x", "decision_accuracy"])


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
  vals = m.to_numpy(dtype=float)
  off = vals[~np.eye(k, dtype=bool)] if k > 1 else vals.ravel()
  off = off[np.isfinite(off)]
  lo = float(np.floor(off.min() * 20) / 20) if len(off) else 0.0  # colour spent on the data
  lo = min(lo, 0.95)
  im = ax.imshow(vals, vmin=lo, vmax=1, cmap="viridis")
  ax.set_xticks(range(k), m.columns, rotation=45 if k > 6 else 0, ha="right" if k > 6 else
                "center", fontsize=8)
  ax.set_yticks(range(k), m.index, fontsize=8)
  for i in range(k):
    for j in range(k):
      v = m.iloc[i, j]
      ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
              color="white" if (not np.isnan(v) and v < lo + 0.6 * (1 - lo)) else "black",
              fontsize=9 if k <= 6 else 6.5)
  task, metric = res.headline
  ax.set_title(f"Rank agreement between sizes\n{task} / {metric}", fontsize=10)
  fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of recipe pairs ordered alike")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
