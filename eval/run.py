"""`python -m eval.run --checkpoint DIR --tasks olmes [--lm_files GLOB] [--lm_heldout]
[--limit N] --output OUT`.

Scores a checkpoint (a workdir meaning its newest checkpoint, a checkpoints dir, one step
dir, or an HF directory) on tasks and suites from eval/tasks.py and writes
OUT/metrics.json = {"tasks": {task: {metric: value}}, "macro": {name: {"value", "metric",
...}}, "subtasks": {...}, "counts": {...}, "checkpoint", "step", "config"} and
OUT/predictions.jsonl (one line per document), then prints a table. --lm_files / --lm_heldout
add bits-per-byte and perplexity of validation sets under "lm" (eval/lm.py). Bad input (missing
checkpoint, unknown task, a request file that does not parse, --limit 0, a tokenizer that is
not the model's) is one line on stderr and exit code 2, before the model is loaded or, for
token ids and non-finite scores, before anything is written. The context window is the
model's own maximum length (max_seq_len / max_position_embeddings) whatever the entry point.
Ctrl-C stops between batches with exit code 130; the scores so far are kept in
OUT/scores.partial.jsonl and the same command resumes from them (eval/resume.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

from data_pipeline.tokenizer import EOS_TOKEN_ID, VOCAB_SIZE
from eval import metrics as metrics_lib
from eval import resume
from eval import tasks as tasks_lib
from olmo_jax import paths


class UsageError(ValueError):
  pass


class ScoreError(ValueError):
  """Requests the model cannot score (token ids past its vocabulary), or non-finite scores."""

# ------------------------------------------------------------------------------ loading

def is_hf_dir(path: str) -> bool:
  cfg = os.path.join(path, "config.json")
  if not paths.isfile(cfg):
    return False
  try:
    c = json.loads(paths.read_text(cfg))
  except (OSError, json.JSONDecodeError):
    return False
  return isinstance(c, dict) and ("model_type" in c or "architectures" in c)


def check_hf_tokenizer(path: str) -> None:
  """UsageError when an HF directory has no tokenizer.json and a vocabulary not OLMo's.

  Without tokenizer.json the OLMo tokenizer is used, which fits only a model whose
  embedding has OLMo's VOCAB_SIZE rows (or that padded to a multiple of 128).
  """
  if paths.isfile(os.path.join(path, "tokenizer.json")):
    return
  rows = json.loads(paths.read_text(os.path.join(path, "config.json"))).get("vocab_size")
  padded = -(-VOCAB_SIZE // 128) * 128
  if isinstance(rows, int) and VOCAB_SIZE <= rows <= padded:
    return
  raise UsageError(f"{path} has no tokenizer.json and its vocabulary ({rows} rows) is not "
                   f"OLMo's ({VOCAB_SIZE}), so the OLMo tokenizer does not fit it; save the "
                   f"model's tokenizer there (tokenizer.save_pretrained('{path}') writes "
                   "tokenizer.json)")


def tokenizer_of(path: str) -> str:
  """The tokenizer a checkpoint is scored with: an HF directory's tokenizer.json, else OLMo's."""
  tok = os.path.join(path, "tokenizer.json")
  return tok if is_hf_dir(path) and paths.isfile(tok) else "olmo"


@dataclasses.dataclass
class LoadedModel:
  cfg: Any  # olmo_jax.model.ModelConfig
  params: dict
  step: int | None
  config: dict  # the training config (ours) or the HF config.json
  tokenizer: str  # 'olmo' or a tokenizer.json path
  max_length: int
  eos_id: int = EOS_TOKEN_ID  # the context of a request with an empty one; ends generation


def eos_id_of(hf_config: dict) -> int:
  """An HF config's end-of-text id (the first of a list), else OLMo's."""
  eos = hf_config.get("eos_token_id")
  if isinstance(eos, list):
    eos = eos[0] if eos else None
  return int(eos) if isinstance(eos, int) else EOS_TOKEN_ID


def load_model(path: str, dtype: str | None = None, max_length: int | None = None
               ) -> LoadedModel:
  """Params and ModelConfig of our checkpoint or an HF directory (CheckpointError /
  ConversionError / FileNotFoundError name the problem)."""

  from olmo_jax import checkpoint, hf
  from olmo_jax import config as config_lib
  from olmo_jax.kernels import resolve_platform
  if not paths.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist; pass a run directory, a "
                            "checkpoint step directory or an HF directory")
  if is_hf_dir(path):
    check_hf_tokenizer(path)
    cfg, params = hf.import_hf(path)
    config = json.loads(paths.read_text(os.path.join(path, "config.json")))
    step = None
    tokenizer = tokenizer_of(path)
    eos = eos_id_of(config)
  else:
    import ml_collections
    params, meta = checkpoint.restore_params(path)
    if not (meta.get("config") or {}).get("model"):
      raise checkpoint.CheckpointError(f"{path}: the checkpoint records no model config")
    config = meta["config"]
    cfg = config_lib.model_config(ml_collections.ConfigDict(config))
    step = meta.get("step")
    tokenizer, eos = "olmo", EOS_TOKEN_ID
  if dtype is None:  # exact float32 on CPU; the trained compute dtype on accelerators
    dtype = "float32" if resolve_platform() == "cpu" else cfg.dtype
  cfg = dataclasses.replace(cfg, dtype=dtype, remat="none")
  # The model's own position range, not the training seq_len: a run directory and its HF
  # export (max_position_embeddings) then score the same weights with the same window.
  return LoadedModel(cfg, params, step, config, tokenizer,
                     min(max_length or cfg.max_seq_len, cfg.max_seq_len), eos)


# --------------------------------------------------------------------------- encoding

class Encoder:
  """lm-eval's context/continuation split: trailing context spaces move to the continuation,
  the pair is encoded whole and the context's own tokens are cut off (cached per context)."""

  def __init__(self, tokenizer, eos_id: int = EOS_TOKEN_ID):
    self.tok = tokenizer
    self.eos_id = eos_id
    self._ctx: dict[str, list[int]] = {}

  def _context(self, context: str) -> list[int]:
    if context not in self._ctx:
      self._ctx[context] = self.tok.encode(context).ids if context else [self.eos_id]
    return self._ctx[context]

  def pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    split = []
    for context, continuation in pairs:
      n = len(context) - len(context.rstrip())
      if n:
        context, continuation = context[:-n], context[-n:] + continuation
      split.append((context, continuation))
    wholes = self.tok.encode_batch([c + k for c, k in split])
    out = []
    for (context, continuation), whole in zip(split, wholes):
      if not context:
        out.append((self._context(""), self.tok.encode(continuation).ids))
        continue
      ctx = self._context(context)
      out.append((ctx, whole.ids[len(ctx):]))
    return out


# ------------------------------------------------------------------------------ scoring

def _requests(instances: list[tasks_lib.Instance]) -> list[tuple[str, str]]:
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
                progress: Callable[[int], None] | None = None,
                log: resume.ScoreLog | None = None, strict: bool = True
                ) -> dict[str, list[dict[str, Any]]]:
  """Per task, one prediction record per instance (scores, sizes and every metric).

  log: keeps the scores as they come and reuses those of an interrupted run (resume.py).
  strict: a non-finite score raises ScoreError (in-loop evaluation logs it instead).
  """
  flat = [inst for insts in task_instances.values() for inst in insts]
  texts = _requests(flat)
  encoded = encoder.pairs(texts)
  check_token_ids(encoded, scorer.cfg.vocab_size,
                  "the tokenizer is not this model's; put the model's own tokenizer.json "
                  "in its HF directory")
  if log is not None:
    scores = log.loglikelihood(scorer, encoded, progress)
  else:
    scores = scorer.loglikelihood(encoded, progress=progress)
  if strict:
    owner = [inst for inst in flat
             for _ in range(len(inst.continuations) * (1 + (inst.uncond_contexts is not None)))]
    check_finite(scores, lambda i: f"task {owner[i].task} document {owner[i].doc_id}")
  window = scorer.max_length + 1
  out: dict[str, list[dict[str, Any]]] = {name: [] for name in task_instances}
  i = 0
  for name, insts in task_instances.items():
    for inst in insts:
      n = len(inst.continuations)
      lp = [scores[i + j][0] for j in range(n)]
      ntok = [len(encoded[i + j][1]) for j in range(n)]
      i += n
      ulp = None
      if inst.uncond_contexts is not None:
        ulp = [scores[i + j][0] for j in range(n)]
        i += n
      cut = sum(len(c) + len(k) > window for c, k in encoded[i - n * (1 + (ulp is not None)):i])
      nchar = [len(c) for c in inst.continuations]
      nbytes = [len(c.encode("utf-8")) for c in inst.continuations]
      if n == 1:
        m = metrics_lib.bpb_metrics(lp[0], nbytes[0])
      else:
        m = metrics_lib.instance_metrics(lp, ntok, nchar, nbytes, inst.label, ulp)
      rec = {"task": name, "doc_id": inst.doc_id, "native_id": inst.native_id,
             "subtask": inst.subtask, "label": inst.label, "logprobs": lp, "num_tokens": ntok,
             "num_chars": nchar, "uncond_logprobs": ulp,
             "pred": metrics_lib.argmax_first(lp), "truncated": cut, "metrics": m}
      out[name].append(rec)
  return out


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
    family = name.split(":", 1)[1]
    key = metrics_lib.LM_EVAL_PRIMARY.get(family)
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


def format_table(agg: dict[str, Any]) -> str:
  """A readable table: task, primary metric and value, acc_raw, acc_per_char, bpb, count."""
  rows = [("task", "primary", "value", "acc_raw", "acc_per_char", "bpb", "n")]
  fmt = lambda x: "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"
  for name, m in agg["tasks"].items():
    p = agg["primary_metrics"].get(name, "")
    rows.append((name, p, fmt(m.get(p)), fmt(m.get("acc_raw")), fmt(m.get("acc_per_char")),
                 fmt(m.get("bits_per_byte")), str(agg["counts"].get(name, "-"))))
  for name, m in agg["macro"].items():
    rows.append((f"[macro] {name}", m["metric"][:40] if name in tasks_lib.SUITES
                 else m["metric"], fmt(m["value"]), "", "", "", ""))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, "-" * len(lines[0]))
  return "\n".join(lines)


def evaluate(scorer, tokenizer, tasks: list[tasks_lib.Task], *, limit: int | None = None,
             task_instances: dict[str, list[tasks_lib.Instance]] | None = None,
             suites: Sequence[str] = (), use_file_primary: bool = False,
             progress_bar: bool = False, eos_id: int = EOS_TOKEN_ID,
             log: resume.ScoreLog | None = None, strict: bool = True
             ) -> tuple[dict[str, Any], list[dict]]:
  """(aggregate metrics, prediction records) of the native (non lm-eval) tasks."""
  if task_instances is None:
    task_instances = {t.name: tasks_lib.load_instances(t, limit) for t in tasks
                      if t.source != "lm_eval"}
  bar = None
  if progress_bar:
    from tqdm import tqdm
    total = sum(len(i.continuations) * (2 if i.uncond_contexts else 1)
                for insts in task_instances.values() for i in insts)
    bar = tqdm(total=total, desc="scoring requests", unit="req", file=sys.stderr)
  try:
    records = score_tasks(scorer, Encoder(tokenizer, eos_id), task_instances,
                          progress=bar.update if bar is not None else None, log=log,
                          strict=strict)
  finally:
    if bar is not None:
      bar.close()
  native = [t for t in tasks if t.name in task_instances]
  agg = aggregate(native, records, suites, use_file_primary)
  return agg, [r for recs in records.values() for r in recs]


# ---------------------------------------------------------------------------------- CLI

def _parse(argv):
  p = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", help="run dir, checkpoints dir, step dir, or HF directory")
  p.add_argument("--tasks", default=None,
                 help="comma-separated tasks and suites (olmes, seed, core, all); default "
                      "olmes, or none when --lm_files / --lm_heldout is given")
  p.add_argument("--lm_files", action="append", default=[],
                 help="validation files for bits-per-byte and perplexity: a path or glob "
                      "(.jsonl[.gz|.zst], .parquet, token files), comma-separated or repeated; "
                      "each is one set named by its path stem (or NAME=GLOB)")
  p.add_argument("--lm_heldout", action="store_true",
                 help="also score the held-out split of the checkpoint run's own sources")
  p.add_argument("--lm_stride", type=int, default=None,
                 help="tokens predicted per window of a document longer than the context "
                      "(default: the context window, i.e. non-overlapping windows)")
  p.add_argument("--limit", type=int, default=None,
                 help="score only the first N documents of each task (each MMLU subject) "
                      "and of each lm set")
  p.add_argument("--output", help="directory for metrics.json and predictions.jsonl")
  p.add_argument("--max_length", type=int, default=None,
                 help="context window (default: the model's maximum length, its "
                      "max_seq_len / max_position_embeddings; never more)")
  p.add_argument("--batch_tokens", type=int, default=8192,
                 help="context tokens per scoring batch")
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                 help="compute dtype (default: float32 on CPU, the trained one elsewhere)")
  p.add_argument("--file_primary_metric", action="store_true",
                 help="suite macros use each request file's primary_metric instead of the "
                      "OLMES paper's normalisation")
  p.add_argument("--include_path", default=None,
                 help="extra lm-eval task directory for lm_eval:<task> names")
  p.add_argument("--overwrite", action="store_true",
                 help="replace metrics.json and predictions.jsonl already in --output")
  p.add_argument("--compile_cache", default=None, metavar="DIR",
                 help="keep the compiled scoring programs in DIR (JAX's persistent compilation "
                      "cache): later calls on models of the same shape skip compilation")
  p.add_argument("--list", action="store_true", help="list the known tasks and suites")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  return p.parse_args(argv)


def _list() -> None:
  """Every task with its primary metric and split, then each suite's members and splits."""
  reg = tasks_lib.registry()
  for name in sorted(reg):
    print(f"{name:36s} {reg[name].primary_metric:14s} {reg[name].split_text}")
  for s, members in tasks_lib.SUITES.items():
    parts = [m if m not in reg else f"{m} ({reg[m].split_text})" if m == reg[m].name
             else f"{m} = {reg[m].name} ({reg[m].split_text})" for m in members]
    print(f"suite {s}: {'; '.join(parts)}")


@dataclasses.dataclass
class _Job:
  """What one `eval.run` call scores, resolved and checked before scoring starts."""
  tasks: list
  suites: list[str]
  instances: dict  # task name -> its documents (request files parsed before the model loads)
  lm_sets: dict  # lm set name -> its documents
  lm_eval_names: list[str]
  model: LoadedModel


def _check_outputs(a) -> None:
  """UsageError / FileNotFoundError on a bad --checkpoint, --output or --compile_cache."""
  if not paths.exists(a.checkpoint):
    raise FileNotFoundError(f"checkpoint {a.checkpoint} does not exist; pass a run "
                            "directory, a checkpoint step directory or an HF directory")
  if a.compile_cache and os.path.exists(a.compile_cache) and not os.path.isdir(
      a.compile_cache):
    raise UsageError(f"--compile_cache {a.compile_cache} is a file; pass a directory")
  if paths.isfile(a.output):
    raise UsageError(f"--output {a.output} is a file; pass a directory")
  if paths.exists(os.path.join(a.output, "metrics.json")) and not a.overwrite:
    raise UsageError(f"--output {a.output} already holds metrics.json; pass --overwrite "
                     "to replace it or choose another directory")


def _resolve_tasks(a):
  """(tasks, suites, instances) of --tasks; every request file is parsed here, before the
  model loads, so a bad file fails in a second."""
  if not a.checkpoint or not a.output:
    raise UsageError("--checkpoint and --output are required")
  if a.limit is not None and a.limit <= 0:
    raise UsageError(f"--limit {a.limit} must be a positive number of documents per task")
  lm_wanted = bool(a.lm_files) or a.lm_heldout
  if a.tasks is None:
    a.tasks = "" if lm_wanted else "olmes"
  names = [n.strip() for n in a.tasks.split(",") if n.strip()]
  if not names and not lm_wanted:
    raise UsageError("--tasks names no task; pass tasks, --lm_files or --lm_heldout")
  tasks = tasks_lib.resolve_tasks(names) if names else []
  suites = [n for n in names if n in tasks_lib.SUITES]
  instances = {t.name: tasks_lib.load_instances(t, a.limit) for t in tasks
               if t.source != "lm_eval"}
  return tasks, suites, instances


def _prepare(a) -> _Job:
  """Checks every argument and file, then loads the model (the expensive part comes last)."""
  tasks, suites, instances = _resolve_tasks(a)
  _check_outputs(a)
  lm_eval_names = [t.family for t in tasks if t.source == "lm_eval"]
  if lm_eval_names:
    from eval import harness
    harness.check_lm_eval_tasks(lm_eval_names, a.include_path)
  from eval import lm as lm_lib
  lm_sets = {}
  if a.lm_files:  # every file is read before the model loads: a bad one fails fast
    lm_sets = lm_lib.file_sets(lm_lib.resolve_files(a.lm_files), tokenizer_of(a.checkpoint),
                               a.limit)
  if a.compile_cache:
    from olmo_jax import compile_cache
    compile_cache.enable(a.compile_cache)
  model = load_model(a.checkpoint, a.dtype, a.max_length)
  if a.lm_heldout:
    if is_hf_dir(a.checkpoint):
      raise UsageError(f"--lm_heldout: {a.checkpoint} is an HF directory, which records no "
                       "training data; pass a checkpoint of a training run")
    held = lm_lib.heldout_sets(model.config, a.limit)
    clash = sorted(set(held) & set(lm_sets))
    if clash:
      raise UsageError(f"--lm_files set {clash[0]!r} clashes with a held-out set; rename it")
    lm_sets.update(held)
  if lm_sets:
    lm_lib.windows([], model.max_length, a.lm_stride)  # checks --lm_stride
  return _Job(tasks, suites, instances, lm_sets, lm_eval_names, model)


def _metrics_record(a, model: LoadedModel, agg, lm_res, errors, resumed: int,
                    elapsed: float) -> dict:
  """metrics.json: the aggregates, the lm sets, and what produced them."""
  return {"tasks": agg["tasks"], "macro": agg["macro"], "subtasks": agg["subtasks"],
          "counts": agg["counts"], "primary_metrics": agg["primary_metrics"],
          "truncated": agg["truncated"], "splits": agg["splits"],
          "lm": lm_res, "errors": errors, "checkpoint": paths.abspath(a.checkpoint),
          "step": model.step,
          "config": {"eval": {"tasks": a.tasks, "limit": a.limit, "max_length": model.max_length,
                              "dtype": model.cfg.dtype, "tokenizer": model.tokenizer,
                              "file_primary_metric": a.file_primary_metric,
                              "lm_files": a.lm_files, "lm_heldout": a.lm_heldout,
                              "lm_stride": a.lm_stride or model.max_length,
                              "resumed_requests": resumed,
                              "seconds": round(elapsed, 2)},
                     "model": model.config}}


def main(argv: Sequence[str] | None = None) -> int:
  a = _parse(argv)
  if a.list:
    _list()
    return 0
  from olmo_jax.checkpoint import CheckpointError
  from olmo_jax.hf import ConversionError
  try:
    job = _prepare(a)
  except (UsageError, tasks_lib.TaskError, CheckpointError, ConversionError,
          FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  t0, model = time.time(), job.model
  log = resume.ScoreLog(a.output, _fingerprint(a, model))
  resume.install_sigint()
  try:
    agg, preds, lm_res, errors = _score(a, model, job.tasks, job.instances, job.suites,
                                        job.lm_sets, job.lm_eval_names, log)
  except resume.Interrupted:
    log.close(keep=True)
    print(f"interrupted: {log.scored} requests scored so far are kept in {log.path}; run the "
          "same command again to resume", file=sys.stderr)
    return 130
  except ScoreError as e:  # the scores so far are of no use (e.g. NaN weights): not kept
    log.close(keep=False)
    print(f"error: {e}", file=sys.stderr)
    return 2
  elapsed = time.time() - t0
  paths.makedirs(a.output)
  _write_json(os.path.join(a.output, "metrics.json"),
              _metrics_record(a, model, agg, lm_res, errors, log.resumed, elapsed))
  _write_jsonl(os.path.join(a.output, "predictions.jsonl"), preds)
  log.close(keep=False)  # its scores are in metrics.json now
  _print_summary(a, agg, lm_res, len(preds), log.resumed, model.max_length, elapsed)
  return 1 if errors else 0


def _fingerprint(a, model: LoadedModel) -> dict[str, Any]:
  """What the saved scores depend on: a partial run resumes only when all of it matches."""
  path = paths.abspath(a.checkpoint)
  files = {}
  if is_hf_dir(path) and not paths.is_remote(path):  # weights replaced in place: new stamp
    files = {f: [os.path.getsize(os.path.join(path, f)), os.path.getmtime(os.path.join(path, f))]
             for f in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, f))}
  return {"checkpoint": path, "step": model.step, "files": files,
          "max_length": model.max_length, "dtype": model.cfg.dtype,
          "tokenizer": model.tokenizer, "eos_id": model.eos_id}


def _score(a, model: LoadedModel, tasks, instances, suites, lm_sets, lm_eval_names,
           log: resume.ScoreLog):
  """(aggregate, prediction records, lm results, errors) of everything asked for."""
  from data_pipeline.tokenizer import load_tokenizer
  from eval.scorer import Scorer
  scorer = Scorer(model.cfg, model.params, max_length=model.max_length,
                  batch_tokens=a.batch_tokens)
  tokenizer = load_tokenizer(model.tokenizer)
  agg, preds = evaluate(scorer, tokenizer, tasks, task_instances=instances, suites=suites,
                        use_file_primary=a.file_primary_metric,
                        progress_bar=not a.no_progress, eos_id=model.eos_id, log=log)
  lm_res = _score_lm(scorer, lm_sets, tokenizer, a.lm_stride, log) if lm_sets else {}
  errors = {}
  if lm_eval_names:
    from eval import harness
    resume.restore_sigint()  # lm-eval's own loop: Ctrl-C stops it at once
    lm = harness.OlmoJaxLM.from_scorer(scorer, tokenizer)
    try:
      harness_res = harness.run_lm_eval(lm, lm_eval_names, limit=a.limit,
                                        include_path=a.include_path)
    except Exception as e:  # e.g. its dataset is not available offline: keep the rest
      harness_res = {}
      errors["lm_eval"] = f"{type(e).__name__}: {e}"
      print(f"error: lm-eval tasks {lm_eval_names} failed ({errors['lm_eval']}); the other "
            "tasks' results are written", file=sys.stderr)
    agg = aggregate([t for t in tasks if t.name in instances],
                    _records_from(preds), suites, a.file_primary_metric,
                    {f"lm_eval:{k}": v for k, v in harness_res.items()})
  return agg, preds, lm_res, errors


def _score_lm(scorer, lm_sets, tokenizer, stride, log: resume.ScoreLog):
  """eval/lm.py's set metrics, token ids checked first and every value checked finite."""
  import numpy as np

  from eval import lm as lm_lib
  vocab = scorer.cfg.vocab_size
  for name, docs in lm_sets.items():
    top = max((int(np.max(d.tokens)) for d in docs if len(d.tokens)), default=-1)
    if top >= vocab:
      raise ScoreError(f"token id {top} in lm set {name} is past the model's vocabulary of "
                       f"{vocab}: the set was tokenized for another model; tokenize it with "
                       "the model's tokenizer (or pass text files)")
  res = lm_lib.evaluate_sets(resume.LoggedScorer(scorer, log), lm_sets, tokenizer, stride)
  for name, m in res.items():
    if m["bytes"] and not math.isfinite(m["bits_per_byte"]):
      raise ScoreError(f"lm set {name}: bits per byte is not finite: the weights hold NaN/inf "
                       "(a diverged run?) or the compute dtype overflows; score with --dtype "
                       "float32 or an earlier checkpoint")
  return res


def _print_summary(a, agg, lm_res, n_docs: int, resumed: int, window: int,
                   elapsed: float) -> None:
  from eval import lm as lm_lib
  if agg["tasks"]:
    print(format_table(agg))
  if lm_res:
    print(lm_lib.format_table(lm_res))
  cut = sum(agg["truncated"].values())
  if cut:
    print(f"{cut} requests were longer than the {window}-token window and were "
          "left-truncated (per task in metrics.json 'truncated')")
  if resumed:
    print(f"resumed: {resumed} requests' scores came from the interrupted run")
  print(f"wrote {a.output}/metrics.json and predictions.jsonl ({n_docs} documents, "
        f"{elapsed:.1f} s)")


def _records_from(preds: list[dict]) -> dict[str, list[dict]]:
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


def cli(argv: Sequence[str] | None = None) -> int:
  """main() with Ctrl-C before scoring starts (loading, compiling) as one line, exit 130."""
  try:
    return main(argv)
  except KeyboardInterrupt:
    print("interrupted; metrics.json was not written (batches already scored, if any, are "
          "kept in OUT/scores.partial.jsonl: the same command resumes)", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(cli())
