"""How likely the proxy's pick is also the target's best: a confidence that can be checked.

`pick_confidence` reruns the whole comparison on resampled runs: each draw takes, at the
proxy size and at the target, each recipe's runs with replacement, each run whole (for the
macro headline, one seed's scores on every task together, never a task from one seed and
another task from another), picks the recipe with the best proxy mean and asks whether it is
the best target mean of the same draw. The share of draws where it is: the confidence. It
holds the proxy's seed noise, the target's, and the proxy-to-target error (the two sizes'
means differ as measured). A bootstrap around the picked recipe's own mean alone, or a line
from proxy to target means, over-states the lead of a recipe picked because its mean came
out highest (the winner's curse): on planted tables such numbers stated 0.40 where the pick
matched the target's best 0.25 of the time.

Without target runs there is no proxy-to-target error to measure: the confidence is None and
`proxy_bootstrap` (the share of proxy-only draws in which the pick stays best at the proxy)
is seed noise alone, not the chance that the target agrees.
benchmarks/bench_datadecide_calibration.py checks the confidence on planted tables: the mean
stated confidence against how often the pick is the target's measured best.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from eval.metrics import higher_is_better
from olmo_jax.datadecide.scores import run_scores


def run_matrix(scores: pd.DataFrame) -> tuple[list[str], list[np.ndarray]]:
  """(recipes, [each recipe's run values]) of run scores (recipe, seed, value)."""
  recipes = sorted(scores["recipe"].unique())
  by = {r: g["value"].to_numpy(np.float64) for r, g in scores.groupby("recipe")}
  return recipes, [by[r][np.isfinite(by[r])] for r in recipes]


def bootstrap_means(values: list[np.ndarray], n_boot: int, rng) -> np.ndarray:
  """[n_boot, n_recipes] recipe means, each draw resampling every recipe's runs whole."""
  out = np.empty((n_boot, len(values)))
  for j, v in enumerate(values):
    out[:, j] = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
  return out


def _win_share(draws: np.ndarray, best: int) -> float:
  top = draws.max(axis=1, keepdims=True)
  winners = draws == top
  return float((winners[:, best] / winners.sum(axis=1)).mean())


def pick_confidence(proxy: pd.DataFrame, best: str, higher: bool,
                    target: pd.DataFrame | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
  """The chance that the proxy's pick is the target's best, per the module's resampling.

  proxy, target: one row per run (recipe, seed, value) on the headline, at the proxy size and
  at the target (None or empty when the target was not trained); best: the recipe picked.
  Returns {confidence (None without target runs), proxy_bootstrap, n_recipes, n_boot, method}.
  """
  rng = np.random.default_rng(seed)
  sign = 1.0 if higher else -1.0
  recipes, values = run_matrix(proxy)
  keep = [i for i, v in enumerate(values) if len(v)]
  recipes, values = [recipes[i] for i in keep], [sign * values[i] for i in keep]
  draws = bootstrap_means(values, n_boot, rng)
  out = {"proxy_bootstrap": _win_share(draws, recipes.index(best)), "n_boot": n_boot,
         "confidence": None, "n_recipes": len(recipes)}
  t = None if target is None or not len(target) else target[target["recipe"].isin(recipes)]
  if t is None or t["recipe"].nunique() < 2:
    out["method"] = (f"proxy seed noise only: each recipe's proxy runs resampled whole, "
                     f"{n_boot} draws; no target runs to measure the proxy-to-target error, "
                     f"so this is not the chance that the target agrees")
    return out
  t_recipes, t_values = run_matrix(t)
  common = [r for r in t_recipes if r in recipes]
  t_draws = bootstrap_means([sign * v for v in t_values], n_boot, rng)
  p_draws = draws[:, [recipes.index(r) for r in common]]
  t_draws = t_draws[:, [t_recipes.index(r) for r in common]]
  match = p_draws.argmax(axis=1) == t_draws.argmax(axis=1)
  out.update({"confidence": float(match.mean()), "n_recipes": len(common),
              "method": (f"{n_boot} draws, each resampling every recipe's runs whole at the "
                         f"proxy and at the target ({len(common)} recipes); confidence = "
                         f"share of draws where the proxy's best is the target's best")})
  return out


def headline_runs(full: pd.DataFrame, size: str, task: str, metric: str) -> pd.DataFrame:
  """One row per run at `size` on the headline (recipe, seed, value): for the macro, each
  run's mean over tasks of their primary metrics (one seed's scores on every task)."""
  sub = full[(full["size"] == size) & (full["task"] == task) & (full["metric"] == metric)]
  return run_scores(sub)[["recipe", "seed", "value"]]


def headline_confidence(full: pd.DataFrame, size: str, target: str, task: str, metric: str,
                        best: str, n_boot: int = 1000) -> dict:
  """pick_confidence of `best` at `size` on the headline, against the target's runs when the
  table has them."""
  proxy = headline_runs(full, size, task, metric)
  tgt = headline_runs(full, target, task, metric) if (full["size"] == target).any() else None
  return pick_confidence(proxy, best, higher_is_better(metric), tgt, n_boot)
