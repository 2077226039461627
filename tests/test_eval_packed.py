"""Packed scoring (eval/scorer.PackedScorer, evaluation.evaluate_replicas): K models' scores of
the same requests in one pass equal scoring each model alone, on every kind of OLMES task."""

import eval_fixtures  # noqa: F401  (offline HF environment first)
import numpy as np
import pytest
from eval_fixtures import tiny_eval_config
from hf_fixtures import random_params, tiny_config
from test_eval_scorer import random_requests

from data_pipeline.tokenizer import load_tokenizer
from eval import tasks
from eval.evaluation import evaluate, evaluate_replicas
from eval.scorer import PackedScorer, Scorer
from olmo_jax import config as config_lib
from olmo_jax import pack

# Multiple choice as ranked completions (rc, with unconditional requests), as letters (mc),
# a gold continuation's bits per byte, and MMLU's per-subject macro average.
TASKS = ("arc_easy:rc_5shot", "arc_easy:mc_5shot", "winogrande:rc_5shot", "gsm8k:gold_bpb_5shot",
         "mmlu:mc_5shot")


def test_packed_loglikelihood_equals_each_model_alone():
  cfg = tiny_config("ladder", max_seq_len=128)
  params = [random_params(cfg, seed=s) for s in range(3)]
  reqs = random_requests(n_ctx=1)
  packed = PackedScorer(cfg, pack.stack(params), max_length=96, batch_tokens=512)
  got = packed.loglikelihood_replicas(reqs)
  for p, mine in zip(params, got):
    alone = Scorer(cfg, p, max_length=96, batch_tokens=512).loglikelihood(reqs)
    np.testing.assert_allclose([lp for lp, _ in mine], [lp for lp, _ in alone], rtol=1e-6,
                               atol=1e-5)
    assert [g for _, g in mine] == [g for _, g in alone]
  assert len({lp for lp, _ in (got[0][0], got[1][0], got[2][0])}) == 3  # three models


@pytest.mark.slow
def test_packed_evaluation_equals_each_model_alone_on_every_task_kind():
  mcfg = config_lib.model_config(tiny_eval_config(1024))
  params = [random_params(mcfg, seed=s) for s in range(2)]
  reg = tasks.registry()
  task_list = [reg[n] for n in TASKS]
  instances = {t.name: (tasks.load_instances(t, 2) if t.kind is not tasks.MMLU else
                        [i for s in ("anatomy", "world_religions")
                         for i in tasks.mmlu_subject_instances(s, t.variant, limit=2)])
               for t in task_list}
  tok = load_tokenizer("olmo")
  packed = PackedScorer(mcfg, pack.stack(params), max_length=1024, batch_tokens=4096)
  got = evaluate_replicas(packed, tok, task_list, instances)
  for p, (agg, preds) in zip(params, got):
    ref_agg, ref_preds = evaluate(Scorer(mcfg, p, max_length=1024, batch_tokens=4096), tok,
                                  task_list, task_instances=instances)
    assert agg["tasks"].keys() == ref_agg["tasks"].keys() == set(TASKS)
    for name, metrics in ref_agg["tasks"].items():
      for key, value in metrics.items():
        np.testing.assert_allclose(agg["tasks"][name][key], value, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name} {key}")
    assert [r["pred"] for r in preds] == [r["pred"] for r in ref_preds]
  assert got[0][0]["tasks"] != got[1][0]["tasks"]  # two models


@pytest.mark.slow
def test_study_scorer_packs_equal_eval_run_per_checkpoint(tmp_path):
  from olmo_jax import checkpoint
  from olmo_jax.datadecide.scorers import EvalRunScorer
  cfg = tiny_eval_config(1024)
  mcfg = config_lib.model_config(cfg)
  dirs = []
  for seed in range(2):
    d = str(tmp_path / f"run{seed}")
    checkpoint.write_params_checkpoint(d, random_params(mcfg, seed=seed),
                                       {"config": config_lib.to_dict(cfg)})
    dirs.append(d)
  scorer = EvalRunScorer("arc_challenge,winogrande,gsm8k", limit=2)
  outs = [str(tmp_path / f"packed{i}") for i in range(2)]
  packed = scorer.score_pack([None, None], 0, dirs, outs)
  for i, d in enumerate(dirs):
    alone = scorer(None, 0, d, str(tmp_path / f"alone{i}"))
    assert packed[i].keys() == alone.keys() and len(alone) == 3
    for task, metrics in alone.items():
      for key, value in metrics.items():
        np.testing.assert_allclose(packed[i][task][key], value, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{task} {key}")
  assert packed[0] != packed[1]
