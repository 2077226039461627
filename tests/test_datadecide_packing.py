"""The study's packs (olmo_jax/datadecide/packing.py): which cells share a program, and a packed
study equal to the same study with --no-pack (every cell its own process)."""

from __future__ import annotations

import os
import runpy
import subprocess

import pandas as pd
import pytest
from datadecide_fakes import STUDY_BODY, write_study_config
from test_datadecide_study import E2E, ENV, REPO, study_cmd

from olmo_jax.datadecide import packing
from olmo_jax.datadecide.study import Study


def test_packs_hold_the_cells_of_one_size_at_most_pack_size(tmp_path):
  body = STUDY_BODY.replace('c.sizes = ["t1"]', 'c.sizes = ["t2", "t1"]').replace(
      "c.seeds = [1]", "c.seeds = [1, 2, 3]")
  study = Study(runpy.run_path(write_study_config(tmp_path / "s.py", body))["get_config"](),
                str(tmp_path / "w"))
  packs = packing.make_packs(study, study.cells(), pack_size=4)
  assert [n for n, _ in packs] == ["t1-0", "t1-1", "t1-2", "t2-0", "t2-1", "t2-2"]
  assert [len(cs) for _, cs in packs] == [3] * 6  # 9 cells of a size: 3 packs of 3, not 4+4+1
  assert all(len({c.size for c in cs}) == 1 for _, cs in packs)
  assert sorted(c.name for _, cs in packs for c in cs) == sorted(c.name for c in study.cells())
  two = packing.make_packs(study, study.cells(), pack_size=16, workers=2)
  assert [(n, len(cs)) for n, cs in two] == [("t1-0", 5), ("t1-1", 4), ("t2-0", 5), ("t2-1", 4)]
  cmd = packing.pack_command(study, "t1-0", packs[0][1])
  lines = (tmp_path / "w" / "packs" / "t1-0.txt").read_text().splitlines()
  assert cmd[-2:] == ["--replicas_from", str(tmp_path / "w" / "packs" / "t1-0.txt")]
  assert lines[0].split()[:2] == ["--config", f"{study.c.train_config}:4M"]
  assert all(f"--workdir {study.cell_dir(c)}" in line for c, line in zip(packs[0][1], lines))


@pytest.mark.slow
def test_packed_study_equals_the_unpacked_study(tmp_path):
  cfg = write_study_config(tmp_path / "s.py", E2E.format(data_dir=os.path.join(REPO, "data")))
  out = {}
  for name, extra in (("packed", []), ("alone", ["--no-pack"])):
    r = subprocess.run(study_cmd(cfg, tmp_path / name, "--no-report", *extra), env=ENV,
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out[name] = r.stdout
  assert "to train in 2 pack(s)" in out["packed"]
  assert "t1-0 (3 replicas) step" in out["packed"] and "[study] packs: 2 done" in out["packed"]
  keys = ["recipe", "size", "seed", "step", "task", "metric"]
  a, b = (pd.read_parquet(tmp_path / n / "results.parquet").sort_values(keys)
          .reset_index(drop=True) for n in ("packed", "alone"))
  assert len(a) == 24 and a[keys].equals(b[keys])
  pd.testing.assert_series_equal(a["value"], b["value"], rtol=1e-6)
