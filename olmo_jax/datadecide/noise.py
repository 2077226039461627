"""Signal to noise (Heineman et al. 2025, without the trend) per size, task and metric."""

from __future__ import annotations

import numpy as np
import pandas as pd

from olmo_jax.datadecide.scores import CELL, RUN, _warn, run_scores, size_order


def _checkpoint_noise(table: pd.DataFrame, noise_checkpoints: int) -> pd.DataFrame:
  """Late-checkpoint jitter per (size, task, metric), the common learning curve removed.

  Over each run's last `noise_checkpoints` steps: residual = value - the mean over every run
  of the cell at that step (the learning curve all recipes share), minus the run's mean
  residual (the recipe's offset); pooled std sqrt(sum r^2 / sum (k - 1)). Columns: size, task,
  metric, noise_checkpoint (absolute), n_checkpoints.
  """
  t = table[RUN + ["task", "metric", "step", "value"]].copy()
  t["pos"] = t.groupby(RUN + ["task", "metric"])["step"].rank(ascending=False, method="first")
  t = t[t["pos"] <= noise_checkpoints]
  t["r"] = t["value"] - t.groupby(CELL + ["step"])["value"].transform("mean")
  t["r"] = t["r"] - t.groupby(RUN + ["task", "metric"])["r"].transform("mean")
  per_run = t.assign(r2=t["r"] ** 2).groupby(RUN + ["task", "metric"]).agg(
      ss=("r2", "sum"), k=("r2", "size")).reset_index()
  per_run = per_run[per_run["k"] > 1]
  g = per_run.groupby(CELL).agg(ss=("ss", "sum"), k=("k", "sum"), runs=("k", "size"))
  out = pd.DataFrame({"noise_checkpoint": np.sqrt(g["ss"] / (g["k"] - g["runs"]))})
  out["n_checkpoints"] = noise_checkpoints
  return out.reset_index()


def snr(table: pd.DataFrame, noise_checkpoints: int = 5, warnings: list | None = None
        ) -> pd.DataFrame:
  """Signal, noise and SNR per (size, task, metric) as Heineman et al. (2025), without trend.

  signal = (max - min) / |mean| of the recipes' seed-mean final scores; noise = run-to-run
  variation relative to the same mean: the pooled sample std of the final scores over seeds
  (recipes with >= 2 seeds), else the late-checkpoint jitter of _checkpoint_noise.
  Columns: size, task, metric, snr, signal, noise, noise_source ('seeds' | 'checkpoints'),
  noise_seed, noise_checkpoint (both relative to |mean|; NaN where undefined), n_recipes,
  n_seeds (most seeds of a recipe), n_checkpoints.
  """
  s = run_scores(table, 1, warnings)
  ck = _checkpoint_noise(table, noise_checkpoints).set_index(CELL)
  rows = []
  for (size, task, metric), g in s.groupby(CELL):
    per = g.groupby("recipe")["value"]
    m = per.mean().to_numpy()
    mean = float(np.mean(m))
    rel = abs(mean) if mean != 0 else np.nan
    signal = float((m.max() - m.min()) / rel) if len(m) > 1 else np.nan
    var, dof = per.var(ddof=1), per.count() - 1
    seed_noise = (float(np.sqrt((var[dof > 0] * dof[dof > 0]).sum() / dof[dof > 0].sum())) / rel
                  if (dof > 0).any() else np.nan)
    ck_noise = (float(ck.loc[(size, task, metric), "noise_checkpoint"]) / rel
                if (size, task, metric) in ck.index else np.nan)
    noise, source = (seed_noise, "seeds") if not np.isnan(seed_noise) else (ck_noise,
                                                                            "checkpoints")
    if np.isnan(noise):
      _warn(warnings, f"size {size}, {task}/{metric}: one seed and fewer than 2 checkpoints "
                      f"per run: noise (and SNR) undefined")
    ratio = (np.nan if np.isnan(signal) or np.isnan(noise)
             else signal / noise if noise > 0 else (np.inf if signal > 0 else np.nan))
    rows.append({"size": size, "task": task, "metric": metric, "snr": ratio, "signal": signal,
                 "noise": noise, "noise_source": source, "noise_seed": seed_noise,
                 "noise_checkpoint": ck_noise, "n_recipes": len(m),
                 "n_seeds": int(per.count().max()), "n_checkpoints": noise_checkpoints})
  return _by_size(pd.DataFrame(rows), table)


def _by_size(df: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
  if df.empty:
    return df
  order = {s: i for i, s in enumerate(size_order(table))}
  return (df.assign(_o=df["size"].map(order)).sort_values(["task", "metric", "_o"])
          .drop(columns="_o").reset_index(drop=True))
