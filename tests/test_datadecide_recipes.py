"""recipes.json and the report's Recipes table: each study recipe's data and curation chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from olmo_jax.datadecide import recipes as recipes_lib
from olmo_jax.datadecide import results as R

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO}
CURATION = ("curation_raw", "curation_dedup", "curation_dedup_rules",
            "curation_dedup_rules_diverse50")


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "olmo_jax.datadecide", *args], cwd=REPO,
                        capture_output=True, text=True, env=ENV)


def test_curation_study_plan_lists_each_recipe(tmp_path):
  # exactly as the README prints it
  r = run_cli("--config", "configs/datadecide/curation.py", "--workdir", str(tmp_path / "w"),
              "--plan")
  assert r.returncode == 0, r.stderr
  lines = (tmp_path / "w" / "plan.txt").read_text().splitlines()
  assert len(lines) == 4 * 3  # 4 recipes x 3 sizes x 1 seed
  for name in CURATION:
    mine = [l for l in lines if f"--config.data.mixture={name} " in l + " "]
    assert len(mine) == 3, name
    assert all(f"/cells/{name}/" in l for l in mine)
  described = json.loads((tmp_path / "w" / "recipes.json").read_text())
  assert sorted(described) == sorted(CURATION)
  assert not (tmp_path / "w" / "cells").exists()  # --plan trains nothing


def test_recipes_json_names_each_chain(tmp_path):
  d = {n: recipes_lib.describe(n, {"mixture": n}) for n in CURATION}
  assert d["curation_raw"]["curation"] == "sample_prose: raw"
  assert d["curation_dedup"]["curation"] == "sample_prose: exact_dedup > minhash_dedup"
  assert d["curation_dedup"]["data"].startswith("curation_dedup: sample prose")
  rules = d["curation_dedup_rules"]["curation"]
  assert "minhash_dedup > gopher_quality > gopher_repetition > fineweb_quality" in rules
  assert "subsample(clusters=16,fraction=0.5,mode=diversity)" in \
      d["curation_dedup_rules_diverse50"]["curation"]
  # data overrides that are not a recipe file are shown as they are
  custom = recipes_lib.describe("x", {"mixture": "custom", "sources": "t=a/*.npy|b/*.npy"})
  assert custom["data"] == "mixture=custom, sources=t=a/*.npy|b/*.npy"
  assert custom["curation"] == "-"
  assert recipes_lib.describe("y", {})["data"] == "mixture=auto"
  # an uncurated DataDecide recipe: its description, no chain; extra overrides appended
  c4 = recipes_lib.describe("c4x", {"mixture": "c4", "drop_sources": "x"})
  assert c4["curation"] == "-" and c4["data"].startswith("c4") and "drop_sources=x" in c4["data"]
  with pytest.raises(R.InputError, match="recipe 'bad'.*nosuch"):
    recipes_lib.describe("bad", {"mixture": "nosuch"})


def test_study_with_unknown_mixture_fails_before_planning(tmp_path):
  cfg = tmp_path / "s.py"
  cfg.write_text("import ml_collections\n\n\ndef get_config():\n"
                 "  return ml_collections.ConfigDict({'recipes': {'a': {'mixture': 'nosuch'}},"
                 " 'sizes': ['4M']})\n")
  r = run_cli("--config", str(cfg), "--workdir", str(tmp_path / "w"), "--plan")
  assert r.returncode == 2
  msg = r.stderr.strip().splitlines()
  assert len(msg) == 1 and msg[0].startswith("error: recipe 'a'") and "nosuch" in msg[0]
  assert not (tmp_path / "w" / "plan.txt").exists()


def small_table() -> pd.DataFrame:
  """Hand-made scores of the four curation recipes: 3 sizes x 2 seeds x 3 checkpoints."""
  rng = np.random.default_rng(0)
  rows = []
  for i, r in enumerate(CURATION):
    for j, (z, n) in enumerate((("xs", 30_000), ("s", 100_000), ("m", 300_000))):
      for seed in (1, 2):
        for step in (20, 40, 60):
          loss = 6.0 - 0.5 * j - 0.01 * step + 0.1 * i + rng.normal(0, 0.005)
          rows += R.make_rows(r, z, seed, step, step * 512, n,
                              {"heldout": {"loss": loss, "accuracy": 0.5 - loss / 20}})
  return R.validate_table(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory):
  d = tmp_path_factory.mktemp("ddrec")
  table = R.write_table(small_table(), str(d / "results"))[1]  # the csv
  described = {n: recipes_lib.describe(n, {"mixture": n}) for n in CURATION}
  path = recipes_lib.write(str(d / "recipes.json"), described)
  return table, path


def test_report_recipes_table(report_inputs, tmp_path):
  table, recipes_json = report_inputs
  r = run_cli("report", "--results", table, "--target", "m", "--output", str(tmp_path / "rep"),
              "--forms", "3p", "--recipes", recipes_json)
  assert r.returncode == 0, r.stderr
  md = (tmp_path / "rep" / "report.md").read_text()
  section = md.split("## Recipes", 1)[1].split("\n## ", 1)[0]
  rows = [l for l in section.splitlines() if l.startswith("| curation_")]
  assert [l.split(" | ")[0][2:] for l in rows] == sorted(CURATION)
  by = {l.split(" | ")[0][2:]: l for l in rows}
  assert by["curation_dedup"].endswith("| sample_prose: exact_dedup > minhash_dedup |")
  assert "sample_prose: raw |" in by["curation_raw"]
  assert "fineweb_quality > subsample(" in by["curation_dedup_rules_diverse50"]
  # with a recipe filter as well: only the kept recipes are listed
  r = run_cli("report", "--results", table, "--target", "m", "--output", str(tmp_path / "two"),
              "--forms", "3p", "--recipes", recipes_json, "--recipes",
              "curation_raw,curation_dedup")
  assert r.returncode == 0, r.stderr
  md = (tmp_path / "two" / "report.md").read_text()
  assert "| curation_dedup | " in md and "| curation_dedup_rules | " not in md


def test_report_without_or_with_missing_recipes_file(report_inputs, tmp_path):
  table, _ = report_inputs
  r = run_cli("report", "--results", table, "--target", "m", "--output", str(tmp_path / "rep"),
              "--forms", "3p")
  assert r.returncode == 0, r.stderr
  assert "## Recipes" not in (tmp_path / "rep" / "report.md").read_text()
  r = run_cli("report", "--results", table, "--target", "m", "--output", str(tmp_path / "bad"),
              "--recipes", str(tmp_path / "nope.json"))
  assert r.returncode == 2
  msg = r.stderr.strip().splitlines()
  assert len(msg) == 1 and "nope.json" in msg[0] and msg[0].startswith("error: ")
  assert not (tmp_path / "bad").exists()


def test_report_with_recipes_imports_no_jax(report_inputs, tmp_path):
  table, recipes_json = report_inputs
  code = ("import sys\nfrom olmo_jax.datadecide.__main__ import main\n"
          f"rc = main(['report', '--results', {table!r}, '--target', 'm', '--output', "
          f"{str(tmp_path / 'rep')!r}, '--forms', '3p', '--recipes', {recipes_json!r}])\n"
          "print('RESULT', rc, 'jax' in sys.modules)\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                     env=ENV)
  assert r.stdout.strip().splitlines()[-1] == "RESULT 0 False", r.stdout + r.stderr
