"""Planted-truth results tables for the DataDecide statistics tests (known quality, noise)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from olmo_jax.datadecide import results as R


def planted_table(*, n_recipes=25, n_sizes=14, task_noise=(0.002, 0.005, 0.01, 0.02, 0.04),
                  seeds=(1,), n_ckpt=5, spread=0.01, curve=0.15, seed=0,
                  metric="acc_raw") -> pd.DataFrame:
  """Recipes of fixed true quality over sizes, each task with its own planted noise.

  value = 0.3 + curve * (size fraction + step fraction) / 2 (a learning curve that rises with
  size and step, shared by every recipe) + spread * quality_recipe + N(0, task_noise[task]) per
  checkpoint and seed. Sizes are s00..s13 (compute 10^(15 + i/3) x step fraction), tasks
  t0..t{n-1}; the largest size is the target.
  """
  rng = np.random.default_rng(seed)
  quality = rng.normal(0, 1, n_recipes)
  rows = []
  for z in range(n_sizes):
    for k in range(1, n_ckpt + 1):
      frac = k / n_ckpt
      base = 0.3 + curve * (z / max(n_sizes - 1, 1) + frac) / 2
      for t, sigma in enumerate(task_noise):
        eps = rng.normal(0, sigma, (n_recipes, len(seeds)))
        for r in range(n_recipes):
          for j, sd in enumerate(seeds):
            rows.append((f"r{r:02d}", f"s{z:02d}", sd, 100 * k, 1e6 * k,
                         10 ** (15 + z / 3) * frac, f"t{t}", metric,
                         base + spread * quality[r] + eps[r, j]))
  return R.validate_table(pd.DataFrame(rows, columns=list(R.COLUMNS)))
