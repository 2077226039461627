"""DataDecide study orchestration: plan, resume after a kill, bad input, end to end."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from datadecide_fakes import STUDY_BODY, write_study_config

from olmo_jax.datadecide import results as results_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS])}


def study_cmd(config, workdir, *extra):
  return [sys.executable, "-m", "olmo_jax.datadecide", "--config", config, "--workdir",
          str(workdir), *extra]


def test_plan_writes_one_command_per_cell(tmp_path):
  body = STUDY_BODY.replace('c.seeds = [1]', 'c.seeds = [1, 2]')
  cfg = write_study_config(tmp_path / "s.py", body)
  r = subprocess.run(study_cmd(cfg, tmp_path / "w", "--plan"), capture_output=True, text=True,
                     env=ENV, cwd=REPO)
  assert r.returncode == 0, r.stderr
  lines = (tmp_path / "w" / "plan.txt").read_text().splitlines()
  assert len(lines) == 6  # 3 recipes x 1 size x 2 seeds
  assert all("--config.train.steps=12" in l and "--config.checkpoint.every=4" in l
             for l in lines)
  assert "--config.model.size=custom" in lines[0] and "--config.train.seed=2" in lines[1]
  assert sum("cells/b/t1/seed1" in l for l in lines) == 1
  assert not (tmp_path / "w" / "cells").exists()  # planning trains nothing


def test_kill_and_restart_redoes_nothing(tmp_path):
  cfg = write_study_config(tmp_path / "s.py", STUDY_BODY)
  wd = tmp_path / "w"
  env = {**ENV, "DD_FAKE_STEP_S": "0.25"}
  proc = subprocess.Popen(study_cmd(cfg, wd, "--no-report"), env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  b = wd / "cells" / "b" / "t1" / "seed1"
  deadline = time.time() + 120
  while not (b / "checkpoints" / "4").is_dir():
    assert time.time() < deadline and proc.poll() is None, proc.stdout.read().decode()
    time.sleep(0.05)
  assert (wd / "cells" / "a" / "t1" / "seed1" / "DONE.json").is_file()
  proc.send_signal(signal.SIGKILL)  # the study dies mid-cell
  proc.wait()
  time.sleep(1.0)  # its trainer got SIGTERM from the kernel (no orphan keeps writing)
  n_before = len((b / "steps.log").read_text().split())
  time.sleep(1.0)
  assert len((b / "steps.log").read_text().split()) == n_before
  assert not (wd / "results.parquet").exists()
  r = subprocess.run(study_cmd(cfg, wd, "--no-report", "--workers", "2"),
                     env={**ENV, "DD_FAKE_STEP_S": "0.01"}, cwd=REPO, capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "1 already done, 2 to train (2 worker(s))" in r.stdout
  assert "[study] cells: 1 done, 2 running, 0 left, 0 failed" in r.stdout  # progress + ETA
  assert "[study] cells: 3 done, 0 running, 0 left, 0 failed" in r.stdout and "ETA" in r.stdout
  runs = {x: [int(s) for s in (wd / "cells" / x / "t1" / "seed1" / "steps.log")
                                   .read_text().split()] for x in "abc"}
  assert runs["a"] == list(range(1, 13)) and runs["c"] == list(range(1, 13))
  counts = collections.Counter(runs["b"])
  assert set(counts) == set(range(1, 13))
  assert all(counts[s] == 1 for s in range(1, 5))  # steps up to the kept checkpoint: once
  assert max(counts.values()) <= 2 and len(runs["b"]) < 12 + 4
  evals = collections.Counter((wd / "evals.log").read_text().splitlines())
  assert set(evals.values()) == {1}
  assert set(evals) == {f"{x}/t1/seed1 {s}" for x in "abc" for s in (4, 8, 12)}
  table = pd.read_parquet(wd / "results.parquet")
  assert len(table) == 9 and set(table["metric"]) == {"loss"}
  # a third run trains and scores nothing
  r = subprocess.run(study_cmd(cfg, wd, "--no-report"), env=ENV, cwd=REPO,
                     capture_output=True, text=True)
  assert r.returncode == 0 and "3 already done, 0 to train" in r.stdout
  assert "0 checkpoint(s) scored" in r.stdout
  assert collections.Counter((wd / "evals.log").read_text().splitlines()) == evals


@pytest.mark.parametrize("case", ["unknown_size", "unknown_field", "unknown_recipe",
                                  "missing_config"])
def test_study_bad_input_exit_2(tmp_path, case):
  body = STUDY_BODY
  extra = []
  if case == "unknown_size":
    body = STUDY_BODY.replace('c.sizes = ["t1"]', 'c.sizes = ["t1", "5M"]')
  elif case == "unknown_field":
    body = STUDY_BODY + "  c.sede = [3]\n"
  elif case == "unknown_recipe":
    extra = ["--launch", "--recipe", "zzz"]
  cfg = write_study_config(tmp_path / "s.py", body)
  if case == "missing_config":
    cfg = str(tmp_path / "nope.py")
  wd = tmp_path / "w"
  r = subprocess.run(study_cmd(cfg, wd, *extra), env=ENV, cwd=REPO, capture_output=True,
                     text=True)
  assert r.returncode == 2, r.stdout + r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:")
  assert {"unknown_size": "5M", "unknown_field": "sede", "unknown_recipe": "zzz",
          "missing_config": "nope.py"}[case] in lines[0]
  assert not (wd / "cells").exists()


E2E = """\
  c.name = "e2e"
  c.data_dir = {data_dir!r}
  c.synthetic_noise_levels = [0.0, 0.3, 0.7]
  c.synthetic_vocab = 256
  c.recipes = ml_collections.ConfigDict({{
      name: {{"mixture": "custom", "sources": f"text=dd_synthetic_v256/noise{{p}}/*.npy"}}
      for name, p in (("clean", 0), ("noisy30", 30), ("noisy70", 70))}})
  c.custom_sizes = ml_collections.ConfigDict({{
      "t1": {{"d_model": 16, "n_heads": 2, "n_layers": 1}},
      "t2": {{"d_model": 32, "n_heads": 2, "n_layers": 1}}}})
  c.sizes = ["t1", "t2"]
  c.target = "t2"
  c.seeds = [1]
  c.seq_len = 32
  c.batch_size = 8
  c.steps = ml_collections.ConfigDict({{"t1": 40, "t2": 50}})
  c.checkpoints_per_run = 2
  c.warmup_fraction = 0.1
  c.overrides = ml_collections.ConfigDict({{"train": {{"lr": 0.01}},
                                           "checkpoint": {{"async_save": False}}}})
  c.eval = ml_collections.ConfigDict({{"scorer": "heldout",
                                      "heldout": "dd_synthetic_v256/heldout/*.npy",
                                      "heldout_windows": 32, "headline": "heldout/loss"}})
"""


def test_end_to_end_cleaner_recipes_win(tmp_path):
  """Real training at two tiny sizes: the cleaner recipe is better at both, accuracy 1.0."""
  data_dir = os.path.join(REPO, "data")  # the embedded corpus is built there once
  cfg = write_study_config(tmp_path / "s.py", E2E.format(data_dir=data_dir))
  wd = tmp_path / "w"
  r = subprocess.run(study_cmd(cfg, wd, "--launch"), env=ENV, cwd=REPO, capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stdout + r.stderr
  table = pd.read_parquet(wd / "results.parquet")
  assert set(table["size"]) == {"t1", "t2"} and set(table["step"]) == {20, 25, 40, 50}
  final = table[(table["metric"] == "loss")
                & (table["step"] == table.groupby("size")["step"].transform("max"))]
  for size, g in final.groupby("size"):
    order = list(g.sort_values("value")["recipe"])
    assert order == ["clean", "noisy30", "noisy70"], (size, g)
  da = pd.read_csv(wd / "report" / "decision_accuracy.csv")
  row = da[(da["size"] == "t1") & (da["metric"] == "loss") & (da["step"] == "final")
           & (da["protocol"] == "seed_mean")].iloc[0]
  assert row["decision_accuracy"] == 1.0
  rec = json.loads((wd / "report" / "recommendation.json").read_text())
  assert rec["best_recipe"] == "clean" and rec["matches_target"]
  launch = wd / "launch_t2_clean.py"
  assert launch.is_file() and "noise0" in launch.read_text()
  assert "python -m olmo_jax.train --config" in r.stdout


def test_eval_run_scorer_follows_the_cli_contract(tmp_path):
  """The scorer calls `python -m eval.run --checkpoint --tasks --output [--limit]` and reads
  OUT/metrics.json's "tasks" (a stand-in interpreter plays eval.run here)."""
  from olmo_jax.datadecide import scorers
  fake = tmp_path / "fake_python"
  fake.write_text(
      "#!" + sys.executable + "\n"
      "import json, os, sys\n"
      "a = sys.argv[1:]\n"
      "assert a[:2] == ['-m', 'eval.run'], a\n"
      "kv = dict(zip(a[2::2], a[3::2]))\n"
      "os.makedirs(kv['--output'], exist_ok=True)\n"
      "json.dump({'tasks': {t: {'acc_raw': 0.5, 'limit': int(kv.get('--limit', 0))}\n"
      "                     for t in kv['--tasks'].split(',')}, 'macro': {},\n"
      "           'checkpoint': kv['--checkpoint'], 'step': 7, 'config': {}},\n"
      "          open(os.path.join(kv['--output'], 'metrics.json'), 'w'))\n")
  fake.chmod(0o755)
  scorer = scorers.EvalRunScorer("arc_easy,piqa", limit=5, python=str(fake))
  got = scorer(None, 7, str(tmp_path / "ckpt" / "7"), str(tmp_path / "out"))
  assert got == {"arc_easy": {"acc_raw": 0.5, "limit": 5}, "piqa": {"acc_raw": 0.5, "limit": 5}}
  bad = scorers.EvalRunScorer("arc_easy", python="/bin/false")
  with pytest.raises(RuntimeError, match="eval.run failed"):
    bad(None, 7, "ckpt", str(tmp_path / "out2"))


def test_budgets_and_results_compute(tmp_path):
  """Full-budget ladder cells keep the published steps; the table's compute is 6 N tokens."""
  import math

  import ml_collections

  from olmo_jax import sizes
  from olmo_jax.datadecide import cells as C
  from olmo_jax.datadecide import results as R
  from olmo_jax.datadecide import study as S
  cfg = ml_collections.ConfigDict({"recipes": {"a": {"mixture": "c4"}, "b": {"mixture": "falcon"}},
                                   "sizes": ["20M", "4M"], "target": "1B", "seeds": [6198]})
  st = S.Study(cfg, str(tmp_path / "w"))
  assert [c.size for c in st.cells()][:2] == ["4M", "4M"]  # smallest first
  assert st.steps("20M") == 14584 and st.tokens_per_step("20M") == 131072
  assert st.n_params("20M") == sizes.get_size("20M").published_params
  flags = st.overrides(S.Cell("a", "20M", 6198))
  assert not any(f.startswith("--config.train.steps") for f in flags)
  assert "--config.checkpoint.every=1250" in flags and "--config.data.mixture=c4" in flags
  assert st.grid_steps("20M")[-1] == 14584 and st.grid_steps("20M")[0] == 1250
  cfg.budget_fraction = 0.1
  quick = S.Study(cfg, str(tmp_path / "w"))
  n = sizes.get_size("20M").published_params
  assert quick.steps("20M") == math.ceil(10 * n / 131072)
  assert f"--config.train.steps={quick.steps('20M')}" in quick.overrides(S.Cell("a", "20M", 1))
  # scores cached by a cell become rows with ladder compute
  cell = S.Cell("a", "20M", 6198)
  d = tmp_path / "w" / "cells" / "a" / "20M" / "seed6198" / "eval" / "14584"
  d.mkdir(parents=True)
  (d / "scores.json").write_text(json.dumps({"tasks": {"arc_easy": {"acc_raw": 0.4}}}))
  table = C.collect_results(st)
  assert len(table) == 1 and table.iloc[0]["recipe"] == cell.recipe
  assert table.iloc[0]["compute"] == float(R.ladder_compute("20M", 14584))
  compact = S.Study(ml_collections.ConfigDict(
      {"recipes": {"a": {}}, "sizes": ["t"], "custom_sizes": {"t": {"d_model": 16, "n_heads": 2,
                                                                      "n_layers": 1}},
       "synthetic_vocab": 200, "steps": {"t": 10}, "batch_size": 2}), str(tmp_path / "v"))
  assert compact.n_params("t") == sizes.non_embedding_params(16, 1, embedding_size=256)
  assert "--config.model.embedding_size=256" in compact.overrides(S.Cell("a", "t", 1))


RESOLVE_PLAN_LINE = """\
import json, shlex, sys
from olmo_jax import config as config_lib
from olmo_jax import train
line = shlex.split(open(sys.argv[1]).read().splitlines()[int(sys.argv[2])])
flags = train.parse_flags(["olmo_jax.train", *line[3:]])  # exactly as the trainer parses it
print(json.dumps(config_lib.resolve(flags.config).to_dict(), sort_keys=True, default=str))
"""

RESOLVE_FILE = """\
import json, sys
from olmo_jax import config as config_lib
c = config_lib.load_config_file(sys.argv[1])  # a plain ml_collections config file
print(json.dumps(config_lib.resolve(c).to_dict(), sort_keys=True, default=str))
"""


def test_launch_config_is_the_validated_target_run(tmp_path):
  """`--plan --launch --recipe R` writes the target's config; resolved, it equals, field by
  field, the resolved config of the target cell's own command in plan.txt (variant, budget,
  warmup, lr and every override included); `--launch-budget full` lists each difference."""
  body = STUDY_BODY.replace('c.sizes = ["t1"]', 'c.sizes = ["t1", "t2"]') + (
      '  c.overrides = ml_collections.ConfigDict({"train": {"lr": 0.003, "b2": 0.9},\n'
      '                                           "model": {"variant": "olmo2"}})\n'
      '  c.warmup_fraction = 0.25\n')
  cfg = write_study_config(tmp_path / "s.py", body)
  wd = tmp_path / "w"
  r = subprocess.run(study_cmd(cfg, wd, "--plan", "--launch", "--recipe", "b"), env=ENV,
                     cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 0, r.stdout + r.stderr
  launch = wd / "launch_t2_b.py"
  plan = wd / "plan.txt"
  cells = json.loads((wd / "plan.json").read_text())
  line = [i for i, c in enumerate(cells) if c["cell"] == "b/t2/seed1"][0]
  got = json.loads(subprocess.run([sys.executable, "-c", RESOLVE_FILE, str(launch)], env=ENV,
                                  cwd=REPO, capture_output=True, text=True, check=True).stdout)
  want = json.loads(subprocess.run([sys.executable, "-c", RESOLVE_PLAN_LINE, str(plan),
                                    str(line)], env=ENV, cwd=REPO, capture_output=True,
                                   text=True, check=True).stdout)
  assert got == want
  assert (got["train"]["steps"], got["train"]["batch_size"], got["train"]["seq_len"]) == \
      (20, 2, 16)
  assert (got["train"]["warmup_steps"], got["train"]["lr"], got["train"]["b2"]) == (5, 0.003, 0.9)
  assert got["model"]["variant"] == "olmo2" and got["data"]["sources"] == "t=b/*.npy"
  text = launch.read_text()
  assert "20 steps x 2 x 16 tokens" in text and "warmup 5" in text
  # The full budget of a ladder target: every difference named in the header.
  body = body.replace('c.target = "t2"', 'c.target = "4M"')
  cfg = write_study_config(tmp_path / "l.py", body)
  r = subprocess.run(study_cmd(cfg, wd, "--plan", "--launch", "--recipe", "a",
                               "--launch-budget", "full"), env=ENV, cwd=REPO,
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stdout + r.stderr
  head = (wd / "launch_4M_a_full.py").read_text().split('"""')[1]
  from olmo_jax import sizes
  assert f"train.steps: 0 -> {sizes.get_size('4M').final_step}" not in head
  assert f"-> {sizes.get_size('4M').final_step}" in head and "train.seq_len: 16 -> 2048" in head
  assert "train.batch_size: 2 -> 32" in head and "train.lr" not in head  # the override stays


def test_cells_resolve_through_the_training_config(tmp_path):
  """N, batch, steps and checkpoint cadence come from olmo_jax.config.resolve: the variant
  counts (olmo2's extra norms), and an override of train.steps is what the study schedules."""
  import ml_collections

  from olmo_jax import sizes
  from olmo_jax.datadecide import study as S
  base = {"recipes": {"a": {}}, "sizes": ["t"], "seq_len": 16, "batch_size": 4,
          "custom_sizes": {"t": {"d_model": 16, "n_heads": 2, "n_layers": 2}},
          "tokens_per_param": 1.0, "checkpoints_per_run": 3}
  lad = S.Study(ml_collections.ConfigDict(base), str(tmp_path / "a"))
  o2 = S.Study(ml_collections.ConfigDict(
      {**base, "overrides": {"model": {"variant": "olmo2"}}}), str(tmp_path / "b"))
  n2 = sizes.non_embedding_params(16, 2, "olmo2")
  assert lad.n_params("t") == sizes.non_embedding_params(16, 2) != n2 == o2.n_params("t")
  assert o2.steps("t") == -(-n2 // 64) and o2.compute("t") == 6.0 * n2 * o2.steps("t") * 64
  fixed = S.Study(ml_collections.ConfigDict(
      {**base, "overrides": {"train": {"steps": 30}}}), str(tmp_path / "c"))
  assert fixed.steps("t") == 30 and fixed.grid_steps("t") == [10, 20, 30]
  with pytest.raises(results_lib.InputError, match="train.nope"):
    S.Study(ml_collections.ConfigDict({**base, "overrides": {"train": {"nope": 1}}}),
            str(tmp_path / "d"))


def test_progress_line_names_cells_and_estimates_by_flops(tmp_path):
  """The line names each running cell with the newest step in its metrics.jsonl (train.log
  text is not read); the ETA is a + b x FLOPs, b from the finished cells' logged tokens/s, a
  their remaining wall time per cell."""
  import ml_collections

  from olmo_jax.datadecide import runner
  from olmo_jax.datadecide import study as S
  cfg = ml_collections.ConfigDict(
      {"recipes": {"a": {}, "b": {}}, "sizes": ["t1", "t2"], "seq_len": 16, "batch_size": 4,
       "custom_sizes": {"t1": {"d_model": 16, "n_heads": 2, "n_layers": 1},
                        "t2": {"d_model": 32, "n_heads": 2, "n_layers": 2}},
       "steps": {"t1": 100, "t2": 50}})
  st = S.Study(cfg, str(tmp_path / "w"))
  cells = st.cells()
  prog = runner.Progress(st, cells, workers=1)
  assert prog.total == 2 * st.compute("t1") + 2 * st.compute("t2")
  done, running = cells[0], cells[1]
  rec = lambda step, tps: json.dumps({"step": step, "loss": 3.0, "tokens_per_s": tps}) + "\n"
  eval_rec = json.dumps({"step": 40, "eval/arc_easy/acc_raw": 0.3}) + "\n"
  for cell, lines, log in (
      (done, rec(50, 3200.0) + rec(100, 6400.0), ""),
      (running, rec(30, 6400.0) + rec(40, 6400.0) + eval_rec + '{"step": 4', "step 99/100\n")):
    os.makedirs(st.cell_dir(cell))
    with open(os.path.join(st.cell_dir(cell), "metrics.jsonl"), "w") as f:
      f.write(lines)  # the running cell's last line is half-written
    with open(os.path.join(st.cell_dir(cell), "train.log"), "w") as f:
      f.write(log + "noise\n" * 5000)
  train_s = 100 * 64 / 4800  # tokens / mean tok/s
  prog.finished(done, seconds=train_s + 30.0)
  a, b = prog._model()
  assert a == pytest.approx(30.0) and b == pytest.approx(train_s / st.compute("t1"))
  line = prog.line({running: None}, n_left=2, n_failed=0)
  assert f"training {running.name} step 40/100" in line
  left = prog.total - st.compute("t1") * 1.4  # one cell done, the running one 40%
  eta = a * 3 + b * left
  assert line.endswith(f"ETA {runner.hms(eta)} (by FLOPs)"), line


def test_marker_files_are_written_atomically(tmp_path, monkeypatch):
  """DONE.json, study.json and scores.json go through data_pipeline.atomic (a crash mid-write
  leaves the old file or none, never a torn one)."""
  import ml_collections

  from data_pipeline import atomic
  from olmo_jax.datadecide import cells as C
  from olmo_jax.datadecide import runner
  from olmo_jax.datadecide import study as S
  written = []
  real = atomic.write_atomic
  monkeypatch.setattr(atomic, "write_atomic", lambda p, d: (written.append(os.path.basename(p)),
                                                            real(p, d))[1])
  cfg = ml_collections.ConfigDict(
      {"recipes": {"a": {}, "b": {}}, "sizes": ["t1"], "seq_len": 16, "batch_size": 4,
       "custom_sizes": {"t1": {"d_model": 16, "n_heads": 2, "n_layers": 1}},
       "steps": {"t1": 8}, "checkpoint_every": 8})
  st = S.Study(cfg, str(tmp_path / "w"))
  monkeypatch.setattr(C, "complete_checkpoints", lambda d: [8])  # the final checkpoint

  class Instant:  # an executor whose trainers finish at once
    def run(self, study, cells, on_done):
      for cell in cells:
        os.makedirs(study.cell_dir(cell))
        assert C.mark_done(study, cell, 0, 1.0)
        on_done(cell, 1.0)
      return []

  summary = runner.run_study(st, scorer=lambda cell, step, ck, out: {"t": {"loss": 1.0}},
                             print_fn=lambda *_: None, executor=Instant())
  assert summary["failed"] == [] and summary["scored"] == 2 and len(summary["table"]) == 2
  assert written.count("DONE.json") == 2 and written.count("scores.json") == 2
  assert "study.json" in written and all(st.is_done(c) for c in st.cells())
  assert not C.mark_done(st, st.cells()[0], 1, 1.0)  # a failed trainer is not done
