"""DataDecide's scaling-law conventions: checkpoints per step, per-recipe step 2, helper
point, under-determined fits, ties within tolerance, the 8 setups."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from olmo_jax.datadecide import fits as fits_lib
from olmo_jax.datadecide import results as R
from olmo_jax.datadecide import scaling as scaling_lib

SIZE_C = {"S": 1e15, "M": 1e16, "L": 1e17, "XL": 1e18, "T": 1e19}
CURVES = {"a": {"a": 0.7, "k": -2.0, "L0": 3.0, "b": 0.25},  # per-recipe loss -> accuracy
          "b": {"a": 0.5, "k": -4.0, "L0": 2.6, "b": 0.30}}


def ladder(sizes=("S", "M", "L", "XL", "T"), n_ckpt=10, quality=None, curves=CURVES):
  """Loss = 2000 C^-0.2 + E_recipe at every checkpoint; accuracy = the recipe's sigmoid."""
  quality = quality or {"a": 1.9, "b": 2.1}
  rows = []
  for r, e in quality.items():
    for size in sizes:
      for k in range(1, n_ckpt + 1):
        c = SIZE_C[size] * k / n_ckpt
        loss = 2000.0 * c ** -0.2 + e
        for metric, v in (("bpb", loss), ("acc", float(fits_lib.sigmoid(loss, curves[r])))):
          rows.append({"recipe": r, "size": size, "seed": 1, "step": 10 * k,
                       "tokens": c / 6e6, "compute": c, "task": "t", "metric": metric,
                       "value": v})
  return R.validate_table(pd.DataFrame(rows))


def test_step1_point_is_the_mean_of_the_last_tenth_of_checkpoints_by_count():
  for n in (5, 10, 20, 23):
    t = ladder(sizes=("S",), n_ckpt=n)
    pts = scaling_lib._fit_points(t[t["metric"] == "bpb"])
    got = pts[pts["recipe"] == "a"]["value"].iloc[0]
    vals = t[(t["recipe"] == "a") & (t["metric"] == "bpb")].sort_values("step")["value"]
    first = min(n - 1, math.ceil(0.9 * n))  # DataDecide: index ceil(0.9 n) onward, >= 1 point
    assert got == pytest.approx(vals.iloc[first:].mean())
    assert pts["compute"].iloc[0] == pytest.approx(SIZE_C["S"])  # the final step's compute


@pytest.mark.parametrize("share", [0.9, 0.5])
def test_step2_takes_the_last_share_of_checkpoints(share):
  t = ladder(sizes=("S", "M"), n_ckpt=10)
  pts = scaling_lib._step2_points(t[t["recipe"] == "a"], "bpb", "acc", share)
  keep = 10 - math.ceil((1 - share) * 10)
  assert len(pts) == 2 * keep
  assert pts.index.get_level_values("step").min() == 10 * (10 - keep + 1)


def test_step2_is_fitted_per_recipe():
  """Two recipes with different loss -> accuracy curves: each is predicted within 1%."""
  t = ladder()
  p = scaling_lib.scaling_law_predictions(t, "T", forms=("3p",))
  acc = p[p["metric"] == "acc"].set_index("recipe")
  assert set(acc["status"]) == {"ok"}
  assert acc["rel_error"].max() < 0.01
  assert json_curve(acc.loc["a", "step2"]) != json_curve(acc.loc["b", "step2"])


def json_curve(s):
  import json
  return tuple(round(v, 3) for v in json.loads(s).values())


def test_under_determined_fits_are_reported_and_left_out():
  t = ladder(sizes=("S", "M", "T"))  # 2 proxy sizes: the 3-parameter law has 2 points
  w = []
  p = scaling_lib.scaling_law_predictions(t, "T", forms=("3p", "2p"), warnings=w)
  three = p[p["setup"] == "3_param-default"]
  assert set(three["status"]) == {"under-determined: 2 proxy sizes < 3 parameters"}
  assert three["predicted"].isna().all()
  assert set(p[p["setup"] == "2_param-default"]["status"]) == {"ok"}
  assert any("3_param-default" in x and "under-determined" in x for x in w)
  da = scaling_lib.scaling_law_decision_accuracy(p, t, "T")
  row = da[(da["setup"] == "3_param-default") & (da["metric"] == "acc")].iloc[0]
  assert np.isnan(row["decision_accuracy"]) and row["missing"] == "a,b"
  assert da[da["setup"] == "2_param-default"]["decision_accuracy"].notna().all()


def test_predictions_within_tolerance_are_a_tie():
  t = ladder(quality={"a": 1.9, "b": 1.9 + 1e-12}, curves={"a": CURVES["a"], "b": CURVES["a"]})
  p = scaling_lib.scaling_law_predictions(t, "T", forms=("3p",))
  bpb = p[p["metric"] == "bpb"].set_index("recipe")["predicted"]
  # the fits' own jitter separates identical recipes by ~1e-9: within TIE_RTOL, a tie
  assert abs(bpb["a"] - bpb["b"]) < scaling_lib.TIE_RTOL * abs(bpb["a"])
  tgt = t[t["size"] == "T"].copy()
  tgt.loc[tgt["recipe"] == "b", "value"] += 0.01  # the target does order them
  t2 = pd.concat([t[t["size"] != "T"], tgt])
  for ties, expected in (("half", 0.5), ("datadecide", 0.0)):
    da = scaling_lib.scaling_law_decision_accuracy(p, t2, "T", ties=ties)
    assert set(da["decision_accuracy"]) == {expected}


def test_every_datadecide_setup_runs_or_says_why():
  t = ladder()  # 4 proxy sizes
  w = []
  p = scaling_lib.scaling_law_predictions(t, "T", forms=tuple(scaling_lib.SETUPS), warnings=w)
  assert set(p["setup"]) == set(scaling_lib.SETUPS) and len(scaling_lib.SETUPS) == 8
  status = p.groupby("setup")["status"].agg(lambda s: sorted(set(s)))
  for setup in ("3_param-default", "3_param-helper_points", "3_param-step2=0.5",
                "3_param-helper_points-step2=0.5", "2_param-default", "3_param-1_step"):
    assert status[setup] in (["ok"], ["ok", "under-determined: 4 proxy sizes < 7 parameters"])
  # 5 parameters from 4 sizes: under-determined, with the reason in the warnings
  assert status["5_param-ai2"] == ["under-determined: 4 proxy sizes < 5 parameters"]
  assert any("5_param-ai2" in x for x in w)
  ok = p[(p["setup"] == "3_param-default") & (p["metric"] == "acc")]
  assert ok["rel_error"].max() < 0.01
