"""Scores kept as they are computed, so that an interrupted `eval.run` resumes where it stopped.

`OUT/scores.partial.jsonl` holds one line per scored batch: the request indices and their
(log-prob, is_greedy) under the hash of the tokenized request list they belong to (the
tasks' requests, each lm set's windows). Its first line is the fingerprint of what determines
the scores (checkpoint, step, window, dtype). A rerun of the same command reads the lines
whose fingerprint and hash match, scores only the requests they lack, and deletes the file
once metrics.json is written. Ctrl-C (SIGINT) sets a flag that the scoring loop reads
after each batch, once that batch is saved: the run stops between batches, never inside a
compiled call.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import signal
from typing import Any, Callable, Sequence

FILE = "scores.partial.jsonl"


class Interrupted(Exception):
  """Raised between batches after SIGINT; what was scored is saved."""


class _Stop:
  requested = False


def install_sigint() -> None:
  """A first Ctrl-C asks the scoring loop to stop after its batch; a second one stops now."""

  def handler(signum, frame):
    if _Stop.requested:
      raise KeyboardInterrupt
    _Stop.requested = True

  signal.signal(signal.SIGINT, handler)


def restore_sigint() -> None:
  """Ctrl-C raises KeyboardInterrupt again (for loops that do not save as they go)."""
  _Stop.requested = False
  signal.signal(signal.SIGINT, signal.default_int_handler)


def requests_hash(requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> str:
  """A digest of the token ids of every request, in order (each shared context once)."""
  h = hashlib.sha1()
  seen: dict[int, int] = {}
  for ctx, cont in requests:
    j = seen.get(id(ctx))
    if j is None:  # a document's choices share one context list (eval.run.Encoder)
      j = seen[id(ctx)] = len(seen)
      h.update(b"C%d:" % len(ctx) + array.array("q", ctx).tobytes())
    h.update(b"R%d,%d:" % (j, len(cont)) + array.array("q", cont).tobytes())
  return h.hexdigest()


class ScoreLog:
  """The partial scores of one output directory (see the module docstring)."""

  def __init__(self, out_dir: str, fingerprint: dict[str, Any]):
    from olmo_jax import paths
    if paths.is_remote(out_dir):  # a bucket: kept in a local copy uploaded as it grows
      out_dir = paths.mirror(out_dir, names=(FILE,))
    self.path = os.path.join(out_dir, FILE)
    self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
    self.saved: dict[str, dict[int, tuple[float, bool]]] = {}
    self.resumed = 0  # requests whose saved scores were reused
    self.scored = 0  # requests scored or reused so far
    self.out_dir = out_dir
    self._read()
    self._f = None  # opened with the first scored batch: a run that fails first leaves nothing
    self._made_dir = False

  def _read(self) -> None:
    try:
      with open(self.path) as f:
        lines = [json.loads(line) for line in f if line.endswith("\n")]
    except (OSError, json.JSONDecodeError):
      return
    if not lines or lines[0].get("fingerprint") != self.fingerprint:
      return
    for rec in lines[1:]:
      got = self.saved.setdefault(rec["key"], {})
      for i, lp, g in zip(rec["i"], rec["lp"], rec["g"]):
        got[i] = (float(lp), bool(g))

  def _write(self, rec: dict) -> None:
    if self._f is None:
      if not os.path.isdir(self.out_dir):
        os.makedirs(self.out_dir)
        self._made_dir = True
      fresh = not self.saved
      self._f = open(self.path, "w" if fresh else "a")
      if fresh:
        self._f.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
    self._f.write(json.dumps(rec) + "\n")
    self._f.flush()

  def loglikelihood(self, scorer, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                    progress: Callable[[int], None] | None = None
                    ) -> list[tuple[float, bool]]:
    """scorer.loglikelihood(requests), reusing saved scores of these requests, saving new ones.

    Raises Interrupted after the batch in which SIGINT arrived (that batch saved).
    """
    key = requests_hash(requests)
    saved = self.saved.get(key, {})
    self.resumed += len(saved)
    self.scored += len(saved)
    if progress is not None and saved:
      progress(len(saved))
    todo = [i for i in range(len(requests)) if i not in saved]

    def on_batch(done: list[tuple[int, float, bool]]) -> None:
      self._write({"key": key, "i": [todo[j] for j, _, _ in done],
                   "lp": [lp for _, lp, _ in done], "g": [g for _, _, g in done]})
      self.scored += len(done)
      if _Stop.requested:
        raise Interrupted

    if _Stop.requested:
      raise Interrupted
    new = scorer.loglikelihood([requests[i] for i in todo], progress=progress,
                               on_batch=on_batch) if todo else []
    out: list[tuple[float, bool] | None] = [saved.get(i) for i in range(len(requests))]
    for i, s in zip(todo, new):
      out[i] = s
    return out  # type: ignore[return-value]

  def close(self, keep: bool) -> None:
    """Closes the file; keep=False removes it (the run finished, or its scores are unusable)
    and the output directory too if this log made it and it is empty."""
    if self._f is not None:
      self._f.close()
    if not keep:
      if os.path.exists(self.path):
        os.remove(self.path)
      if self._made_dir and not os.listdir(self.out_dir):
        os.rmdir(self.out_dir)


class LoggedScorer:
  """A scorer whose loglikelihood goes through a ScoreLog (what eval/lm.py is handed)."""

  def __init__(self, scorer, log: ScoreLog):
    self.scorer, self.log = scorer, log
    self.max_length = scorer.max_length

  def loglikelihood(self, requests, progress=None):
    return self.log.loglikelihood(self.scorer, requests, progress)
