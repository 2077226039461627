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
