"""DataDecide report CLI: files, columns, figures, recommendation, and bad input (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from olmo_jax import sizes
from olmo_jax.datadecide import fits as fits_lib
from olmo_jax.datadecide import results as R
from olmo_jax.datadecide import scores as scores_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ("dolma17", "c4", "falcon", "DCLM-baseline")


def synthetic_ladder(seed=0, recipes=RECIPES, sizes_=("4M", "20M", "60M", "150M"),
                     seeds=(6198, 14), n_ckpt=4, noise=0.003) -> pd.DataFrame:
  """Known-quality recipes on the real ladder: bpb = 3000 C^-0.2 + E_recipe, acc = sigmoid."""
  rng = np.random.default_rng(seed)
  rows = []
  for i, r in enumerate(recipes):
    for z in sizes_:
      s = sizes.get_size(z)
      for sd in seeds:
        for k in range(1, n_ckpt + 1):
          step = s.final_step * k // n_ckpt
          c = R.ladder_compute(z, step)
          bpb = (3000.0 * c ** -0.2 + 1.9 + 0.08 * i) * np.exp(rng.normal(0, noise))
          acc = float(fits_lib.sigmoid(bpb, {"a": 0.6, "k": -3.0, "L0": 3.0, "b": 0.25}))
          rows += R.make_rows(r, z, sd, step, R.ladder_tokens(z, step), R.size_params(z),
                              {"arc_easy": {"acc_raw": acc + rng.normal(0, noise), "bpb": bpb}})
  return R.validate_table(pd.DataFrame(rows))


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "olmo_jax.datadecide", *args], cwd=REPO,
                        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
  d = tmp_path_factory.mktemp("dd")
  return R.write_table(synthetic_ladder(), str(d / "results"))[0]


def test_report_cli_writes_everything(table_path, tmp_path):
  out = tmp_path / "report"
  r = run_cli("report", "--results", table_path, "--target", "150M", "--output", str(out))
  assert r.returncode == 0, r.stderr
  for f in ("report.md", "recommendation.json", "decision_accuracy.csv", "fig_scaling.png",
            "fig_decision_accuracy.png", "fig_rank_agreement.png"):
    assert (out / f).stat().st_size > 0, f
  da = pd.read_csv(out / "decision_accuracy.csv")
  assert list(da.columns[:7]) == ["size", "task", "metric", "method", "protocol",
                                  "decision_accuracy", "compute_fraction"]
  # DataDecide's scaling-law setups by default: the default seed, on the proxy sizes (none of
  # 150M-750M lies below this target) and without the largest one or two
  assert set(da["method"]) == {"single_scale", "scaling_law_3p", "scaling_law_3p-no_60M",
                               "scaling_law_3p-no_60M_no_20M"}
  assert set(da["setup"].dropna()) == {"3_param-default", "3_param-no_60M",
                                       "3_param-no_60M_no_20M"}
  assert set(da["protocol"]) == {"per_seed", "seed_mean"}
  final = da[(da["step"] == "final") & (da["method"] == "single_scale")]
  inter = da[(da["step"] != "final") & (da["method"] == "single_scale")]
  for (size, proto), g in inter.groupby(["size", "protocol"]):  # checkpoints cost less
    f = final[(final["size"] == size) & (final["protocol"] == proto)]
    assert g["compute_fraction"].max() < f["compute_fraction"].min()
  # compute_fraction of 20M's final checkpoint = published compute 20M / 150M
  row = final[(final["size"] == "20M")].iloc[0]
  assert row["compute_fraction"] == pytest.approx(R.ladder_compute("20M", 14584)
                                                  / R.ladder_compute("150M", 38157))
  rec = json.loads((out / "recommendation.json").read_text())
  t = pd.read_parquet(table_path)
  h = rec["headline"]
  sub = t[(t["size"] == "60M") & (t["task"] == h["task"]) & (t["metric"] == h["metric"])]
  sub = sub[sub["step"] == sub["step"].max()].groupby("recipe")["value"].mean()
  best = sub.idxmax() if h["higher_is_better"] else sub.idxmin()
  assert rec["decided_at_size"] == "60M" and rec["best_recipe"] == best == "dolma17"
  assert rec["runner_up"] == "c4" and 0.5 < rec["confidence"] <= 1.0
  assert rec["margin"] == pytest.approx(abs(sub["dolma17"] - sub["c4"]))
  assert rec["matches_target"] is True
  md = (out / "report.md").read_text()
  assert "![decision accuracy vs compute](fig_decision_accuracy.png)" in md
  assert "**dolma17**" in md


def test_report_reads_published_layout(tmp_path):
  rows = []
  for data, recipe in (("Dolma1.7", 0), ("C4", 1), ("Falcon", 2)):
    for params in ("4M", "20M", "60M"):
      s = sizes.get_size(params)
      for seed in ("default", "small aux 2"):
        for k in (1, 2):
          step = s.final_step * k // 2
          acc = 0.3 + 0.05 * (2 - recipe) + 0.01 * k + 0.02 * ["4M", "20M", "60M"].index(params)
          rows.append({"params": params, "data": data, "task": "arc_easy", "step": step,
                       "seed": seed, "metrics": json.dumps({"acc_raw": acc})})
  path = tmp_path / "pub.csv"
  pd.DataFrame(rows).to_csv(path, index=False)
  r = run_cli("report", "--results", str(path), "--target", "60M", "--output",
              str(tmp_path / "rep"), "--forms", "3p")
  assert r.returncode == 0, r.stderr
  rec = json.loads((tmp_path / "rep" / "recommendation.json").read_text())
  assert rec["best_recipe"] == "dolma17" and rec["matches_target"]


@pytest.mark.parametrize("case", ["missing_column", "absent_target", "unknown_recipe",
                                  "unknown_size", "missing_file"])
def test_report_bad_input_exit_2(table_path, tmp_path, case):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("earlier work")
  path = table_path
  args = ["--target", "150M"]
  if case == "missing_column":
    path = str(tmp_path / "bad.csv")
    pd.read_parquet(table_path).drop(columns="metric").to_csv(path, index=False)
  elif case == "absent_target":
    args = ["--target", "1B"]
  elif case == "unknown_recipe":
    args += ["--recipes", "dolma17,nosuch"]
  elif case == "unknown_size":
    args += ["--sizes", "4M,3M,150M"]
  elif case == "missing_file":
    path = str(tmp_path / "nope.parquet")
  r = run_cli("report", "--results", path, *args, "--output", str(out))
  assert r.returncode == 2
  msg = r.stderr.strip().splitlines()
  assert len(msg) == 1 and msg[0].startswith("error: "), r.stderr
  expect = {"missing_column": "metric", "absent_target": "1B", "unknown_recipe": "nosuch",
            "unknown_size": "3M", "missing_file": "nope.parquet"}[case]
  assert expect in msg[0]
  assert sorted(os.listdir(out)) == ["keep.txt"]
  assert (out / "keep.txt").read_text() == "earlier work"


def test_truncated_runs_are_named_and_left_out(table_path, tmp_path):
  """A run that stopped short of its final step is named in the warnings and left out of the
  analysis; `--allow-truncated` keeps it (with a warning); a study's planned_step column finds
  truncation even when every run of a size stopped at the same step."""
  t = pd.read_parquet(table_path)
  short = (t["recipe"] == "c4") & (t["size"] == "20M") & (t["seed"] == 14)
  t = t[~(short & (t["step"] == t.loc[short, "step"].max()))]
  path = str(tmp_path / "short.csv")
  t.to_csv(path, index=False)
  name = "c4/20M/seed14 (step 10938 of 14584)"
  for extra, n_seeds, word in (([], 1, "left out"), (["--allow-truncated"], 2, "kept")):
    out = tmp_path / f"rep{len(extra)}"
    r = run_cli("report", "--results", path, "--target", "150M", "--output", str(out), *extra)
    assert r.returncode == 0, r.stderr
    warnings = json.loads((out / "recommendation.json").read_text())["warnings"]
    assert name in warnings[0] and word in warnings[0]
    rk = pd.read_csv(out / "rankings.csv")
    assert set(rk[(rk["size"] == "20M") & (rk["recipe"] == "c4")]["n_seeds"]) == {n_seeds}
    assert set(rk[(rk["size"] == "20M") & (rk["recipe"] == "falcon")]["n_seeds"]) == {2}
  planned = pd.DataFrame({"recipe": ["a", "b", "a", "b"], "size": ["x", "x", "y", "y"],
                          "seed": 1, "step": [5, 5, 9, 10], "planned_step": [8, 8, 10, 10]})
  bad = R.truncated_runs(planned)
  assert list(zip(bad["recipe"], bad["size"], bad["last_step"])) == [
      ("a", "x", 5), ("a", "y", 9), ("b", "x", 5)]
  kept, w = R.drop_truncated(planned.assign(task="t", metric="m"))
  assert list(kept["recipe"] + kept["size"]) == ["by"] and "planned_step" not in kept


def test_figure_helpers_scale_to_the_published_grid():
  """25 recipes: the best 8 each get a colour and marker of their own, the rest grey; up to 10
  recipes all do. Size labels on a log axis keep a minimum gap; seed_mean is plotted at the
  compute of all its seeds' runs."""
  from olmo_jax.datadecide import figures
  names = R.recipe_names()
  st = figures.recipe_styles(names, order=names[::-1])
  shown = [r for r in names[::-1] if st[r]["label"]]
  assert shown == names[::-1][:8]
  assert len({(st[r]["color"], st[r]["marker"]) for r in shown}) == 8
  assert all(st[r]["color"] == "0.65" for r in names if r not in shown)
  assert "tab:gray" not in {st[r]["color"] for r in shown}  # the 8th is not the others' grey
  few = figures.recipe_styles(names[:10])
  assert len({(v["color"], v["marker"]) for v in few.values()}) == 10
  pos = {z: R.ladder_compute(z, sizes.get_size(z).final_step) / R.ladder_compute("1B", 69369)
         for z in list(sizes.LADDER)[:-1]}
  kept = figures.thin_labels(pos, 0.12)
  gaps = np.diff(np.log10([x for x, _ in kept]))
  assert kept[0][1] == "4M" and (gaps >= 0.12).all() and len(kept) < len(pos)
  da = pd.DataFrame({"protocol": ["per_seed", "seed_mean"], "n_seeds": [3, 3],
                     "compute_fraction": [0.01, 0.01]})
  assert list(figures.spent_fraction(da)) == [0.01, pytest.approx(0.03)]
  assert list(figures.spent_fraction(da.assign(n_runs=[1, 3]))) == [0.01, 0.01]


@pytest.mark.slow  # a full report: ~20 s of CPU
def test_decision_accuracy_figure_plots_the_csv_rows(tmp_path):
  """The main figure draws each proxy metric against the target's PRIMARY metric, one panel
  per task (macro first), its points read back from the axes equal to decision_accuracy.csv's
  rows; the same-metric figure draws the same-metric rows; the title says which."""
  from olmo_jax.datadecide import figures, figures_scaling, report, synthetic
  t, _ = synthetic.results_table(n_recipes=8, sizes_=["4M", "20M", "60M", "150M"],
                                 n_tasks=3, seeds=(6198, 14), n_ckpt=3)
  out = report.write_report(t, "150M", str(tmp_path / "rep"), n_boot=50)
  res = out["result"]
  csv = pd.read_csv(tmp_path / "rep" / "decision_accuracy.csv")
  prim = {k: scores_lib.primary_metric(k, g["metric"].unique())
          for k, g in res.table.groupby("task")}
  assert prim["macro"] == "primary" and set(prim.values()) == {"primary", "acc_raw"}
  assert any("'primary' means acc_raw there" in w for w in res.warnings)  # not silent
  for against, want in (("primary", csv["task"].map(prim)), ("same", csv["metric"])):
    path, drawn = figures.fig_decision_accuracy(res, str(tmp_path / f"{against}.png"),
                                                against=against)
    assert os.path.getsize(path) > 10_000
    rows = csv[(csv["target_metric"] == want) & (csv["step"] == "final")
               & ((csv["method"] != "single_scale") | (csv["protocol"] == "per_seed"))
               & csv["decision_accuracy"].notna()]
    assert set(drawn["task"]) == set(rows["task"]) and "macro" in set(drawn["task"])
    # macro rows carry every metric averaged over tasks, and the macro of the primaries
    assert set(drawn["metric"]) == {"acc_raw", "bpb", "correct_prob", "primary"}
    key = ["task", "metric", "method", "size"]
    got = drawn.sort_values(["task", "metric", "method", "x"]).reset_index(drop=True)
    rows = rows.assign(x=figures.spent_fraction(rows)).sort_values(
        ["task", "metric", "method", "x"]).reset_index(drop=True)
    assert len(got) == len(rows) > 0, key
    assert np.allclose(got["decision_accuracy"], rows["decision_accuracy"])
    assert np.allclose(got["x"], rows["x"])
    assert list(got["method"]) == list(rows["method"])
  md = (tmp_path / "rep" / "report.md").read_text()
  assert "fig_decision_accuracy_same.png" in md
  assert figures_scaling.drawn_setup(res, "macro") == "3_param-default"
  assert os.path.getsize(figures.fig_rank_agreement(res, str(tmp_path / "ra.png"))) > 10_000


@pytest.mark.parametrize("case", ["empty", "nan_cell"])
def test_report_on_empty_or_missing_values(tmp_path, case):
  """An empty table: one `error:` line naming the file, exit 2, nothing written. A recipe
  whose values at one size are all NaN: a report, the lost values named in its warnings."""
  t = synthetic_ladder(recipes=RECIPES[:3], sizes_=("4M", "20M", "60M"), seeds=(6198,),
                       n_ckpt=2)
  if case == "empty":
    t = t.iloc[0:0]
  else:
    t.loc[(t["recipe"] == RECIPES[0]) & (t["size"] == "20M"), "value"] = np.nan
  path = tmp_path / "t.csv"
  t.to_csv(path, index=False)
  out = tmp_path / "rep"
  r = run_cli("report", "--results", str(path), "--target", "60M", "--output", str(out),
              "--fit-runs", "all", "--bootstrap", "20")
  if case == "empty":
    assert r.returncode == 2 and r.stderr.startswith("error: --results ")
    assert len(r.stderr.strip().splitlines()) == 1 and "no rows" in r.stderr
    assert not out.exists()
  else:
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "recommendation.json").read_text())
    assert any(f"recipe {RECIPES[0]} at size 20M: 4 of 4 values are missing" in w
               for w in rec["warnings"]), rec["warnings"]
