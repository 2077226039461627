"""A DataDecide study submitted to a real SLURM (`--executor slurm`, the private cluster of
tests/slurm_cluster.py): the job array of cells not done, packs, the collect job, scancel and a
resubmission that submits only what is left, cells trained elsewhere recognised by their final
checkpoint, the status command; the slow test trains real cells and compares the results table
with the local executor's."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from datadecide_fakes import STUDY_BODY, write_study_config

from olmo_jax.datadecide import __main__ as dd_main
from olmo_jax.datadecide import slurm as slurm_lib
from olmo_jax.datadecide import status
from olmo_jax.datadecide import study as study_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def study_cmd(config, workdir, *extra):
  return [sys.executable, "-m", "olmo_jax.datadecide", "--config", config, "--workdir",
          str(workdir), *extra]


def run(cmd, env, timeout=300):
  return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def submitted(stdout: str) -> tuple[str, str]:
  """(array job id, collect job id) of a submission's printed lines."""
  line = next(l for l in stdout.splitlines() if l.startswith("[study] array job"))
  return line.split()[3], line.split("collect job ")[1].split()[0]


def test_grid_as_job_array_cancel_resubmit_and_collect(slurm, tmp_path):
  body = STUDY_BODY.replace('("a", "b", "c")', '("a", "b")').replace("c.seeds = [1]",
                                                                      "c.seeds = [1, 2]")
  cfg = write_study_config(tmp_path / "s.py", body)
  wd = tmp_path / "w"
  env = dict(slurm.env, PYTHONPATH=os.pathsep.join([REPO, TESTS]), DD_FAKE_STEP_S="0.02")
  # One cell trained by other means (its command from the study, run by hand).
  st = study_lib.Study(study_lib.load_study_config(cfg), str(wd))
  by_hand = st.cells()[0]
  assert run(st.train_command(by_hand), env).returncode == 0

  # Two cells per task, one task at a time: task 1 is still pending when it is cancelled.
  flags = ["--executor", "slurm", "--cells-per-task", "2", "--max-parallel", "1", "--no-report",
           "--time", "10:00"]
  r = run(study_cmd(cfg, wd, *flags), env)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "4 cells: 0 done, 0 queued or running in earlier jobs, 4 submitted in 2 array " \
         "task(s) (1 already trained: scored only)" in r.stdout
  array, collect = submitted(r.stdout)
  manifest = json.loads((wd / "slurm" / "array-0.json").read_text())
  assert manifest["packs"] == [["a/t1/seed1", "a/t1/seed2"], ["b/t1/seed1", "b/t1/seed2"]]
  slurm.run("scancel", f"{array}_1")
  slurm.wait(collect, timeout_s=120)
  assert slurm.job_state(f"{array}_0") == ("COMPLETED", "0:0")
  assert slurm.job_state(collect) == ("FAILED", "1:0")  # it ran (afterany), cells missing
  log = (wd / "slurm" / "logs" / f"collect-{collect}.out").read_text()
  assert "2 of 4 cells not done (not trained here, --collect): b/t1/seed1, b/t1/seed2" in log
  hand = wd / "cells" / "a" / "t1" / "seed1"
  assert json.loads((hand / "DONE.json").read_text())["recognised"] == "final checkpoint"
  assert (hand / "steps.log").read_text().split() == [str(s) for s in range(1, 13)]  # once

  assert status.lines(st)[:2] == [  # what `python -m olmo_jax.datadecide status` prints
      "study 'fake': 4 cells: 2 done, 2 not started",
      "  b/t1/seed1" + " " * 23 + "not started"]

  r = run(study_cmd(cfg, wd, *flags), env)
  assert "4 cells: 2 done, 0 queued or running in earlier jobs, 2 submitted in 1 array " \
         "task(s)" in r.stdout, r.stdout + r.stderr
  array2, collect2 = submitted(r.stdout)
  slurm.wait(collect2, timeout_s=120)
  assert slurm.job_state(collect2) == ("COMPLETED", "0:0")
  evals = collections.Counter((wd / "evals.log").read_text().splitlines())
  assert set(evals.values()) == {1}  # every checkpoint scored once, over both submissions
  assert set(evals) == {f"{c.name} {s}" for c in st.cells() for s in (4, 8, 12)}
  table = pd.read_parquet(wd / "results.parquet")
  assert len(table) == 12
  for row in table.itertuples():  # the fake scorer: loss = index(recipe) + 10 / step
    assert row.value == "ab".index(row.recipe) + 10.0 / row.step


def test_bad_slurm_options_exit_2_before_anything_is_written(slurm, tmp_path, monkeypatch,
                                                             capsys):
  cfg = write_study_config(tmp_path / "s.py")
  monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
  monkeypatch.setenv("PATH", slurm.env["PATH"])
  for flags, msg in ((["--cells-per-task", "0"], "--cells-per-task 0 must be >= 1"),
                     (["--partition", "nope"], "sbatch refused the job (sbatch: error: invalid "
                                               "partition specified: nope"),
                     (["--plan"], "goes without --plan")):
    assert dd_main.main(["--config", cfg, "--workdir", str(tmp_path / "w"), "--executor",
                         "slurm", *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], lines
    assert not (tmp_path / "w").exists()
  # 3 cells, 2 tasks allowed: one task per cell does not fit, two cells per task do.
  monkeypatch.setattr(slurm_lib, "max_array_size", lambda: 2)
  assert dd_main.main(["--config", cfg, "--workdir", str(tmp_path / "w"), "--executor",
                       "slurm"]) == 2
  assert capsys.readouterr().err == ("error: --executor slurm: 3 array tasks exceed this "
                                     "cluster's MaxArraySize 2; pass --cells-per-task 2 or "
                                     "more\n")
  assert not (tmp_path / "w").exists()
  assert dd_main.main(["--config", cfg, "--workdir", "gs://bucket/dd", "--executor=slurm"]) == 2
  assert "is a bucket, which a study mirrors on the submitting machine only" in \
      capsys.readouterr().err
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
  assert dd_main.main(["--config", cfg, "--workdir", str(tmp_path / "w"), "--executor",
                       "slurm"]) == 2
  assert "sbatch not found on PATH" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


SHOW = """\
  c.name = "slurm-show"
  c.data_dir = {data_dir!r}
  c.synthetic_noise_levels = [0.0, 0.7]
  c.synthetic_vocab = 256
  c.recipes = ml_collections.ConfigDict({{
      name: {{"mixture": "custom", "sources": f"text=dd_synthetic_v256/noise{{p}}/*.npy"}}
      for name, p in (("clean", 0), ("noisy70", 70))}})
  c.custom_sizes = ml_collections.ConfigDict({{
      "t1": {{"d_model": 16, "n_heads": 2, "n_layers": 1}},
      "t2": {{"d_model": 32, "n_heads": 2, "n_layers": 1}}}})
  c.sizes = ["t1", "t2"]
  c.target = "t2"
  c.seeds = [1, 2]
  c.seq_len = 32
  c.batch_size = 8
  c.steps = ml_collections.ConfigDict({{"t1": 40, "t2": 50}})
  c.checkpoints_per_run = 2
  c.warmup_fraction = 0.1
  c.overrides = ml_collections.ConfigDict({{"train": {{"lr": 0.01, "log_every": 1}},
                                           "checkpoint": {{"async_save": False}}}})
  c.eval = ml_collections.ConfigDict({{"scorer": "heldout",
                                      "heldout": "dd_synthetic_v256/heldout/*.npy",
                                      "heldout_windows": 32, "headline": "heldout/loss"}})
"""


@pytest.mark.slow
def test_study_on_slurm_equals_the_local_run_after_scancel_and_resubmit(slurm, tmp_path):
  """2 recipes x 2 sizes x 2 seeds of real training: one task cancelled while its trainer
  runs, two while pending; the resubmission sends those three only; the table equals a local
  run's."""
  cfg = write_study_config(tmp_path / "s.py", SHOW.format(data_dir=os.path.join(REPO, "data")))
  env = dict(slurm.env, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  wd = tmp_path / "slurm"
  r = run(study_cmd(cfg, wd, "--executor", "slurm", "--max-parallel", "2", "--cpus-per-task",
                    "1", "--launch"), env)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "8 cells: 0 done, 0 queued or running in earlier jobs, 8 submitted in 8 array " \
         "task(s)" in r.stdout
  array, collect = submitted(r.stdout)
  packs = json.loads((wd / "slurm" / "array-0.json").read_text())["packs"]
  st = study_lib.Study(study_lib.load_study_config(cfg), str(wd))
  cells = {c.name: c for c in st.cells()}
  # Cancel task 2 once its trainer has started (it is starting up or training), 6 and 7
  # while they wait for a free slot (--max-parallel 2).
  started = os.path.join(st.cell_dir(cells[packs[2][0]]), "train.log")
  deadline = time.time() + 600
  while not os.path.isfile(started):
    assert time.time() < deadline, slurm.jobs()
    time.sleep(0.2)
  slurm.run("scancel", f"{array}_2", f"{array}_6", f"{array}_7")
  slurm.wait(collect, timeout_s=900)
  assert slurm.job_state(collect)[0] == "FAILED"
  assert slurm.job_state(f"{array}_2")[0] == "CANCELLED"
  status = run([sys.executable, "-m", "olmo_jax.datadecide", "status", "--config", cfg,
                "--workdir", str(wd)], env)
  assert status.returncode == 0, status.stderr
  assert status.stdout.startswith("study 'slurm-show': 8 cells: 5 done, "), status.stdout
  assert f"{wd}/report/report.md: written " in status.stdout  # the first collect's, partial

  r = run(study_cmd(cfg, wd, "--executor", "slurm", "--cpus-per-task", "1", "--launch"), env)
  assert "8 cells: 5 done, 0 queued or running in earlier jobs, 3 submitted in 3 array " \
         "task(s)" in r.stdout, r.stdout + r.stderr
  resubmitted = json.loads((wd / "slurm" / "array-1.json").read_text())["packs"]
  assert resubmitted == [packs[2], packs[6], packs[7]]
  _, collect2 = submitted(r.stdout)
  slurm.wait(collect2, timeout_s=900)
  log = (wd / "slurm" / "logs" / f"collect-{collect2}.out").read_text()
  assert slurm.job_state(collect2) == ("COMPLETED", "0:0"), log[-3000:]
  assert "[study] best recipe: clean" in log and (wd / "report" / "recommendation.json").is_file()
  assert (wd / "launch_t2_clean.py").is_file()

  local = tmp_path / "local"
  r = run(study_cmd(cfg, local, "--no-report"), env, timeout=1200)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  key = ["recipe", "size", "seed", "step", "task", "metric"]
  got = pd.read_parquet(wd / "results.parquet").sort_values(key).reset_index(drop=True)
  want = pd.read_parquet(local / "results.parquet").sort_values(key).reset_index(drop=True)
  assert len(got) == len(want) == 8 * 2 * 2  # cells x checkpoints x (loss, accuracy)
  pd.testing.assert_frame_equal(got, want, check_exact=True)


@pytest.mark.slow
def test_a_task_of_several_cells_trains_them_as_one_pack(slurm, tmp_path):
  """--cells-per-task 4: each size's four cells are one array task that trains them as one
  olmo_jax.train_pack program; the table equals a local study trained cell by cell."""
  cfg = write_study_config(tmp_path / "s.py", SHOW.format(data_dir=os.path.join(REPO, "data")))
  env = dict(slurm.env, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  wd = tmp_path / "slurm"
  r = run(study_cmd(cfg, wd, "--executor", "slurm", "--cells-per-task", "4",
                    "--cpus-per-task", "1"), env)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "8 submitted in 2 array task(s)" in r.stdout, r.stdout
  _, collect = submitted(r.stdout)
  slurm.wait(collect, timeout_s=1200)
  log = (wd / "slurm" / "logs" / f"collect-{collect}.out").read_text()
  assert slurm.job_state(collect) == ("COMPLETED", "0:0"), log[-3000:]
  packs = sorted(p.name for p in (wd / "packs").glob("*.txt"))
  assert packs == ["task0-t1-0.txt", "task1-t2-0.txt"], packs
  for p in packs:
    assert len((wd / "packs" / p).read_text().splitlines()) == 4

  local = tmp_path / "local"
  r = run(study_cmd(cfg, local, "--no-report", "--no-pack"), env, timeout=1200)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  key = ["recipe", "size", "seed", "step", "task", "metric"]
  got = pd.read_parquet(wd / "results.parquet").sort_values(key).reset_index(drop=True)
  want = pd.read_parquet(local / "results.parquet").sort_values(key).reset_index(drop=True)
  assert len(got) == len(want) == 8 * 2 * 2
  pd.testing.assert_frame_equal(got, want, rtol=1e-6)
