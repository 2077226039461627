"""OLMES and DataDecide metrics of scored instances, per task and macro-averaged.

Per instance, with s_i the summed log-probability of choice i's continuation, n_i its number
of tokens, c_i its number of characters (leading space included, as OLMES counts them) and c
the gold choice (as defined by OLMES, Gu et al. 2024, and DataDecide, Magnusson et al. 2025):

- acc_raw / acc_per_token / acc_per_char: argmax of s_i, s_i / n_i, s_i / c_i is c;
- acc_uncond: argmax of s_i - u_i, u_i scored under the bare unconditional prompt;
- correct_prob = p_c, margin = p_c - max_{i != c} p_i, total_prob = sum_i p_i,
  norm_correct_prob = p_c / sum_i p_i, with p_i = exp(s_i) (raw), exp(s_i / n_i)
  (_per_token) or exp(s_i / c_i) (_per_char);
- bits_per_byte = -log2(e) * s_c / bytes(continuation_c).

Ties: every argmax picks the LOWEST choice index among the maxima (numpy's argmax), so a tie
between the gold choice and a later one counts as correct, and a tie with an earlier one as
wrong. Results are deterministic for the same scores.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence

import numpy as np

LOG2_E = 1.0 / math.log(2.0)
FORMS = {"": None, "_per_token": "num_tokens", "_per_char": "num_chars"}
ACC_METRICS = ("acc_raw", "acc_per_token", "acc_per_char", "acc_uncond")
PROB_METRICS = tuple(f"{m}{f}" for m in ("correct_prob", "margin", "total_prob",
                                         "norm_correct_prob") for f in FORMS)
ALL_METRICS = ACC_METRICS + PROB_METRICS + ("bits_per_byte",)
# The headline metric of lm-evaluation-harness tasks in a suite macro (lm-eval result keys).
LM_EVAL_PRIMARY = {"truthfulqa_mc1": "acc,none", "truthfulqa_mc2": "acc,none",
                   "gsm8k": "exact_match,flexible-extract"}

# Whether a higher or a lower value is better ("higher" | "lower") of every name this project
# emits: the task metrics above, the lm-eval tasks' headline keys, eval/lm.py's set metrics,
# DataDecide's held-out scorer (olmo_jax/datadecide/scorers.py: loss, accuracy) and its
# synthetic tables (bpb). None: a count, not a score (ranked like a score, higher first).
DIRECTION: dict[str, str | None] = {
    **{m: "higher" for m in ACC_METRICS + PROB_METRICS}, "accuracy": "higher",
    "bits_per_byte": "lower", "bpb": "lower", "perplexity": "lower", "loss": "lower",
    "num_subtasks": None, "tokens": None, "documents": None, "bytes": None,
    **{key: "higher" for key in LM_EVAL_PRIMARY.values()},
}
# Names from elsewhere (DataDecide's published table, lm-eval result keys, a user's results):
# lower is better when the name says loss, bits per byte, perplexity, NLL, CE or error.
_LOWER_BETTER_NAME = re.compile(r"(loss|bpb|bits_per_byte|perplexity|ppl|nll|\bce\b|error)",
                                re.I)


def direction(metric: str) -> str | None:
  """"higher" or "lower" (is better) for a metric name; None for a count."""
  m = str(metric)
  if m in DIRECTION:
    return DIRECTION[m]
  return "lower" if _LOWER_BETTER_NAME.search(m) else "higher"


def higher_is_better(metric: str) -> bool:
  """False for losses, bits per byte, perplexities and error rates."""
  return direction(metric) != "lower"


def argmax_first(x: Sequence[float]) -> int:
  """Index of the maximum; the lowest index among ties."""
  return int(np.argmax(np.asarray(x, dtype=np.float64)))


def instance_metrics(logprobs: Sequence[float], num_tokens: Sequence[int],
                     num_chars: Sequence[int], num_bytes: Sequence[int], label: int,
                     uncond_logprobs: Sequence[float] | None = None) -> dict[str, float]:
  """Every metric of one instance from per-choice summed log-probs (natural log) and sizes."""
  s = np.asarray(logprobs, dtype=np.float64)
  norms = {"": np.ones_like(s), "_per_token": np.asarray(num_tokens, np.float64),
           "_per_char": np.asarray(num_chars, np.float64)}
  out: dict[str, float] = {}
  for form, acc in (("", "acc_raw"), ("_per_token", "acc_per_token"),
                    ("_per_char", "acc_per_char")):
    out[acc] = float(argmax_first(s / norms[form]) == label)
  if uncond_logprobs is not None:
    out["acc_uncond"] = float(argmax_first(s - np.asarray(uncond_logprobs, np.float64))
                              == label)
  for form, n in norms.items():
    p = np.exp(s / n)
    others = np.delete(p, label)
    out[f"correct_prob{form}"] = float(p[label])
    out[f"margin{form}"] = float(p[label] - (others.max() if others.size else 0.0))
    out[f"total_prob{form}"] = float(p.sum())
    total = p.sum()
    out[f"norm_correct_prob{form}"] = float(p[label] / total) if total > 0 else 0.0
  out["bits_per_byte"] = float(-LOG2_E * s[label] / max(int(num_bytes[label]), 1))
  return out


def bpb_metrics(logprob: float, num_bytes: int) -> dict[str, float]:
  """bits_per_byte of a single gold continuation (GSM8K gold bpb)."""
  return {"bits_per_byte": float(-LOG2_E * logprob / max(int(num_bytes), 1))}


def mean_metrics(rows: Iterable[dict[str, float]]) -> dict[str, float]:
  """Mean of each metric over instances (a metric missing from some rows averages the rest)."""
  sums: dict[str, float] = {}
  counts: dict[str, int] = {}
  for r in rows:
    for k, v in r.items():
      sums[k] = sums.get(k, 0.0) + v
      counts[k] = counts.get(k, 0) + 1
  return {k: sums[k] / counts[k] for k in sums}


def task_metrics(per_instance: list[dict[str, float]], subtasks: list[str | None]
                 ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """(task metrics, per-subtask metrics). With subtasks (MMLU subjects) the task value of
  each metric is the macro average over subtasks; otherwise the mean over instances."""
  groups: dict[str, list[dict[str, float]]] = {}
  for row, sub in zip(per_instance, subtasks):
    if sub is not None:
      groups.setdefault(sub, []).append(row)
  if not groups:
    return mean_metrics(per_instance), {}
  per_sub = {k: mean_metrics(v) for k, v in groups.items()}
  macro = mean_metrics(per_sub.values())
  macro["num_subtasks"] = float(len(per_sub))
  return macro, per_sub


def suite_macro(task_results: dict[str, dict[str, float]], metric_of: dict[str, str]
                ) -> dict[str, Any]:
  """Macro average over tasks, each with its own metric; records which metric was used."""
  used = {}
  values = []
  for task, metric in metric_of.items():
    if task not in task_results or metric not in task_results[task]:
      raise KeyError(f"task {task} has no metric {metric} to average")
    used[task] = metric
    values.append(task_results[task][metric])
  return {"value": float(np.mean(values)) if values else float("nan"),
          "metric": "mean of each task's primary metric", "metrics": used,
          "num_tasks": len(values)}
