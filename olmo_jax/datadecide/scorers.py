"""Scorers: evaluate one checkpoint of a study cell into {task: {metric: value}}.

A scorer is any callable `scorer(cell, step, ckpt_dir, out_dir) -> {task: {metric: value}}`;
the study caches what it returns in `out_dir/metrics.json` and never asks twice.

- `EvalRunScorer`: the evaluation package's CLI, `python -m eval.run --checkpoint CKPT_DIR
  --tasks NAMES [--limit N] --output OUT_DIR` (it writes OUT_DIR/metrics.json with a "tasks"
  entry), run in a subprocess; a pack's checkpoints (`score_pack`) in one pass in-process.
- `HeldoutScorer`: mean next-token loss (nats/token) and top-1 next-token accuracy on fixed
  windows of held-out token files (read as the data pipeline reads token files), computed in
  this process with the training model's forward.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np

from data_pipeline import heldout
from eval import tasks as tasks_lib
from olmo_jax.load import load_model


class EvalRunScorer:
  """Scores checkpoints with `python -m eval.run`."""

  def __init__(self, tasks: str, limit: int | None = None, python: str = sys.executable,
               compile_cache: str | None = None):
    self.tasks, self.limit, self.python = tasks, limit, python
    self.compile_cache = compile_cache  # shared by every call: one compilation per shape

  def command(self, ckpt_dir: str, out_dir: str) -> list[str]:
    cmd = [self.python, "-m", "eval.run", "--checkpoint", ckpt_dir, "--tasks", self.tasks,
           "--output", out_dir]
    if self.limit:
      cmd += ["--limit", str(self.limit)]
    if self.compile_cache:
      cmd += ["--compile_cache", self.compile_cache]
    return cmd + ["--overwrite"]  # the study re-scores only what it lacks

  def __call__(self, cell, step: int, ckpt_dir: str, out_dir: str) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "eval.log"), "w") as log:
      rc = subprocess.call(self.command(ckpt_dir, out_dir), stdout=log, stderr=subprocess.STDOUT)
    path = os.path.join(out_dir, "metrics.json")
    if rc or not os.path.isfile(path):
      raise RuntimeError(f"eval.run failed on {ckpt_dir} (exit {rc}); see {out_dir}/eval.log")
    with open(path) as f:
      return json.load(f)["tasks"]


  def score_pack(self, cells, step: int, ckpt_dirs, out_dirs) -> list[dict]:
    """The checkpoints of K cells of one shape scored in this process in one pass
    (eval.evaluation.evaluate_replicas: one tokenization and batching, the weights stacked):
    per cell, the "tasks" of the metrics.json eval.run would write, which is also written to
    its out_dir. One eval.run per cell instead when a task runs in lm-evaluation-harness or
    the checkpoints' shapes differ."""
    from data_pipeline import atomic
    from data_pipeline.tokenizer import load_tokenizer
    from eval import evaluation as ev
    from eval.scorer import PackedScorer
    from olmo_jax import pack
    names = tasks_lib.task_names(self.tasks)
    tasks = tasks_lib.resolve_tasks(names)
    models = [load_model(d) for d in ckpt_dirs]
    m0 = models[0]
    if (not all(t.scored_here for t in tasks)
        or any((m.cfg, m.max_length, m.tokenizer) != (m0.cfg, m0.max_length, m0.tokenizer)
               for m in models)):
      return [self(c, step, d, o) for c, d, o in zip(cells, ckpt_dirs, out_dirs)]
    instances = {t.name: tasks_lib.load_instances(t, self.limit) for t in tasks}
    scorer = PackedScorer(m0.cfg, pack.stack([m.params for m in models]),
                          max_length=m0.max_length)
    outs = ev.evaluate_replicas(scorer, load_tokenizer(m0.tokenizer), tasks, instances,
                                suites=tasks_lib.suite_names(names),
                                eos_id=m0.eos_id)
    for (agg, _), d, out in zip(outs, ckpt_dirs, out_dirs):
      os.makedirs(out, exist_ok=True)
      atomic.write_json(os.path.join(out, "metrics.json"),
                        {k: agg[k] for k in ("tasks", "macro", "subtasks", "counts",
                                             "primary_metrics")}
                        | {"checkpoint": d, "packed_with": len(models)})
    return [agg["tasks"] for agg, _ in outs]


class HeldoutScorer:
  """Held-out loss and next-token accuracy of a checkpoint (task `heldout`)."""

  def __init__(self, paths: str, seq_len: int, windows: int = 32, batch: int = 4,
               task: str = "heldout", dtype: str = "uint16"):
    self.paths, self.seq_len, self.windows, self.batch, self.task = (
        paths, seq_len, windows, batch, task)
    self.dtype = dtype  # of raw token files (an .npy header names its own)
    self._tokens = None
    self._fns = {}

  def tokens(self):
    """[windows, seq_len + 1] int32: the first windows of the held-out files, in order."""
    if self._tokens is None:
      files = sorted(glob.glob(self.paths))
      if not files:
        raise FileNotFoundError(f"no held-out token files match {self.paths}")
      window = self.seq_len + 1
      need, parts = self.windows * window, []
      for f in files:  # only the tokens the windows take are read
        have = sum(map(len, parts))
        if have >= need:
          break
        parts.append(np.asarray(heldout.open_tokens(f, self.dtype)[:need - have], np.int32))
      ids = np.concatenate(parts)
      n = min(self.windows, len(ids) // window)
      if n < self.batch:
        raise ValueError(f"held-out data {self.paths} holds {len(ids)} tokens: too few for "
                         f"{self.batch} windows of {window}")
      n -= n % self.batch
      self._tokens = ids[:n * window].reshape(n, window)
    return self._tokens

  def _fn(self, mcfg):
    import jax

    from olmo_jax import trainer
    if mcfg not in self._fns:  # the trainer's held-out loss, over the real vocabulary
      self._fns[mcfg] = jax.jit(
          lambda params, ids_BxL1: trainer.heldout_sums(mcfg, params, ids_BxL1,
                                                        vocab_size=mcfg.vocab_size))
    return self._fns[mcfg]

  def _packed_fn(self, mcfg):
    import jax
    key = ("packed", mcfg)
    if key not in self._fns:  # the same function, vmapped over a leading replica axis
      self._fns[key] = jax.jit(jax.vmap(self._fn(mcfg), in_axes=(0, None)))
    return self._fns[key]

  def _scores(self, fn, params) -> list[dict]:
    """Per replica (a leading axis of fn's outputs, or none), {task: {loss, accuracy}}."""
    toks = self.tokens()
    nll, correct = 0.0, 0
    for i in range(0, len(toks), self.batch):
      a, b = fn(params, toks[i:i + self.batch])
      nll = nll + np.asarray(a, np.float64)
      correct = correct + np.asarray(b, np.int64)
    n = toks.shape[0] * self.seq_len
    return [{self.task: {"loss": float(x) / n, "accuracy": int(c) / n}}
            for x, c in zip(np.atleast_1d(nll), np.atleast_1d(correct))]

  def __call__(self, cell, step: int, ckpt_dir: str, out_dir: str) -> dict:
    m = load_model(ckpt_dir)
    return self._scores(self._fn(m.cfg), m.params)[0]

  def score_pack(self, cells, step: int, ckpt_dirs, out_dirs) -> list[dict]:
    """__call__ of K cells of one model shape at one step, in one pass over the windows."""
    from olmo_jax import pack
    models = [load_model(d) for d in ckpt_dirs]
    mcfg = models[0].cfg
    if any(m.cfg != mcfg for m in models):
      return [self(c, step, d, o) for c, d, o in zip(cells, ckpt_dirs, out_dirs)]
    return self._scores(self._packed_fn(mcfg), pack.stack([m.params for m in models]))

