"""Our DataDecide statistics against outputs of DataDecide's and OLMo's own code.

The expected values were produced by running, unmodified and offline, allenai/DataDecide
(commit 68abc49, single_scale/evaluator.py: Evaluator binary_accuracy with the per-seed
SingleValueWinnerDecider) and OLMo's ladder fitting code (allenai/OLMo commit 9da16466,
scripts/scaling/step1_flops.py fit_step1 and scripts/scaling/step2.py fit_step2 with
olmo/scaling/scaling_laws/fitting_functions.py, as DataDecide's scaling_laws/utils/
scaling_laws.py calls them) on the inputs below, with numpy 2.4, scipy 1.17.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from olmo_jax.datadecide import decisions as decisions_lib
from olmo_jax.datadecide import fits as fits_lib
from olmo_jax.datadecide import scaling as scaling_lib

# (target, prediction, DataDecide binary_accuracy)
BINARY_ACCURACY = [
    ({"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0}, {"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.0}, 0.5),
    ({"r0": 3.0, "r1": 2.0, "r2": 2.0, "r3": 1.0, "r4": 1.0, "r5": 0.0, "r6": 0.0},
     {"r0": 0.0, "r1": 0.0, "r2": 3.0, "r3": 2.0, "r4": 3.0, "r5": 2.0, "r6": 2.0},
     0.3333333333333333),
]
STEP1_FS = [1e15, 1e16, 1e17, 1e18]
STEP1_XS = [1.7670876854480932, 1.5533013115279333, 1.4000379579596631, 1.2764491845666015]
OLMO_3P = {"a": 4.157220580278886, "alpha": 0.12521159071035848, "E": 0.9207530629069353,
           "pred_1e20": 1.1208434128922153}
OLMO_2P = {"a": 2.125038807577063, "alpha": 0.04566579546954744,
           "pred_1e20": 1.0222961343212762}
STEP2_XS = np.linspace(0.8, 1.6, 12)  # the inputs as run: xs and ys below
STEP2_YS = [0.767730603949095, 0.7256988341912475, 0.6761167277245166, 0.6203225171326094,
            0.5583037681732513, 0.4864379768803946, 0.43303347240982626, 0.3794108416158873,
            0.3411969918766276, 0.3122517304841244, 0.2919605235948516, 0.2796904155156624]
OLMO_STEP2 = {False: 0.8023276505326695, True: 0.8437934573036284}  # sigmoid(0.7) per helper


@pytest.mark.parametrize("target,pred,expected", BINARY_ACCURACY)
def test_ties_datadecide_equals_datadecide_binary_accuracy(target, pred, expected):
  acc, n, _ = decisions_lib.pairwise_agreement(pd.Series(pred), pd.Series(target),
                                               ties="datadecide")
  assert acc == pytest.approx(expected, abs=1e-12)
  assert n == len(target) * (len(target) - 1) // 2  # every pair counts


def test_step1_3_param_equals_olmo_ladder_fit():
  p = fits_lib.fit_power_law_3p(np.array(STEP1_FS), np.array(STEP1_XS))
  assert np.log(p["A"]) == pytest.approx(OLMO_3P["a"], rel=1e-6)
  assert p["alpha"] == pytest.approx(OLMO_3P["alpha"], rel=1e-6)
  assert p["E"] == pytest.approx(OLMO_3P["E"], rel=1e-6)
  assert fits_lib.power_law_3p(1e20, p) == pytest.approx(OLMO_3P["pred_1e20"], rel=1e-7)


def test_step1_2_param_reaches_olmo_objective():
  """Every residual sits in the Huber loss's linear part: the optimum is a flat valley, so
  the fits may differ in parameters but not in objective (and predict within 0.5%)."""
  f, y = np.array(STEP1_FS), np.array(STEP1_XS)
  p = fits_lib.fit_power_law_2p(f, y)
  theirs = fits_lib.huber(OLMO_2P["a"] - OLMO_2P["alpha"] * np.log(f) - np.log(y)).sum()
  assert p["objective"] <= theirs * (1 + 1e-9)
  assert fits_lib.power_law_3p(1e20, p) == pytest.approx(OLMO_2P["pred_1e20"], rel=5e-3)


@pytest.mark.parametrize("helper", [False, True])
def test_step2_equals_olmo_ladder_fit(helper):
  x, y = STEP2_XS, np.array(STEP2_YS)
  if helper:  # DataDecide's helper point: a loss of 0 scores the task maximum, 1
    x, y = np.append(x, scaling_lib.HELPER_POINT[0]), np.append(y, scaling_lib.HELPER_POINT[1])
  p = fits_lib.fit_sigmoid(x, y, least_squares=True)
  assert float(fits_lib.sigmoid(0.7, p)) == pytest.approx(OLMO_STEP2[helper], rel=1e-6)
