"""report.md: the text and tables of the report."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from olmo_jax.datadecide import analysis as A
from olmo_jax.datadecide.result import Analysis


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


def primary_tables(res: Analysis, protocol: str) -> dict[str, pd.DataFrame]:
  """{task: metric x proxy size table} of decision accuracy against each task's primary
  metric (single scale, final checkpoints), plus 'macro average' (mean over the tasks)."""
  da = res.decision_accuracy_all
  fin = da[(da["method"] == "single_scale") & (da["step"] == "final")
           & (da["protocol"] == protocol) & (da["task"] != A.MACRO_TASK)]
  full = res.table
  prim = {t: A.primary_metric(t, g["metric"].unique()) for t, g in full.groupby("task")}
  fin = fin[fin["target_metric"] == fin["task"].map(prim)]
  order = [z for z in res.proxies if z in set(fin["size"])]
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


def primary_markdown(res: Analysis) -> list[str]:
  """The paper's view: proxy metric x proxy size -> decision accuracy vs the primary metric."""
  lines = [f"## Decision accuracy against the target's primary metric ({res.target})", "",
           "Each proxy metric at each proxy size ranks the recipes; the score is the share of "
           "recipe pairs ordered as the target's primary metric orders them. The macro average "
           "is the mean over tasks.", ""]
  for protocol in A.PROTOCOLS:
    for name, piv in primary_tables(res, protocol).items():
      if name != "macro average" and protocol != "per_seed":
        continue  # per task: per_seed only (the paper's protocol), to keep the report short
      lines += [f"{name}, {protocol}:", "", markdown_table(piv.reset_index()), ""]
  snr = res.snr
  da = res.decision_accuracy_all
  size = res.proxies[-1]
  fin = da[(da["method"] == "single_scale") & (da["step"] == "final") & (da["size"] == size)
           & (da["protocol"] == "per_seed")]
  side = fin.merge(snr[snr["size"] == size][["task", "metric", "snr"]], on=["task", "metric"])
  if len(side):
    lines += [f"Decision accuracy (per_seed) and SNR at {size}:", "",
              markdown_table(side[["task", "metric", "target_metric", "decision_accuracy",
                                   "snr"]]), ""]
  return lines


def _md_summary(table: pd.DataFrame, res: Analysis, title: str) -> list[str]:
  """The title and what the table holds."""
  task, metric = res.headline
  target = res.target
  lines: list[str] = []
  lines += [f"# {title}", ""]
  scored = ("final checkpoint" if res.last_k == 1
            else f"mean of its last {res.last_k} checkpoints")
  lines += [f"Results: {table['recipe'].nunique()} recipes, sizes {', '.join(res.sizes)}, "
            f"{table['seed'].nunique()} seed(s), {table['task'].nunique()} task(s), "
            f"{table['metric'].nunique()} metric(s), {len(table)} rows. Target size: "
            f"**{target}**. Headline: **{task} / {metric}** "
            f"({'higher' if A.higher_is_better(metric) else 'lower'} is better"
            + ("; the mean over tasks of each task's primary metric" if task == A.MACRO_TASK
               else "") + f"). Scores are each run's {scored}. Ties: `{res.ties}`.", ""]
  return lines


def _md_recommendation(res: Analysis, rec: dict) -> list[str]:
  """The recommended recipe, its confidence and what agrees with it."""
  task, metric = res.headline
  target = res.target
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


def _md_rankings(res: Analysis) -> list[str]:
  """The headline's ranking of the recipes at every size."""
  task, metric = res.headline
  lines: list[str] = []
  lines += [f"## Rankings ({task} / {metric}, seed mean +- population std)", ""]
  rk = res.rankings
  rk = rk[(rk["task"] == task) & (rk["metric"] == metric)]
  wide = {}
  for _, r in rk.iterrows():
    wide.setdefault(r["recipe"], {})[r["size"]] = f"{r['rank']}. {_fmt(r['mean'], 4)} +- " \
                                                  f"{_fmt(r['std'], 4)}"
  order = [s for s in res.sizes if s in set(rk["size"])]
  wt = pd.DataFrame([{"recipe": k, **{s: v.get(s, "missing") for s in order}}
                     for k, v in sorted(wide.items())])
  lines += [markdown_table(wt), ""]
  return lines


def _md_decision_accuracy(res: Analysis, figs: dict) -> list[str]:
  """Decision accuracy of the headline and of every task and metric, with its figure."""
  task, metric = res.headline
  target = res.target
  da = res.decision_accuracy
  lines: list[str] = []
  lines += [f"## Decision accuracy against {target} (same metric)", ""]
  fin = da[(da["step"] == "final") & (da["task"] == task) & (da["metric"] == metric)]
  if len(fin):
    show = fin[["size", "method", "protocol", "decision_accuracy", "std", "n_seeds",
                "n_pairs", "compute_fraction"]]
    lines += [f"{task} / {metric} (per_seed: mean and population std over seeds):", "",
              markdown_table(show), ""]
  big = da[(da["step"] == "final") & (da["method"] == "single_scale")
           & (da["size"] == res.proxies[-1])]
  if len(big):
    piv = big.pivot_table(index=["task", "metric"], columns="protocol",
                          values="decision_accuracy").reset_index()
    lines += [f"Every task and metric at {res.proxies[-1]} (single scale):", "",
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


def _md_scaling(res: Analysis, figs: dict) -> list[str]:
  """The two-step scaling-law predictions and their figure."""
  task, metric = res.headline
  target = res.target
  lines: list[str] = []
  sl = res.scaling_law_da
  if len(sl):
    lines += ["## Two-step scaling-law prediction", ""]
    h = sl[(sl["task"] == task)]
    lines += [markdown_table(h[["task", "metric", "target_metric", "setup", "decision_accuracy",
                                "missing", "mean_abs_error", "mean_rel_error",
                                "compute_fraction"]]), ""]
    p = res.scaling_law
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


def _md_agreement_snr_warnings(res: Analysis, figs: dict) -> list[str]:
  """Rank agreement, signal to noise and the warnings."""
  lines: list[str] = []
  lines += ["## Rank agreement between sizes", "",
            f"![rank agreement]({os.path.basename(figs['rank'])})", "",
            "Fraction of recipe pairs that two sizes order the same way (seed means, final "
            "checkpoints).", ""]
  snr = res.snr
  lines += [f"## Signal to noise at {res.proxies[-1]}", ""]
  s = snr[snr["size"] == res.proxies[-1]].sort_values("snr", ascending=False)
  lines += [markdown_table(s[["task", "metric", "signal", "noise", "snr", "n_recipes"]]), ""]
  lines += ["## Warnings", ""]
  lines += [f"- {w}" for w in res.warnings] or ["- none"]
  lines.append("")
  return lines


def render_markdown(table: pd.DataFrame, res: Analysis, rec: dict, figs: dict, title: str,
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
