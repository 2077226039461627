"""eval/metrics.py against hand-computed worked examples, ties included."""

import math

import pytest

from eval import metrics

E = math.exp


def test_worked_example_every_metric():
  # s = summed log-probs; gold is choice 1.
  m = metrics.instance_metrics(logprobs=[-2.0, -1.0, -3.0], num_tokens=[2, 1, 3],
                               num_chars=[4, 5, 2], num_bytes=[4, 5, 2], label=1,
                               uncond_logprobs=[-1.0, -0.5, -4.0])
  assert m["acc_raw"] == 1.0  # argmax [-2, -1, -3] = 1
  assert m["acc_per_token"] == 0.0  # [-1, -1, -1]: a three-way tie goes to choice 0
  assert m["acc_per_char"] == 1.0  # [-0.5, -0.2, -1.5]
  assert m["acc_uncond"] == 0.0  # s - u = [-1, -0.5, 1]
  expect = {
      "correct_prob": E(-1), "margin": E(-1) - E(-2), "total_prob": E(-2) + E(-1) + E(-3),
      "norm_correct_prob": E(-1) / (E(-2) + E(-1) + E(-3)),
      "correct_prob_per_token": E(-1), "margin_per_token": 0.0,
      "total_prob_per_token": 3 * E(-1), "norm_correct_prob_per_token": 1 / 3,
      "correct_prob_per_char": E(-0.2), "margin_per_char": E(-0.2) - E(-0.5),
      "total_prob_per_char": E(-0.5) + E(-0.2) + E(-1.5),
      "norm_correct_prob_per_char": E(-0.2) / (E(-0.5) + E(-0.2) + E(-1.5)),
      "bits_per_byte": 1.0 / math.log(2) / 5,
  }
  for k, v in expect.items():
    assert m[k] == pytest.approx(v, rel=1e-12), k
  # Literal values, computed by hand from the formulas above.
  assert m["margin"] == pytest.approx(0.232544, abs=1e-6)
  assert m["norm_correct_prob"] == pytest.approx(0.665241, abs=1e-6)
  assert m["bits_per_byte"] == pytest.approx(0.288539, abs=1e-6)


def test_ties_go_to_the_lowest_choice_index():
  tie = dict(logprobs=[-1.0, -1.0], num_tokens=[1, 1], num_chars=[3, 3], num_bytes=[3, 3])
  assert metrics.instance_metrics(label=0, **tie)["acc_raw"] == 1.0
  assert metrics.instance_metrics(label=1, **tie)["acc_raw"] == 0.0
  assert metrics.instance_metrics(label=1, **tie)["margin"] == 0.0
  assert metrics.argmax_first([0.5, 2.0, 2.0, 1.0]) == 1
  # Equal per-char scores from different raw scores: still the first one.
  m = metrics.instance_metrics([-2.0, -4.0], [1, 1], [2, 4], [2, 4], label=1)
  assert m["acc_raw"] == 0.0 and m["acc_per_char"] == 0.0
  # No unconditional scores: no acc_uncond (never a made-up value).
  assert "acc_uncond" not in m


def test_macro_over_subtasks_and_suite_records_metrics():
  rows = [{"acc_raw": 1.0}, {"acc_raw": 0.0}, {"acc_raw": 1.0}]
  task, per_sub = metrics.task_metrics(rows, ["a", "a", "b"])
  assert per_sub == {"a": {"acc_raw": 0.5}, "b": {"acc_raw": 1.0}}
  assert task["acc_raw"] == 0.75  # macro over subjects, not the micro 2/3
  flat, none = metrics.task_metrics(rows, [None] * 3)
  assert flat["acc_raw"] == pytest.approx(2 / 3) and none == {}
  results = {"x": {"acc_raw": 0.2, "acc_per_char": 0.6}, "y": {"acc_uncond": 0.4}}
  macro = metrics.suite_macro(results, {"x": "acc_per_char", "y": "acc_uncond"})
  assert macro["value"] == pytest.approx(0.5)
  assert macro["metrics"] == {"x": "acc_per_char", "y": "acc_uncond"}
  with pytest.raises(KeyError):
    metrics.suite_macro(results, {"y": "acc_raw"})


def test_every_emitted_metric_has_a_direction(tmp_path):
  """Each metric name the task scorer, eval/lm.py, lm-eval's headline keys and DataDecide's
  held-out scorer emit has its direction in eval/metrics.DIRECTION (the one home analysis
  reads), and losses, bits per byte and perplexity are lower-is-better."""
  import numpy as np
  from eval_fixtures import write_tiny_checkpoint

  from data_pipeline.heldout import EvalDocument
  from eval import lm
  from olmo_jax.datadecide import scorers
  emitted = set(metrics.instance_metrics([-1.0, -2.0], [1, 2], [3, 4], [3, 4], 0, [-1.5, -1.0]))
  olmes = set(metrics.ACC_METRICS + metrics.PROB_METRICS)
  assert len(olmes) == 16 and olmes <= emitted
  emitted |= set(metrics.bpb_metrics(-1.0, 3))
  macro, _ = metrics.task_metrics([{"acc_raw": 1.0}, {"acc_raw": 0.0}], ["a", "b"])
  emitted |= set(macro)
  emitted |= set(lm.set_metrics([EvalDocument("s", np.array([5, 6]), "ab")], [-2.0]))
  emitted |= set(metrics.LM_EVAL_PRIMARY.values())
  write_tiny_checkpoint(str(tmp_path / "run"), seq_len=16)
  ids = np.arange(4 * 17, dtype="<u2") % 500
  ids.tofile(tmp_path / "held.bin")
  heldout = scorers.HeldoutScorer(str(tmp_path / "held.bin"), seq_len=16, windows=4, batch=4)
  held = heldout(None, 0, str(tmp_path / "run"), str(tmp_path / "out"))
  assert set(held) == {"heldout"} and math.isfinite(held["heldout"]["loss"])
  emitted |= set(held["heldout"])
  emitted.add("bpb")  # the synthetic DataDecide tables' loss-like metric
  assert emitted - set(metrics.DIRECTION) == set()
  for m in ("bits_per_byte", "bpb", "loss", "perplexity"):
    assert metrics.direction(m) == "lower" and not metrics.higher_is_better(m)
  for m in olmes | {"accuracy", "acc,none"}:
    assert metrics.direction(m) == "higher" and metrics.higher_is_better(m)
  assert metrics.higher_is_better is metrics.higher_is_better
  # Names from elsewhere (DataDecide's published table) follow the name rule.
  assert not metrics.higher_is_better("bits_per_byte_corr")
  assert metrics.higher_is_better("primary_score")
