"""The evaluation library: encode and score task requests, aggregate the metrics, and write
metrics.json / predictions.jsonl. `python -m eval.run` (eval/run.py) is its command line;
in-loop evaluation (eval/inloop.py) and the lm-eval backend (eval/harness.py) use it directly.
Checkpoints are loaded by olmo_jax/load.py.

Requests with token ids past the model's vocabulary and non-finite scores raise ScoreError
before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Callable, Sequence

from data_pipeline.tokenizer import EOS_TOKEN_ID
from eval import metrics as metrics_lib
from eval import resume
from eval import tasks as tasks_lib
from eval.encoding import Encoder, ScoreError
from olmo_jax import paths
from olmo_jax.load import LoadedModel, is_hf_dir

# ------------------------------------------------------------------------------ scoring

def request_count(inst: tasks_lib.Instance) -> int:
  """Requests of one document: one per choice, twice that with unconditional contexts."""
  return len(inst.continuations) * (1 + (inst.uncond_contexts is not None))


def requests_of(instances: list[tasks_lib.Instance]) -> list[tuple[str, str]]:
  """(context, continuation) texts of documents, in scoring order: each document's choices,
  then their unconditional requests."""
  out = []
  for inst in instances:
    out += list(zip(inst.contexts, inst.continuations))
    if inst.uncond_contexts is not None:
      out += list(zip(inst.uncond_contexts, inst.continuations))
  return out


def check_token_ids(requests: Sequence[tuple[Sequence[int], Sequence[int]]], vocab_size: int,
                    fix: str) -> None:
  """ScoreError when a token id is at or past the model's vocabulary (its embedding would
  read a padding row or nothing: NaN log-probs)."""
  seen: set[int] = set()
  top = -1
  for ctx, cont in requests:
    if id(ctx) not in seen:  # contexts are shared by a document's choices
      seen.add(id(ctx))
      top = max(top, max(ctx, default=-1))
    top = max(top, max(cont, default=-1))
  if top >= vocab_size:
    raise ScoreError(f"token id {top} is past the model's vocabulary of {vocab_size}: {fix}")


def check_finite(scores: Sequence[tuple[float, bool]], what: Callable[[int], str]) -> None:
  """ScoreError naming the first non-finite log-prob (and how many there are)."""
  bad = [i for i, (lp, _) in enumerate(scores) if not math.isfinite(lp)]
  if bad:
    raise ScoreError(f"{len(bad)} of {len(scores)} log-probabilities are not finite (first: "
                     f"{what(bad[0])}): the weights hold NaN/inf (a diverged run?) or the "
                     "compute dtype overflows; score with --dtype float32 or an earlier "
                     "checkpoint")


def score_tasks(scorer, encoder: Encoder, task_instances: dict[str, list[tasks_lib.Instance]],
                kinds: dict[str, tasks_lib.TaskKind],
                progress: Callable[[int], None] | None = None,
                log: resume.ScoreLog | None = None, strict: bool = True
                ) -> dict[str, list[dict[str, Any]]]:
  """Per task, one prediction record per instance (scores, sizes and every metric).

  kinds: each task's kind (it computes the metrics of its documents).
  log: keeps the scores as they come and reuses those of an interrupted run (resume.py).
  strict: a non-finite score raises ScoreError (in-loop evaluation logs it instead).
  """
  flat, encoded = encode_tasks(scorer, encoder, task_instances)
  if log is not None:
    scores = log.loglikelihood(scorer, encoded, progress)
  else:
    scores = scorer.loglikelihood(encoded, progress=progress)
  return task_records(task_instances, kinds, flat, encoded, scores, scorer.max_length + 1,
                      strict)


def encode_tasks(scorer, encoder: Encoder, task_instances: dict[str, list[tasks_lib.Instance]]
                 ) -> tuple[list[tasks_lib.Instance], list[tuple[list[int], list[int]]]]:
  """(every instance in task order, the token ids of their requests), ids checked."""
  flat = [inst for insts in task_instances.values() for inst in insts]
  encoded = encoder.pairs(requests_of(flat))
  check_token_ids(encoded, scorer.cfg.vocab_size,
                  "the tokenizer is not this model's; put the model's own tokenizer.json "
                  "in its HF directory")
  return flat, encoded


def task_records(task_instances: dict[str, list[tasks_lib.Instance]],
                 kinds: dict[str, tasks_lib.TaskKind], flat: list[tasks_lib.Instance],
                 encoded: Sequence[tuple[list, list]], scores: Sequence[tuple[float, bool]],
                 window: int, strict: bool = True) -> dict[str, list[dict[str, Any]]]:
  """score_tasks's records from the scores of the encoded requests."""
  if strict:
    owner = [inst for inst in flat for _ in range(request_count(inst))]
    check_finite(scores, lambda i: f"task {owner[i].task} document {owner[i].doc_id}")
  out: dict[str, list[dict[str, Any]]] = {name: [] for name in task_instances}
  i = 0
  for name, insts in task_instances.items():
    for inst in insts:
      n = request_count(inst)
      out[name].append(_record(name, inst, kinds[name], scores[i:i + n], encoded[i:i + n],
                               window))
      i += n
  return out


def _record(name: str, inst: tasks_lib.Instance, kind: tasks_lib.TaskKind,
            scores: Sequence[tuple[float, bool]], encoded: Sequence[tuple[list, list]],
            window: int) -> dict[str, Any]:
  """predictions.jsonl's line of one document from its requests' scores and token ids (its
  choices, then their unconditional requests)."""
  n = len(inst.continuations)
  lp = [scores[j][0] for j in range(n)]
  ntok = [len(encoded[j][1]) for j in range(n)]
  ulp = [scores[n + j][0] for j in range(n)] if inst.uncond_contexts is not None else None
  cut = sum(len(c) + len(k) > window for c, k in encoded)
  nchar = [len(c) for c in inst.continuations]
  nbytes = [len(c.encode("utf-8")) for c in inst.continuations]
  m = kind.metrics(inst, lp, ntok, nchar, nbytes, ulp)
  return {"task": name, "doc_id": inst.doc_id, "native_id": inst.native_id,
          "subtask": inst.subtask, "label": inst.label, "logprobs": lp, "num_tokens": ntok,
          "num_chars": nchar, "uncond_logprobs": ulp,
          "pred": metrics_lib.argmax_first(lp), "truncated": cut, "metrics": m}


def aggregate(tasks: list[tasks_lib.Task], records: dict[str, list[dict]],
              suites: Sequence[str] = (), use_file_primary: bool = False,
              lm_eval_results: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
  """metrics.json's tasks / subtasks / counts / primary_metrics / macro parts."""
  by_name = {t.name: t for t in tasks}
  out: dict[str, Any] = {"tasks": {}, "subtasks": {}, "counts": {}, "primary_metrics": {},
                         "macro": {}, "truncated": {}, "splits": {}}
  for name, recs in records.items():
    out["truncated"][name] = sum(r.get("truncated", 0) for r in recs)
    out["splits"][name] = by_name[name].split_text
    task_m, per_sub = metrics_lib.task_metrics([r["metrics"] for r in recs],
                                               [r["subtask"] for r in recs])
    out["tasks"][name] = task_m
    out["counts"][name] = len(recs)
    t = by_name[name]
    primary = (t.file_primary_metric if use_file_primary and t.file_primary_metric
               else t.primary_metric)
    if primary not in task_m:  # e.g. acc_uncond on a task without unconditional requests
      primary = "acc_raw" if "acc_raw" in task_m else next(iter(task_m))
    out["primary_metrics"][name] = primary
    if per_sub:
      out["subtasks"][name] = per_sub
      out["macro"][name] = {"value": task_m[primary], "metric": primary,
                            "over": f"{len(per_sub)} subjects"}
  for name, res in (lm_eval_results or {}).items():
    out["tasks"][name] = res
    key = tasks_lib.LM_EVAL.result_primary(tasks_lib.LM_EVAL.task(name).family)
    if key in res:
      out["primary_metrics"][name] = key
  reg = tasks_lib.registry()
  for suite in suites:
    members = [reg[n].name for n in tasks_lib.SUITES[suite]]
    metric_of = {m: out["primary_metrics"][m] for m in members
                 if m in out["primary_metrics"]}
    if len(metric_of) == len(members):
      macro = metrics_lib.suite_macro(out["tasks"], metric_of)
      macro["metric"] = ("mean of each task's primary metric ("
                         + ("the request files' config.json" if use_file_primary
                            else "OLMES paper") + ")")
      out["macro"][suite] = macro
  return out



def evaluate(scorer, tokenizer, tasks: list[tasks_lib.Task], *, limit: int | None = None,
             task_instances: dict[str, list[tasks_lib.Instance]] | None = None,
             suites: Sequence[str] = (), use_file_primary: bool = False,
             progress_bar: bool = False, eos_id: int = EOS_TOKEN_ID,
             log: resume.ScoreLog | None = None, strict: bool = True
             ) -> tuple[dict[str, Any], list[dict]]:
  """(aggregate metrics, prediction records) of the native (non lm-eval) tasks."""
  if task_instances is None:
    task_instances = {t.name: tasks_lib.load_instances(t, limit) for t in tasks
                      if t.scored_here}
  bar = None
  if progress_bar:
    from tqdm import tqdm
    total = sum(request_count(i) for insts in task_instances.values() for i in insts)
    bar = tqdm(total=total, desc="scoring requests", unit="req", file=sys.stderr)
  try:
    records = score_tasks(scorer, Encoder(tokenizer, eos_id), task_instances,
                          {t.name: t.kind for t in tasks},
                          progress=bar.update if bar is not None else None, log=log,
                          strict=strict)
  finally:
    if bar is not None:
      bar.close()
  native = [t for t in tasks if t.name in task_instances]
  agg = aggregate(native, records, suites, use_file_primary)
  return agg, [r for recs in records.values() for r in recs]


def evaluate_replicas(scorer, tokenizer, tasks: list[tasks_lib.Task],
                      task_instances: dict[str, list[tasks_lib.Instance]], *,
                      suites: Sequence[str] = (), use_file_primary: bool = False,
                      eos_id: int = EOS_TOKEN_ID) -> list[tuple[dict[str, Any], list[dict]]]:
  """evaluate() of K models at once with a PackedScorer (eval/scorer.py): the requests are
  tokenized and batched once and scored in one pass; per replica (aggregate, records)."""
  flat, encoded = encode_tasks(scorer, Encoder(tokenizer, eos_id), task_instances)
  kinds = {t.name: t.kind for t in tasks}
  native = [t for t in tasks if t.name in task_instances]
  out = []
  for scores in scorer.loglikelihood_replicas(encoded):
    records = task_records(task_instances, kinds, flat, encoded, scores, scorer.max_length + 1)
    out.append((aggregate(native, records, suites, use_file_primary),
                [r for recs in records.values() for r in recs]))
  return out


def score_lm(scorer, lm_sets, tokenizer, stride: int | None,
             log: resume.ScoreLog | None = None) -> dict[str, dict[str, Any]]:
  """eval/lm.py's set metrics, token ids checked first and every value checked finite.

  log: keeps the scores as they come and reuses those of an interrupted run (resume.py).
  """
  import numpy as np

  from eval import lm as lm_lib
  vocab = scorer.cfg.vocab_size
  for name, docs in lm_sets.items():
    top = max((int(np.max(d.tokens)) for d in docs if len(d.tokens)), default=-1)
    if top >= vocab:
      raise ScoreError(f"token id {top} in lm set {name} is past the model's vocabulary of "
                       f"{vocab}: the set was tokenized for another model; tokenize it with "
                       "the model's tokenizer (or pass text files)")
  logged = resume.LoggedScorer(scorer, log) if log is not None else scorer
  res = lm_lib.evaluate_sets(logged, lm_sets, tokenizer, stride)
  for name, m in res.items():
    if m["bytes"] and not math.isfinite(m["bits_per_byte"]):
      raise ScoreError(f"lm set {name}: bits per byte is not finite: the weights hold NaN/inf "
                       "(a diverged run?) or the compute dtype overflows; score with --dtype "
                       "float32 or an earlier checkpoint")
  return res



def fingerprint(checkpoint: str, model: LoadedModel) -> dict[str, Any]:
  """What the saved scores depend on: a partial run resumes only when all of it matches."""
  path = paths.abspath(checkpoint)
  files = {}
  if is_hf_dir(path) and not paths.is_remote(path):  # weights replaced in place: new stamp
    files = {f: [os.path.getsize(os.path.join(path, f)), os.path.getmtime(os.path.join(path, f))]
             for f in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, f))}
  return {"checkpoint": path, "step": model.step, "files": files,
          "max_length": model.max_length, "dtype": model.cfg.dtype,
          "tokenizer": model.tokenizer, "eos_id": model.eos_id}


def score_all(model: LoadedModel, tasks: list[tasks_lib.Task],
              instances: dict[str, list[tasks_lib.Instance]], suites: Sequence[str],
              lm_sets: dict, log: resume.ScoreLog | None, *, batch_tokens: int = 8192,
              lm_stride: int | None = None, limit: int | None = None,
              include_path: str | None = None, use_file_primary: bool = False,
              progress_bar: bool = False):
  """(aggregate, prediction records, lm results, errors) of the tasks (instances: the
  documents of those scored here), their suites and the lm sets, with one scorer.

  errors: {"lm_eval": message} when lm-evaluation-harness failed (the rest is still scored).
  """
  from data_pipeline.tokenizer import load_tokenizer
  from eval.scorer import Scorer
  scorer = Scorer(model.cfg, model.params, max_length=model.max_length,
                  batch_tokens=batch_tokens)
  tokenizer = load_tokenizer(model.tokenizer)
  agg, preds = evaluate(scorer, tokenizer, tasks, task_instances=instances, suites=suites,
                        use_file_primary=use_file_primary, progress_bar=progress_bar,
                        eos_id=model.eos_id, log=log)
  lm_res = score_lm(scorer, lm_sets, tokenizer, lm_stride, log) if lm_sets else {}
  errors: dict[str, str] = {}
  lm_eval_names = [t.family for t in tasks if not t.scored_here]
  if lm_eval_names:
    harness_res = _run_lm_eval(scorer, tokenizer, lm_eval_names, limit, include_path, errors)
    agg = aggregate([t for t in tasks if t.name in instances],
                    records_by_task(preds), suites, use_file_primary,
                    {f"lm_eval:{k}": v for k, v in harness_res.items()})
  return agg, preds, lm_res, errors


def _run_lm_eval(scorer, tokenizer, names: list[str], limit: int | None,
                 include_path: str | None, errors: dict[str, str]) -> dict[str, dict]:
  """lm-evaluation-harness's results of its tasks with this scorer; a failure (e.g. a dataset
  not available offline) is said on stderr and kept in errors["lm_eval"]."""
  from eval import harness
  resume.restore_sigint()  # lm-eval's own loop: Ctrl-C stops it at once
  lm = harness.OlmoJaxLM.from_scorer(scorer, tokenizer)
  try:
    return harness.run_lm_eval(lm, names, limit=limit, include_path=include_path)
  except Exception as e:  # keep the other tasks' results
    errors["lm_eval"] = f"{type(e).__name__}: {e}"
    print(f"error: lm-eval tasks {names} failed ({errors['lm_eval']}); the other "
          "tasks' results are written", file=sys.stderr)
    return {}


def records_by_task(preds: list[dict]) -> dict[str, list[dict]]:
  """Prediction records grouped by task, in order."""
  out: dict[str, list[dict]] = {}
  for r in preds:
    out.setdefault(r["task"], []).append(r)
  return out


def _finite(obj):
  """obj with every NaN / inf float as None (JSON has no NaN; json.dump writes a bare NaN)."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  return obj


def _write_json(path: str, obj) -> None:
  paths.write_atomic(path, json.dumps(_finite(obj), indent=2, default=str, allow_nan=False))


def _write_jsonl(path: str, rows: list[dict]) -> None:
  paths.write_atomic(path, "".join(json.dumps(_finite(r), default=str, allow_nan=False) + "\n"
                                   for r in rows))


def write_results(out_dir: str, metrics: dict, predictions: list[dict]) -> None:
  """OUT/metrics.json and OUT/predictions.jsonl (NaN / inf as null), each written atomically."""
  paths.makedirs(out_dir)
  _write_json(os.path.join(out_dir, "metrics.json"), metrics)
  _write_jsonl(os.path.join(out_dir, "predictions.jsonl"), predictions)
