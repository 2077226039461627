"""DataDecide results table and analysis against brute-force references on hand-made tables."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from olmo_jax import sizes
from olmo_jax.datadecide import decisions as decisions_lib
from olmo_jax.datadecide import fits as fits_lib
from olmo_jax.datadecide import noise as noise_lib
from olmo_jax.datadecide import results as R
from olmo_jax.datadecide import scaling as scaling_lib
from olmo_jax.datadecide import scores as scores_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLISHED_COMPUTE = {
    "4M": 8430221996851200, "20M": 219085747985055744, "60M": 1955459382959407104,
    "90M": 5758063377068851200, "150M": 13674492743500431360,
    "300M": 57609876280946196480, "530M": 168623898622339055616,
    "750M": 306635489591276077056, "1B": 706209840434774016000}


def table_from(values: dict, task="t", metric="acc", steps_compute=None) -> pd.DataFrame:
  """{(recipe, size, seed, step): value} -> a results table (compute = size index * step)."""
  rows = []
  size_rank = {"S": 1.0, "M": 10.0, "L": 100.0, "T": 1000.0}
  for (recipe, size, seed, step), v in values.items():
    c = size_rank[size] * step
    rows.append({"recipe": recipe, "size": size, "seed": seed, "step": step,
                 "tokens": float(step * 100), "compute": c, "task": task, "metric": metric,
                 "value": v})
  return R.validate_table(pd.DataFrame(rows))


def brute_pairs(pred: dict, target: dict) -> tuple[float, int]:
  """Decision accuracy by explicit loops (target ties skipped, prediction ties 1/2)."""
  common = sorted(set(pred) & set(target))
  score, n = 0.0, 0
  for a, b in itertools.combinations(common, 2):
    if target[a] == target[b]:
      continue
    n += 1
    if pred[a] == pred[b]:
      score += 0.5
    elif (pred[a] > pred[b]) == (target[a] > target[b]):
      score += 1
  return (score / n if n else float("nan")), n


def random_study(rng, recipes="abcde", sizes_=("S", "M", "L"), seeds=(1, 2, 3),
                 steps=(10, 20, 30), rounding=1):
  vals = {}
  for r, z, s, st in itertools.product(recipes, sizes_, seeds, steps):
    vals[(r, z, s, st)] = round(float(rng.normal(ord(r) % 7, 1.0)), rounding)
  return vals


def test_pairwise_agreement_ties_by_hand():
  target = pd.Series({"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0})
  pred = pd.Series({"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.0})
  acc, n, ties = decisions_lib.pairwise_agreement(pred, target)
  # (b,c) tied at the target is skipped; (a,d) tied in the prediction counts 1/2.
  assert (acc, n, ties) == (2.5 / 5, 5, 1)
  assert decisions_lib.pairwise_agreement(target, target)[0] == 1.0
  assert decisions_lib.pairwise_agreement(-target, target)[0] == 0.0


@pytest.mark.parametrize("seeds", [(1, 2, 3), (7,)])
def test_decision_accuracy_matches_brute_force(seeds):
  rng = np.random.default_rng(len(seeds))
  vals = random_study(rng, seeds=seeds)
  # a missing run: recipe 'e', size M, first seed lacks everything
  vals = {k: v for k, v in vals.items() if not (k[0] == "e" and k[1] == "M" and k[2] == seeds[0])}
  table = table_from(vals)
  warnings = []
  da = decisions_lib.decision_accuracy(table, "L", warnings=warnings)
  target = {r: np.mean([vals[(r, "L", s, 30)] for s in seeds]) for r in "abcde"}
  for size in ("S", "M"):
    per_seed = []
    for s in seeds:
      pred = {r: vals[(r, size, s, 30)] for r in "abcde" if (r, size, s, 30) in vals}
      acc, n = brute_pairs(pred, target)
      if n:
        per_seed.append(acc)
    got = da[(da["size"] == size) & (da["protocol"] == "per_seed")].iloc[0]
    assert got["decision_accuracy"] == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert got["std"] == pytest.approx(np.std(per_seed), abs=1e-12)
    assert got["n_seeds"] == len(per_seed)
    means = {}
    for r in "abcde":
      v = [vals[(r, size, s, 30)] for s in seeds if (r, size, s, 30) in vals]
      if v:
        means[r] = np.mean(v)
    got = da[(da["size"] == size) & (da["protocol"] == "seed_mean")].iloc[0]
    assert got["decision_accuracy"] == pytest.approx(brute_pairs(means, target)[0], abs=1e-12)
  if len(seeds) == 1:  # the only seed of e at M is gone: reported, never silently dropped
    assert any("size M" in w and "e" in w and "no prediction" in w for w in warnings)
    row = da[(da["size"] == "M") & (da["protocol"] == "seed_mean")].iloc[0]
    assert row["missing"] == "e"
  else:
    assert any("seed 1" in w and "e" in w for w in warnings)
  # compute: per_seed spends one proxy run, seed_mean every seed's run (issue 18, item 5)
  for proto, runs in (("per_seed", 1), ("seed_mean", len(seeds))):
    row = da[(da["size"] == "S") & (da["protocol"] == proto)].iloc[0]
    assert row["compute"] == pytest.approx(runs * 1 * 30)
    assert row["compute_fraction"] == pytest.approx(runs * (1 * 30) / (100 * 30))


def test_recipe_missing_at_one_size_is_reported():
  rng = np.random.default_rng(3)
  vals = {k: v for k, v in random_study(rng).items() if not (k[0] == "c" and k[1] == "S")}
  table = table_from(vals)
  warnings = []
  rk = scores_lib.rankings(table, warnings=warnings)
  da = decisions_lib.decision_accuracy(table, "L", warnings=warnings)
  assert set(rk[rk["size"] == "S"]["recipe"]) == set("abde")
  assert any("size S" in w and "c" in w for w in warnings)
  row = da[(da["size"] == "S") & (da["protocol"] == "seed_mean")].iloc[0]
  assert row["n_pairs"] <= 6 and row["missing"] == "c"


def test_missing_final_checkpoint_cell_is_reported():
  vals = random_study(np.random.default_rng(4))
  del vals[("a", "S", 2, 30)]  # run a/S/2 still has step 30 for nothing else -> final is 20
  vals[("a", "S", 2, 30)] = None
  table = table_from({k: v for k, v in vals.items() if v is not None})
  extra = table[(table["recipe"] == "b") & (table["size"] == "S") & (table["seed"] == 2)
                & (table["step"] == 30)].assign(recipe="a", task="other")
  table = R.validate_table(pd.concat([table, extra]))
  warnings = []
  s = scores_lib.run_scores(table, warnings=warnings)
  assert not ((s["recipe"] == "a") & (s["size"] == "S") & (s["seed"] == 2)
              & (s["task"] == "t")).any()
  assert any("run a/S/seed 2" in w and "final step 30" in w for w in warnings)


def test_rankings_ties_last_k_and_direction():
  vals = {}
  for r, v in zip("abc", (2.0, 2.0, 1.0)):
    for st in (10, 20, 30):
      vals[(r, "S", 1, st)] = v + (0.0 if st == 30 else 5.0 * (r == "c"))
  table = table_from(vals)
  rk = scores_lib.rankings(table)
  assert list(rk["recipe"]) == ["a", "b", "c"] and list(rk["rank"]) == [1, 1, 3]
  rk3 = scores_lib.rankings(table, last_k=3)  # c's earlier checkpoints lift its mean to 1 + 10/3
  assert rk3.iloc[0]["recipe"] == "c" and rk3.iloc[0]["mean"] == pytest.approx(1 + 10 / 3)
  loss = table.assign(metric="loss")
  assert list(scores_lib.rankings(loss)["recipe"]) == ["c", "a", "b"]


def test_frontier_and_checkpoints_match_brute_force():
  vals = random_study(np.random.default_rng(5))
  table = table_from(vals)
  pts = decisions_lib.checkpoint_decision_accuracy(table, "L", protocols=("seed_mean",))
  target = {r: np.mean([vals[(r, "L", s, 30)] for s in (1, 2, 3)]) for r in "abcde"}
  for size, step in itertools.product(("S", "M"), (10, 20, 30)):
    means = {r: np.mean([vals[(r, size, s, step)] for s in (1, 2, 3)]) for r in "abcde"}
    got = pts[(pts["size"] == size) & (pts["step"] == step)].iloc[0]
    assert got["decision_accuracy"] == pytest.approx(brute_pairs(means, target)[0])
  f = decisions_lib.frontier(pts)
  brute = [r for _, r in pts.iterrows()
           if not any((o["compute_fraction"] <= r["compute_fraction"])
                      and (o["decision_accuracy"] > r["decision_accuracy"])
                      for _, o in pts.iterrows())]
  brute_keys = {(r["size"], r["step"]) for r in brute}
  got_keys = {(r["size"], r["step"]) for _, r in f.iterrows()}
  # equal-accuracy points at higher compute are not on the staircase
  assert got_keys <= brute_keys
  assert {round(r["decision_accuracy"], 12) for r in brute} == \
      {round(a, 12) for a in f["decision_accuracy"]}


def test_snr_matches_brute_force():
  """Signal over recipes; noise from the seeds, or (one seed) detrended late checkpoints."""
  vals = random_study(np.random.default_rng(6), rounding=3)
  vals = {k: v + 10 for k, v in vals.items()}
  table = table_from(vals)
  out = noise_lib.snr(table, noise_checkpoints=2)
  one = noise_lib.snr(table[table["seed"] == 1], noise_checkpoints=2)
  for size in ("S", "M", "L"):
    means = [np.mean([vals[(r, size, s, 30)] for s in (1, 2, 3)]) for r in "abcde"]
    signal = (max(means) - min(means)) / abs(np.mean(means))
    pooled = np.sqrt(np.mean([np.var([vals[(r, size, s, 30)] for s in (1, 2, 3)], ddof=1)
                              for r in "abcde"]))
    got = out[out["size"] == size].iloc[0]
    assert got["signal"] == pytest.approx(signal)
    assert got["noise_source"] == "seeds"
    assert got["noise"] == pytest.approx(pooled / abs(np.mean(means)))
    assert got["snr"] == pytest.approx(signal * abs(np.mean(means)) / pooled)
    # one seed: residual from the step's mean over recipes, minus each run's mean residual
    curve = {st: np.mean([vals[(r, size, 1, st)] for r in "abcde"]) for st in (20, 30)}
    ss = 0.0
    for r in "abcde":
      res = [vals[(r, size, 1, st)] - curve[st] for st in (20, 30)]
      ss += sum((x - np.mean(res)) ** 2 for x in res)
    m1 = [vals[(r, size, 1, 30)] for r in "abcde"]
    got = one[one["size"] == size].iloc[0]
    assert got["noise_source"] == "checkpoints" and np.isnan(got["noise_seed"])
    assert got["noise"] == pytest.approx(np.sqrt(ss / 5) / abs(np.mean(m1)))


def test_power_law_3p_recovers_parameters():
  rng = np.random.default_rng(0)
  c = np.logspace(15, 19, 12)
  true = {"A": 3000.0, "alpha": 0.2, "E": 1.8}
  y = fits_lib.power_law_3p(c, true) * np.exp(rng.normal(0, 1e-3, c.size))
  p = fits_lib.fit_power_law_3p(c, y)
  assert p["alpha"] == pytest.approx(0.2, rel=0.05)
  assert p["E"] == pytest.approx(1.8, rel=0.02)
  assert p["A"] == pytest.approx(3000, rel=0.3)
  assert fits_lib.power_law_3p(1e21, p) == pytest.approx(fits_lib.power_law_3p(1e21, true),
                                                         rel=5e-3)


def test_power_law_5p_recovers_parameters():
  rng = np.random.default_rng(1)
  n = np.repeat(np.logspace(6, 9, 5), 4)
  d = n * np.tile([20.0, 50.0, 100.0, 200.0], 5)
  true = {"A": 400.0, "alpha": 0.34, "B": 410.0, "beta": 0.28, "E": 1.7}
  y = fits_lib.power_law_5p(n, d, true) * np.exp(rng.normal(0, 1e-3, n.size))
  p = fits_lib.fit_power_law_5p(n, d, y)
  for k in ("alpha", "beta"):
    assert p[k] == pytest.approx(true[k], abs=0.02)
  assert p["E"] == pytest.approx(1.7, rel=0.03)
  assert fits_lib.power_law_5p(1e10, 1e12, p) == pytest.approx(
      fits_lib.power_law_5p(1e10, 1e12, true), rel=0.01)


def test_sigmoid_recovers_parameters():
  rng = np.random.default_rng(2)
  x = np.linspace(1, 4, 40)
  true = {"a": 0.6, "k": -3.0, "L0": 2.5, "b": 0.25}
  p = fits_lib.fit_sigmoid(x, fits_lib.sigmoid(x, true) * np.exp(rng.normal(0, 1e-3, x.size)))
  for k, v in true.items():
    assert p[k] == pytest.approx(v, rel=0.03, abs=0.01)


def test_two_step_prediction_on_synthetic_ladder():
  """Loss from a known L(C) per recipe, accuracy from a known sigmoid: ranks recovered."""
  quality = {"a": 1.9, "b": 2.0, "c": 2.2}  # E per recipe: a is best
  acc_curve = {"a": 0.7, "k": -2.0, "L0": 3.0, "b": 0.25}
  rows = []
  size_c = {"S": 1e15, "M": 1e16, "L": 1e17, "T": 1e18}
  for r, e in quality.items():
    for size, cmax in size_c.items():
      for frac in (0.5, 0.8, 0.9, 1.0):
        c = cmax * frac
        loss = 2000.0 * c ** -0.2 + e
        for metric, v in (("loss", loss), ("acc", float(fits_lib.sigmoid(loss, acc_curve)))):
          rows.append({"recipe": r, "size": size, "seed": 1, "step": int(frac * 100),
                       "tokens": c / 6e6, "compute": c, "task": "t", "metric": metric,
                       "value": v})
  table = R.validate_table(pd.DataFrame(rows))
  preds = scaling_lib.scaling_law_predictions(table, "T", forms=("3p",))
  acc = preds[preds["metric"] == "acc"].set_index("recipe")
  assert acc["rel_error"].max() < 0.02
  da = scaling_lib.scaling_law_decision_accuracy(preds, table, "T")
  assert set(da["decision_accuracy"]) == {1.0}
  assert set(da["size"]) == {"L"} and set(da["method"]) == {"scaling_law_3p"}


def test_ladder_compute_equals_published_exactly():
  for size, flops in PUBLISHED_COMPUTE.items():
    s = sizes.get_size(size)
    assert R.ladder_compute(size, s.final_step) == flops
    rows = R.make_rows("dolma17", size, 6198, s.final_step, R.ladder_tokens(size, s.final_step),
                       R.size_params(size), {"arc_easy": {"acc_raw": 0.5}})
    assert rows[0]["compute"] == float(flops)


def published_fixture(tmp_path) -> str:
  rows = []
  for data, params, seed, step, acc in [
      ("Dolma1.7 (no code)", "4M", "default", 5725, 0.40),
      ("DCLM-Baseline 25% / Dolma 75%", "4M", "small aux 2", 5725, 0.42),
      ("Falcon+CC (QC 10%)", "150M", "default", 38157, 0.55),
      ("Dolma1.7", "150M", "large aux 3", 2500, 0.31)]:
    rows.append({"params": params, "data": data, "task": "arc_easy", "step": step,
                 "seed": seed, "metrics": json.dumps({"acc_raw": acc, "correct_prob": acc / 2,
                                                      "note": "text is skipped"})})
  path = str(tmp_path / "published.parquet")
  pd.DataFrame(rows).to_parquet(path)
  return path


def test_convert_published_layout(tmp_path):
  t = R.read_table(published_fixture(tmp_path))
  assert list(t.columns) == list(R.COLUMNS)
  assert len(t) == 8  # two numeric metrics per row
  got = t[t["metric"] == "acc_raw"].set_index("recipe")
  assert got.loc["no_code", "seed"] == 6198 and got.loc["no_code", "value"] == 0.40
  assert got.loc["dolma17-75p-DCLM-baseline-25p", "seed"] == 14
  assert got.loc["falcon_and_cc_eli5_oh_top10p", "compute"] == float(PUBLISHED_COMPUTE["150M"])
  assert got.loc["dolma17", "seed"] == 5
  assert got.loc["dolma17", "tokens"] == 2500 * 192 * 2048
  # written and read back: the same table from Parquet and from CSV
  pq, csv = R.write_table(t, str(tmp_path / "out" / "results"))
  for path in (pq, csv):
    back = R.read_table(path)
    pd.testing.assert_frame_equal(back, t)


def test_display_names_cover_our_recipes():
  sys.path.insert(0, os.path.join(REPO, "configs", "data_configs"))
  try:
    import datadecide as recipes
  finally:
    sys.path.pop(0)
  assert set(R.DISPLAY_NAMES.values()) == set(recipes.recipe_names())
  assert R.recipe_from_display("dolma1.7 (No Code)") == "no_code"
  with pytest.raises(R.InputError, match="Mystery"):
    R.recipe_from_display("Mystery Mix")


def test_bad_tables_fail_clearly(tmp_path):
  t = table_from({("a", "S", 1, 10): 1.0})
  with pytest.raises(R.InputError, match="missing column.*metric"):
    R.validate_table(t.drop(columns="metric"))
  with pytest.raises(R.InputError, match="duplicate"):
    R.validate_table(pd.concat([t, t]))
  with pytest.raises(ValueError, match="target size 'XL' is not in the results table"):
    decisions_lib.decision_accuracy(t, "XL")


def test_analysis_imports_without_jax():
  code = ("import sys; import olmo_jax.datadecide.scores, olmo_jax.datadecide.decisions, "
          "olmo_jax.datadecide.scaling, olmo_jax.datadecide.results, "
          "olmo_jax.datadecide.report, olmo_jax.sizes; "
          "assert 'jax' not in sys.modules, 'jax imported'; print('ok')")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": REPO})
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
