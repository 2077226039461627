"""eval/inloop.py: the trainer callback scores tasks on its period, with the state's params."""

import numpy as np
import pytest
from hf_fixtures import random_params, tiny_config

from eval import tasks
from eval.inloop import make_eval_callback


def test_callback_runs_on_its_period_and_follows_the_params():
  cfg = tiny_config("ladder", max_seq_len=1024)
  cb = make_eval_callback("winogrande", every=5, mcfg=cfg, limit=2, max_length=1024)
  p0 = random_params(cfg, seed=0)
  assert cb(3, {"params": p0}) is None
  m0 = cb(5, {"params": p0})
  assert set(m0) == {"eval/winogrande:rc_5shot/acc_raw"}
  assert m0["eval/winogrande:rc_5shot/acc_raw"] in (0.0, 0.5, 1.0)
  # New params give the new model's scores (same as a fresh callback on those params).
  p1 = random_params(cfg, seed=1)
  p1["lm_head"] = np.asarray(p1["lm_head"]) * 3.0
  fresh = make_eval_callback("winogrande", every=5, mcfg=cfg, limit=2, max_length=1024)
  assert cb(10, {"params": p1}) == fresh(10, {"params": p1})


def test_callback_rejects_unknown_tasks_before_training():
  with pytest.raises(tasks.TaskError):
    make_eval_callback("nosuchtask", every=5, mcfg=tiny_config("ladder"))
  with pytest.raises(ValueError, match="eval.every"):
    make_eval_callback("core", every=0, mcfg=tiny_config("ladder"))


def _train(workdir, *overrides):
  import subprocess
  import sys

  from conftest import REPO
  return subprocess.run(
      [sys.executable, "-m", "olmo_jax.train", "--config", "configs/train.py:4M", "--workdir",
       str(workdir), "--config.data.mixture=synthetic", "--config.train.steps=2",
       "--config.train.batch_size=2", "--config.train.seq_len=32",
       "--config.train.warmup_steps=1", "--config.train.log_every=1",
       "--config.checkpoint.enabled=false", "--config.train.progress_bar=false", *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=600)


def test_trainer_scores_eval_tasks_in_the_loop_and_logs_them(tmp_path):
  import json
  proc = _train(tmp_path / "run", "--config.eval.every=2", "--config.eval.tasks=winogrande",
                "--config.eval.limit=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  final = [r for r in rows if r["step"] == 2][0]
  assert final["eval/winogrande:rc_5shot/acc_raw"] in (0.0, 0.5, 1.0)
  assert "eval_loss" in final  # the synthetic stream's held-out loss is logged beside it


def test_unknown_in_loop_task_fails_at_start_up(tmp_path):
  proc = _train(tmp_path / "run", "--config.eval.every=2", "--config.eval.tasks=nosuchtask")
  assert proc.returncode == 2
  assert "nosuchtask" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "run" / "config.json").exists()
