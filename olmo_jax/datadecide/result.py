"""The analysis behind a report, as one value (report.analyse builds it)."""

from __future__ import annotations

import dataclasses

import pandas as pd


@dataclasses.dataclass
class Analysis:
  """Every analysis of a report. Tables are DataFrames (the package docstring defines them)."""

  target: str  # the size whose ranking is predicted
  sizes: list[str]  # every size of the table, smallest compute first
  proxies: list[str]  # the sizes other than the target
  headline: tuple[str, str]  # (task, metric) of the recommendation
  decision_accuracy: pd.DataFrame  # rows whose target metric is the proxy metric itself
  decision_accuracy_all: pd.DataFrame  # every row (decision_accuracy.csv)
  frontier: pd.DataFrame  # compute frontier of the single-scale rows, every target metric
  frontier_same: pd.DataFrame  # the same, same-metric rows only
  scaling_law: pd.DataFrame  # the fitted predictions
  scaling_law_all: pd.DataFrame  # every prediction, under-determined ones too (the CSV)
  scaling_law_da: pd.DataFrame  # decision accuracy of the scaling-law predictions
  snr: pd.DataFrame
  rankings: pd.DataFrame
  rank_agreement: pd.DataFrame  # sizes x sizes, the headline's
  warnings: list[str]
  last_k: int
  ties: str
  table: pd.DataFrame  # the input plus the macro task's rows
  ceiling: pd.DataFrame  # the target's agreement with itself (analysis.target_ceiling)
  fit_runs: str  # the runs the scaling laws fit on (analysis.fit_variants)
