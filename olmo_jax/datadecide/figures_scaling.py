"""The scaling-law figure: each recipe's loss and headline metric vs compute with the fitted
curves, and the predicted vs measured score at the target."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from eval.metrics import higher_is_better
from olmo_jax.datadecide import fits as fits_lib
from olmo_jax.datadecide.figures import _fitted_ylim, _legend_outside, _plt, recipe_styles
from olmo_jax.datadecide.result import Analysis
from olmo_jax.datadecide.scaling import default_loss_metric


def _headline_order(res: Analysis) -> list[str]:
  """Recipes best first on the headline metric at the largest proxy size."""
  task, metric = res.headline
  rk = res.rankings
  cell = rk[(rk["size"] == res.proxies[-1]) & (rk["task"] == task) & (rk["metric"] == metric)]
  return list(cell.sort_values(["rank", "recipe"])["recipe"])


def drawn_setup(res: Analysis, task: str) -> str | None:
  """The setup whose curves the figure draws for `task`: the first fitted against compute alone
  (2- or 3-parameter, two steps) on DataDecide's default sizes (or on every size)."""
  sl = res.scaling_law_all
  if not len(sl):
    return None
  g = sl[(sl["task"] == task) & sl["variant"].isin(["default", "all"])
         & sl["form"].isin(["3p", "2p"])]
  return g["setup"].iloc[0] if len(g) else None


def _fit_curve(res: Analysis, setup: str | None, task: str, metric: str, recipe: str,
               cs: np.ndarray):
  """The recipe's law under `setup` (through its sigmoid for a metric), or None when it was
  not fitted."""
  sl = res.scaling_law
  if setup is None or not len(sl):
    return None
  f = sl[(sl["task"] == task) & (sl["setup"] == setup) & (sl["recipe"] == recipe)
         & (sl["metric"] == metric)]
  fit = json.loads(f.iloc[0]["fit"]) if len(f) else None
  if not fit:
    return None
  y = fits_lib.power_law_3p(cs, fit)
  step2 = json.loads(f.iloc[0]["step2"])
  return y if step2 is None else fits_lib.sigmoid(y, step2)


def no_fit_reason(res: Analysis, setup: str | None, task: str, metric: str) -> str:
  """Why no curve is drawn for (task, metric): the fits' own status, or what is missing."""
  sl = res.scaling_law_all
  if not len(sl) or not (sl["task"] == task).any():
    return "no scaling-law fit: the task has no loss-like metric (bpb, loss) for step 1"
  if setup is None:
    return "no 2- or 3-parameter setup was fitted (5-parameter laws depend on N and D)"
  g = sl[(sl["task"] == task) & (sl["setup"] == setup) & (sl["metric"] == metric)]
  bad = sorted(set(g["status"]) - {"ok"})
  return f"no fit drawn: {'; '.join(bad) or 'not fitted'}"


def _scaling_panels(table: pd.DataFrame, res: Analysis) -> list[str]:
  task, metric = res.headline
  lm = default_loss_metric(table, task)
  panels = [m for m in dict.fromkeys([lm, metric]) if m]
  if len(panels) == 1:  # the headline is the loss: show the task's best-SNR accuracy too
    snr = res.snr
    other = snr[(snr["task"] == task) & (snr["size"] == res.proxies[-1])
                & snr["metric"].map(higher_is_better)].sort_values("snr", ascending=False)
    panels += [m for m in other["metric"].head(1) if m not in panels]
  return panels


def fig_scaling(table: pd.DataFrame, res: Analysis, path: str) -> str:
  """Loss and headline metric vs compute per recipe, with the curves that were fitted, and the
  predicted vs measured headline at the target.

  Top row: the values, the fit sizes shaded, each recipe's fitted curve (drawn_setup) to the
  target's compute, its prediction there (open diamond) beside the measured target (star);
  the title names the setup, or why no curve is drawn. Bottom row: each recipe's difference
  from the mean of all recipes at the same checkpoint. Right: predicted vs measured at the
  target for every size variant of the fits. Up to 10 recipes: a colour and marker each;
  more: the best 8 at the largest proxy in colour, the others grey.
  """
  plt = _plt()
  table = res.table  # with the macro task where the analysis adds one
  task = res.headline[0]
  panels = _scaling_panels(table, res)
  recipes = sorted(table["recipe"].unique())
  order = _headline_order(res)
  styles = recipe_styles(recipes, order)
  fig, axes = plt.subplots(2, len(panels) + 1, figsize=(5.2 * len(panels) + 7.4, 7.6),
                           squeeze=False, layout="constrained", height_ratios=(3, 2))
  setup = drawn_setup(res, task)
  handles = {}
  for j, m in enumerate(panels):
    axes[1][j].sharex(axes[0][j])
    handles.update(_scaling_panel(axes[0][j], axes[1][j], table, res, task, m, recipes,
                                  styles, setup))
  _predicted_vs_measured(axes[0][-1], res, task, res.headline[1])
  axes[1][-1].axis("off")
  ranked = [r for r in order if r in handles] + sorted(set(handles) - set(order))
  n_grey = sum(1 for r in recipes if not styles[r]["label"])
  title = ("recipe (star = measured at the target,\ndiamond = predicted)"
           + (f"\nbest {len(handles)} at {res.proxies[-1]} in colour, by rank" if n_grey
              else ""))
  _legend_outside(fig, axes[1][-1], [handles[r] for r in ranked],
                  [f"{i + 1}. {r}" if n_grey else r for i, r in enumerate(ranked)], title,
                  n_grey)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def _predicted_vs_measured(ax, res: Analysis, task: str, metric: str) -> None:
  """Each recipe's predicted vs measured `metric` at the target, one marker per setup."""
  sl = res.scaling_law
  p = sl[(sl["task"] == task) & (sl["metric"] == metric) & sl["actual"].notna()] \
      if len(sl) else sl
  if not len(p):
    ax.text(0.5, 0.5, "no fitted prediction with a\nmeasured target to compare",
            ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_axis_off()
    return
  for (setup, g), mk in zip(p.groupby("setup", sort=False), ("o", "s", "^", "D", "v", "P")):
    err = float(g["abs_error"].mean())
    ax.scatter(g["actual"], g["predicted"], s=18, marker=mk, alpha=0.8,
               label=f"{setup} (mean |error| {err:.3g})")
  lo = float(min(p["actual"].min(), p["predicted"].min()))
  hi = float(max(p["actual"].max(), p["predicted"].max()))
  ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="predicted = measured")
  ax.set_xlabel(f"measured {metric} at {res.target} (seed mean)")
  ax.set_ylabel(f"predicted {metric}")
  ax.set_title(f"{task}: predicted vs measured at {res.target}", fontsize=10)
  ax.legend(fontsize=7, loc="upper left", frameon=False)
  ax.grid(alpha=0.3)


def _scaling_panel(ax, dax, table, res, task, m, recipes, styles, setup) -> dict:
  """One metric: values (ax) and differences from the recipes' mean (dax); legend handles."""
  sub = table[(table["task"] == task) & (table["metric"] == m)]
  pts = sub.groupby(["recipe", "size", "step"], as_index=False).agg(
      value=("value", "mean"), compute=("compute", "mean"))
  pts["diff"] = pts["value"] - pts.groupby(["size", "step"])["value"].transform("mean")
  proxy = pts[pts["size"] != res.target]
  t_compute = table[table["size"] == res.target]["compute"].max()
  fit = _fit_sizes(res, task, setup)  # curves start at the sizes they were fitted on
  start = proxy[proxy["size"].isin(fit)] if fit else proxy
  cs = np.logspace(np.log10(start["compute"][start["compute"] > 0].min()),
                   np.log10(t_compute), 60) if len(start) else None
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
    y = _fit_curve(res, setup, task, m, r, cs) if cs is not None else None
    if y is not None:
      drawn = True
      ax.plot(cs, y, color=st["color"], lw=st["lw"], alpha=min(1.0, st["alpha"] + 0.1),
              zorder=st["zorder"])
      ax.scatter([cs[-1]], [y[-1]], s=50 if st["label"] else 20, marker="D",
                 facecolor="none", edgecolor=st["color"], linewidth=1.0, zorder=7)
  _shade_fit_sizes(ax, res, task, setup, pts)
  _fitted_ylim(ax, pts["value"])
  _fitted_ylim(dax, pts["diff"])
  ax.set_xscale("log")
  ax.set_ylabel(m)
  dax.set_ylabel(f"{m} - mean of recipes", fontsize=8)
  dax.axhline(0, color="black", lw=0.6)
  dax.set_xlabel("training compute of one run (FLOPs, 6ND)")
  title = (f"{task}: {m}\nfit: {setup}" if drawn else
           f"{task}: {m}\n{no_fit_reason(res, setup, task, m)}")
  ax.set_title(title, fontsize=9)
  for a in (ax, dax):
    a.grid(alpha=0.3)
  return handles


def _shade_fit_sizes(ax, res: Analysis, task: str, setup: str | None, pts) -> None:
  """Shades the compute range of the sizes the drawn setup was fitted on."""
  fit_sizes = _fit_sizes(res, task, setup)
  c = pts[pts["size"].isin(fit_sizes)]["compute"]
  if len(c):
    ax.axvspan(c.min(), c.max(), color="0.9", zorder=0, label="fit sizes")


def _fit_sizes(res: Analysis, task: str, setup: str | None) -> list[str]:
  """The sizes `setup` was fitted on for `task` ([] when none)."""
  sl = res.scaling_law_all
  if setup is None or not len(sl):
    return []
  g = sl[(sl["task"] == task) & (sl["setup"] == setup)]
  return g["fit_sizes"].iloc[0].split(",") if len(g) else []
