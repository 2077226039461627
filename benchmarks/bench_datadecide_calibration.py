"""Is the recommendation's confidence calibrated? Stated vs realised over planted replicates.

    python benchmarks/bench_datadecide_calibration.py [--replicates 200] [--sizes 750M,1B]

Each replicate draws a fresh planted table (olmo_jax/datadecide/synthetic.py: 25 recipes x
the sizes x 10 OLMES tasks x 3 seeds, a new noise seed each time), picks the best recipe at
the largest proxy on the macro of the tasks' primary metrics as the report does, and states
its confidence (olmo_jax/datadecide/confidence.py). Realised: whether the pick is the
target's measured best (seed mean at the target). Prints the mean stated confidence against
the realised rate, overall and in bins of the stated value.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from olmo_jax.datadecide import confidence, synthetic  # noqa: E402
from olmo_jax.datadecide.scores import MACRO_METRIC, MACRO_TASK, macro_table  # noqa: E402


def replicate(seed: int, sizes_: list[str], n_boot: int) -> dict:
  """One planted table: the pick at the largest proxy, its confidence, whether it matched."""
  table, truth = synthetic.results_table(sizes_=sizes_, seed=seed)
  full = pd.concat([table, macro_table(table)], ignore_index=True)
  target, proxy = sizes_[-1], sizes_[-2]
  runs = confidence.headline_runs(full, proxy, MACRO_TASK, MACRO_METRIC)
  means = runs.groupby("recipe")["value"].mean()
  pick = means.idxmax()
  c = confidence.headline_confidence(full, proxy, target, MACRO_TASK, MACRO_METRIC, pick,
                                     n_boot)
  tgt = confidence.headline_runs(full, target, MACRO_TASK, MACRO_METRIC)
  target_best = tgt.groupby("recipe")["value"].mean().idxmax()
  return {"seed": seed, "pick": pick, "stated": c["confidence"],
          "proxy_bootstrap": c["proxy_bootstrap"], "matched": pick == target_best,
          "planted_best": pick == truth["best"]}


def calibration(replicates: int, sizes_: list[str], n_boot: int = 1000) -> pd.DataFrame:
  return pd.DataFrame([replicate(s, sizes_, n_boot) for s in range(replicates)])


def summary(df: pd.DataFrame) -> pd.DataFrame:
  """Stated vs realised in bins of the stated confidence, plus an 'all' row."""
  bins = pd.cut(df["stated"], [0, 0.2, 0.4, 0.6, 0.8, 1.0], include_lowest=True)
  g = df.groupby(bins, observed=True).agg(n=("stated", "size"), stated=("stated", "mean"),
                                          realised=("matched", "mean"))
  g.index = g.index.astype(str)
  g.loc["all"] = [len(df), df["stated"].mean(), df["matched"].mean()]
  return g


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--replicates", type=int, default=200)
  p.add_argument("--sizes", default="750M,1B", help="proxy sizes then the target, ladder names")
  p.add_argument("--bootstrap", type=int, default=1000)
  a = p.parse_args(argv)
  cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
              if l.startswith("model name")), "?")
  t0 = time.time()
  df = calibration(a.replicates, a.sizes.split(","), a.bootstrap)
  s = summary(df)
  print(f"{a.replicates} planted replicates, sizes {a.sizes}; {time.time() - t0:.0f} s on {cpu}, "
        f"load {os.getloadavg()[0]:.1f}")
  print(s.to_string(float_format=lambda v: f"{v:.3f}"))
  print(f"proxy-only bootstrap (mean): {df['proxy_bootstrap'].mean():.3f}; pick = planted best: "
        f"{df['planted_best'].mean():.3f}")
  gap = abs(s.loc["all", "stated"] - s.loc["all", "realised"])
  print(f"|stated - realised| = {gap:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
