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
One writer per output: the run holds OUT/eval.lock (olmo_jax/workdir.py) from before the model
loads to the end, so a second `eval.run` on the same --output fails at once (exit 2) naming
the first; a gs:// --checkpoint or --output is checked (bucket exists, writable, endpoint
answering) before anything else.

This module is the command line only (arguments, --list, printing, exit codes); loading,
scoring, aggregation and writing the results are eval/evaluation.py's.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from typing import Any, Sequence

from olmo_jax import runtime

runtime.init()  # first, before JAX loads: a host without accelerators runs on its CPU

from eval import evaluation as ev
from eval import resume
from eval import tasks as tasks_lib
from eval.encoding import ScoreError, UsageError
from olmo_jax import load as load_lib
from olmo_jax import locking, paths
from olmo_jax import workdir as workdir_lib

# ---------------------------------------------------------------------------------- CLI

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
  model: load_lib.LoadedModel
  lock: object  # the output's lock (workdir_lib.WorkdirLock or gcs_lock.BucketWorkdirLock)


def _check_outputs(a) -> None:
  """UsageError / FileNotFoundError on a bad --checkpoint, --output or --compile_cache."""
  paths.check_bucket(a.checkpoint, "--checkpoint", write=False)
  paths.check_bucket(a.output, "--output")
  if not paths.exists(a.checkpoint):
    raise FileNotFoundError(f"checkpoint {a.checkpoint} does not exist; pass a run "
                            "directory, a checkpoint step directory or an HF directory")
  if a.compile_cache and os.path.exists(a.compile_cache) and not os.path.isdir(
      a.compile_cache):
    raise UsageError(f"--compile_cache {a.compile_cache} is a file; pass a directory")
  if paths.isfile(a.output):
    raise UsageError(f"--output {a.output} is a file; pass a directory")


def _own_output(a):
  """Takes the lock of --output (a second writer fails here), then checks, under it, that
  no earlier result would be replaced without --overwrite. Returns the lock."""
  lock = locking.lock_for(a.output, workdir_lib.EVALUATION)
  try:
    took_over = lock.acquire()
  except workdir_lib.WorkdirBusyError as e:
    raise UsageError(str(e)) from None
  if took_over:
    print(f"warning: {took_over}", file=sys.stderr)
  if paths.exists(os.path.join(a.output, "metrics.json")) and not a.overwrite:
    lock.release_and_tidy()
    raise UsageError(f"--output {a.output} already holds metrics.json; pass --overwrite "
                        "to replace it or choose another directory")
  return lock


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
  names = tasks_lib.task_names(a.tasks)
  if not names and not lm_wanted:
    raise UsageError("--tasks names no task; pass tasks, --lm_files or --lm_heldout")
  tasks = tasks_lib.resolve_tasks(names) if names else []
  suites = tasks_lib.suite_names(names)
  instances = {t.name: tasks_lib.load_instances(t, a.limit) for t in tasks
               if t.scored_here}
  return tasks, suites, instances


def _prepare(a) -> _Job:
  """Checks every argument and file, takes the output's lock, then loads the model (the
  expensive part comes last). A failure after the lock leaves --output as it was found."""
  tasks, suites, instances = _resolve_tasks(a)
  _check_outputs(a)
  lock = _own_output(a)
  try:
    return _Job(tasks, suites, instances, *_load(a, tasks), lock)
  except BaseException:
    lock.release_and_tidy()
    raise


def _load(a, tasks) -> tuple[dict, load_lib.LoadedModel]:
  """(lm sets, the loaded model): the lm-eval tasks and lm files are checked first."""
  lm_eval_names = [t.family for t in tasks if not t.scored_here]
  if lm_eval_names:
    from eval import harness
    harness.check_lm_eval_tasks(lm_eval_names, a.include_path)
  from eval import lm as lm_lib
  lm_sets = {}
  if a.lm_files:  # every file is read before the model loads: a bad one fails fast
    lm_sets = lm_lib.file_sets(lm_lib.resolve_files(a.lm_files),
                               load_lib.tokenizer_of(a.checkpoint), a.limit)
  if a.compile_cache:
    from olmo_jax import compile_cache
    compile_cache.enable(a.compile_cache)
  model = load_lib.load_model(a.checkpoint, dtype=a.dtype, max_length=a.max_length)
  if a.lm_heldout:
    if load_lib.is_hf_dir(a.checkpoint):
      raise UsageError(f"--lm_heldout: {a.checkpoint} is an HF directory, which records no "
                       "training data; pass a checkpoint of a training run")
    held = lm_lib.heldout_sets(model.config, a.limit)
    clash = sorted(set(held) & set(lm_sets))
    if clash:
      raise UsageError(f"--lm_files set {clash[0]!r} clashes with a held-out set; rename it")
    lm_sets.update(held)
  if lm_sets:
    lm_lib.windows([], model.max_length, a.lm_stride)  # checks --lm_stride
  return lm_sets, model


def _metrics_record(a, model: load_lib.LoadedModel, agg, lm_res, errors, resumed: int,
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
  try:
    return _score_and_write(a, job)
  finally:
    job.lock.release()  # a no-op after release_and_tidy


def _score_and_write(a, job: _Job) -> int:
  """Scores the job (resuming from OUT/scores.partial.jsonl), writes the results; exit code."""
  t0, model = time.time(), job.model
  log = resume.ScoreLog(a.output, ev.fingerprint(a.checkpoint, model))
  resume.install_sigint()
  try:
    agg, preds, lm_res, errors = ev.score_all(
        model, job.tasks, job.instances, job.suites, job.lm_sets, log,
        batch_tokens=a.batch_tokens, lm_stride=a.lm_stride, limit=a.limit,
        include_path=a.include_path, use_file_primary=a.file_primary_metric,
        progress_bar=not a.no_progress)
  except resume.Interrupted:
    log.close(keep=True)
    print(f"interrupted: {log.scored} requests scored so far are kept in {log.path}; run the "
          "same command again to resume", file=sys.stderr)
    return 130
  except ScoreError as e:  # the scores so far are of no use (e.g. NaN weights): not kept
    log.close(keep=False)
    job.lock.release_and_tidy()
    print(f"error: {e}", file=sys.stderr)
    return 2
  elapsed = time.time() - t0
  ev.write_results(a.output, _metrics_record(a, model, agg, lm_res, errors, log.resumed,
                                             elapsed), preds)
  log.close(keep=False)  # its scores are in metrics.json now
  _print_summary(a, agg, lm_res, len(preds), log.resumed, model.max_length, elapsed)
  return 1 if errors else 0


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
