"""report.md: the text and tables of the report."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from eval.metrics import higher_is_better
from olmo_jax.datadecide.result import Analysis
from olmo_jax.datadecide.scores import MACRO_TASK, primary_metric


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
  metric (single scale, final checkpoints), the macro task first (every metric averaged over
  tasks before ranking, against the macro of the primaries), with the target's ceiling."""
  da = res.decision_accuracy_all
  fin = da[(da["method"] == "single_scale") & (da["step"] == "final")
           & (da["protocol"] == protocol)]
  prim = {t: primary_metric(t, g["metric"].unique()) for t, g in res.table.groupby("task")}
  fin = fin[fin["target_metric"] == fin["task"].map(prim)]
  order = [z for z in res.proxies if z in set(fin["size"])]
  tasks = sorted(fin["task"].unique(), key=lambda t: (t != MACRO_TASK, t))
  out = {}
  for t in tasks:
    g = fin[fin["task"] == t]
    piv = g.pivot_table(index="metric", columns="size", values="decision_accuracy",
                        dropna=False).reindex(columns=order)
    ceil = g["target_ceiling"].dropna()
    piv["target ceiling"] = float(ceil.iloc[0]) if len(ceil) else np.nan
    name = ("macro: every metric averaged over tasks, vs the macro of the primaries"
            if t == MACRO_TASK else f"{t} (vs {prim[t]})")
    out[name] = piv
  return out


def primary_markdown(res: Analysis) -> list[str]:
  """The paper's view: proxy metric x proxy size -> decision accuracy vs the primary metric."""
  lines = [f"## Decision accuracy against the target's primary metric ({res.target})", "",
           "Each proxy metric at each proxy size ranks the recipes; the score is the share of "
           "recipe pairs ordered as the target's primary metric orders them (per_seed: the "
           "mean over proxy seeds). The macro rows average every metric over the tasks before "
           "ranking (DataDecide's aggregate). `target ceiling`: the share of pairs a perfect "
           "proxy would order as the target's noisy seed means do (normal approximation from "
           "the target's seeds; decisions.target_ceiling).", ""]
  for name, piv in primary_tables(res, "per_seed").items():
    lines += [f"{name}, per_seed:", "", markdown_table(piv.reset_index()), ""]
  snr = res.snr
  da = res.decision_accuracy_all
  size = res.proxies[-1]
  fin = da[(da["method"] == "single_scale") & (da["step"] == "final") & (da["size"] == size)
           & (da["protocol"] == "per_seed")]
  side = fin.merge(snr[snr["size"] == size][["task", "metric", "snr"]], on=["task", "metric"])
  if len(side):
    lines += [f"Decision accuracy (per_seed) and SNR at {size}:", "",
              markdown_table(side[["task", "metric", "target_metric", "decision_accuracy",
                                   "target_ceiling", "snr"]]), ""]
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
            f"({'higher' if higher_is_better(metric) else 'lower'} is better"
            + ("; the mean over tasks of each task's primary metric" if task == MACRO_TASK
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
    lines.append(f"- Runner-up: {rec['runner_up']}, margin {_fmt(rec['margin'], 4)}")
    lines.append(f"- Confidence that the pick is the target's best: "
                 f"{('%.3f' % conf) if conf is not None else 'n/a (no target runs)'}; proxy "
                 f"seed noise alone: {_fmt(rec.get('proxy_bootstrap', float('nan')))}")
    lines.append(f"- Confidence method: {rec['confidence_note']}")
    if "decision_accuracy_at_decided_size" in rec:
      lines.append(f"- Measured decision accuracy of {task}/{metric} at "
                   f"{rec['decided_at_size']} against the target (seed mean): "
                   f"{rec['decision_accuracy_at_decided_size']:.3f} of recipe pairs")
  lines.append(f"- Metrics at {rec['decided_at_size']} that pick the same recipe: "
               f"{rec['agreeing_metrics']}")
  for setup, best in rec.get("scaling_law_best", {}).items():
    lines.append(f"- Scaling law {setup} predicts best at {target}: {best}")
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
  """Decision accuracy of the headline (single scale and scaling laws), with the figures."""
  task, metric = res.headline
  da = res.decision_accuracy_all
  tm = primary_metric(task, [metric])
  lines = [f"## Decision accuracy of the headline ({task} / {metric} vs {tm} at "
           f"{res.target})", ""]
  fin = da[(da["step"] == "final") & (da["task"] == task) & (da["metric"] == metric)
           & (da["target_metric"] == tm)]
  if len(fin):
    show = fin[["size", "method", "protocol", "decision_accuracy", "target_ceiling", "std",
                "n_seeds", "n_pairs", "compute_fraction"]]
    lines += ["per_seed: mean and population std over the proxy seeds; seed_mean: the "
              "recipes' means over n_seeds seeds; scaling_law_*: the fits' predictions. "
              "compute_fraction: the compute the prediction spent / one target run.", "",
              markdown_table(show), ""]
  lines += [f"![decision accuracy vs compute]({os.path.basename(figs['da'])})", "",
            "One panel per task (the macro first): each proxy metric (one colour each) at each "
            "proxy size (named on the top axis), scored against the target's primary metric "
            "of that task, against the compute the prediction spent (one run per seed: "
            "per_seed); large markers: the scaling-law setups at the compute of the runs they "
            "were fitted on; dashed: the target's noise ceiling.", "",
            f"The same, each proxy metric against itself at the target: "
            f"![same metric]({os.path.basename(figs['da_same'])})", ""]
  return lines


def _short_list(names) -> str:
  """A comma-separated list, as its count when long (the CSV keeps every name)."""
  items = [x for x in str(names).split(",") if x and x != "nan"]
  return ",".join(items) if len(items) <= 4 else f"{len(items)} recipes (see the CSV)"


def _md_scaling(res: Analysis, figs: dict) -> list[str]:
  """DataDecide's scaling-law setups: decision accuracy, errors, compute; predicted vs
  measured per recipe for the headline; the figure."""
  task, metric = res.headline
  target = res.target
  lines: list[str] = ["## Scaling-law prediction", ""]
  sl = res.scaling_law_da
  how = ("DataDecide's setups: the default seed's runs of its fit sizes, and the variants "
         "without the largest one or two" if res.fit_runs == "datadecide"
         else "every proxy size and seed in one fit")
  if len(sl):
    h = sl[(sl["task"] == task) & (sl["metric"] == metric)].copy()
    h["missing"] = h["missing"].map(_short_list)
    lines += [f"Fits on {how}. Headline, against the target's primary metric; every task and "
              f"metric is in decision_accuracy.csv:", "",
              markdown_table(h[["task", "metric", "target_metric", "setup", "fit_sizes",
                                "decision_accuracy", "missing", "mean_abs_error",
                                "mean_rel_error", "compute_fraction"]]), ""]
    p = res.scaling_law
    p = p[(p["task"] == task) & (p["metric"] == metric)]
    if len(p):
      wide = p.pivot_table(index="recipe", columns="setup", values="predicted")
      wide.insert(0, "measured", p.groupby("recipe")["actual"].first())
      lines += [f"Predicted vs measured {metric} at {target} (seed mean):", "",
                markdown_table(wide.reset_index(), 4), ""]
  else:
    lines += ["No scaling-law prediction was made (see the warnings).", ""]
  lines += [f"![metric vs compute]({os.path.basename(figs['scaling'])})", "",
            "Points: seed-mean scores of every checkpoint of the proxy runs (the fit sizes "
            "shaded); stars: the target runs; lines: each recipe's fitted law under the setup "
            "in the title, through its sigmoid for a metric, to the target's compute, where "
            "the diamond is its prediction. Right: predicted vs measured at the target for "
            "every setup.", ""]
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
