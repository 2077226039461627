"""Data curation: deterministic, composable steps that choose which documents a source keeps.

A chain is a list of steps, each `{"step": NAME, **params}`, applied in order to the documents of
a source (jsonl / parquet with a `text` field and optional metadata) when the source is
tokenised (`python -m data_pipeline.tokenize_files --chain ...` or `--recipe ...`), so training
reads plain token files. Every step only keeps or drops whole documents (never rewrites text),
so token accounting per step is exact and the same inputs + chain + tokenizer always give the
same bytes.

Steps, each described (with the library underneath it) in its module:
  exact_dedup, minhash_dedup                           dedup.py (hashlib, datasketch)
  gopher_quality, gopher_repetition, fineweb_quality   quality_rules.py (datatrove's filters)
  top_p, subsample                                     selection.py (fastText, scikit-learn)

The three rule steps are datatrove's filters with datatrove's default English word splitter
(spaCy's rule-based tokenizer), so their decisions are datatrove's, document by document.

User errors (unknown step or parameter, threshold out of range, missing score field, attributes
misaligned with the documents, a classifier that does not load) raise `CurationError` naming
the step and the fix, before any output is written.
"""

from __future__ import annotations

import hashlib
import json
import time

import ml_collections
import numpy as np

from data_pipeline.corpus import Corpus
from data_pipeline.curation_step import CHAIN_VERSION, CurationError, Step, jsonable
from data_pipeline.dedup import ExactDedup, MinHashDedup
from data_pipeline.quality_rules import (
  FineWebQuality,
  GopherQuality,
  GopherRepetition,
  link_rule_runs,
)
from data_pipeline.selection import Subsample, TopP

EXAMPLES_PER_STEP = 3
SNIPPET_CHARS = 160


STEPS: dict[str, type[Step]] = {cls.name: cls for cls in (
    ExactDedup, MinHashDedup, GopherQuality, GopherRepetition, FineWebQuality, TopP, Subsample)}


def parse_chain(chain) -> list[Step]:
  """Step objects for a chain: a list of {"step": NAME, **params} (or a JSON string of one)."""
  if isinstance(chain, str):
    try:
      chain = json.loads(chain)
    except json.JSONDecodeError as e:
      raise CurationError(f"curation chain is not valid JSON ({e})") from e
  if hasattr(chain, "to_dict"):
    chain = chain.to_dict()
  if not isinstance(chain, (list, tuple)):
    raise CurationError(f"curation chain must be a list of steps, got {type(chain).__name__}")
  steps = []
  for k, item in enumerate(chain):
    if hasattr(item, "to_dict"):
      item = item.to_dict()
    if not isinstance(item, dict) or not isinstance(item.get("step"), str):
      raise CurationError(f"curation chain item {k}: expected {{'step': NAME, ...}}, got {item!r}")
    params = dict(item)
    name = params.pop("step")
    if name not in STEPS:
      raise CurationError(f"unknown curation step {name!r} (chain item {k}); known: "
                          f"{', '.join(STEPS)}")
    steps.append(STEPS[name](**params))
  return steps


def chain_spec(steps: list[Step]) -> list[dict]:
  return [s.spec() for s in steps]


def describe_chain(chain) -> str:
  """A one-line name of a chain, e.g. 'exact_dedup > minhash_dedup(threshold=0.9)' (parameters
  at their defaults are not shown)."""
  if not chain:
    return "raw"
  parts = []
  for item in (chain.to_dict() if hasattr(chain, "to_dict") else chain):
    item = item.to_dict() if hasattr(item, "to_dict") else dict(item)
    name = item.pop("step")
    known = STEPS[name].PARAMS if name in STEPS else {}
    defaults = {k: jsonable(d) for k, (_, d) in known.items()}
    args = ",".join(f"{k}={v}" for k, v in sorted(item.items())
                    if k not in defaults or jsonable(v) != defaults[k])
    parts.append(f"{name}({args})" if args else name)
  return " > ".join(parts)


def digest(obj) -> str:
  """SHA-256 of a JSON value (sorted keys): the cache keys."""
  return hashlib.sha256(json.dumps(jsonable(obj), sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------------
# Running a chain, with accounting.


def _snippet(text: str) -> str:
  text = " ".join(text.split())
  return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS - 3] + "..."


def _examples(corpus, alive, keep, why) -> dict:
  """A few kept and dropped documents of a step (the first of each drop reason first)."""
  kept = [int(i) for i in alive[keep][:EXAMPLES_PER_STEP]]
  dropped_pos = np.flatnonzero(~keep)
  picked, seen = [], set()
  for j, (reason, _) in zip(dropped_pos.tolist(), why):
    if reason not in seen:
      seen.add(reason)
      picked.append(j)
  for j in dropped_pos.tolist():
    if len(picked) >= EXAMPLES_PER_STEP:
      break
    if j not in picked:
      picked.append(j)
  detail = dict(zip(dropped_pos.tolist(), why))
  return {
      "kept": [{"doc": corpus.origin(i), "text": _snippet(corpus.texts[i])} for i in kept],
      "dropped": [{"doc": corpus.origin(int(alive[j])), "reason": detail[j][0],
                   "detail": detail[j][1], "text": _snippet(corpus.texts[int(alive[j])])}
                  for j in sorted(picked[:EXAMPLES_PER_STEP])],
  }


def run_chain(steps: list[Step], corpus: Corpus, workers: int = 1,
              log=None) -> tuple[np.ndarray, list[dict]]:
  """Apply steps in order; returns (kept document indices int64[K], per-step accounting).

  corpus.tokens must be filled. Each accounting row: step, params, documents/tokens in, kept,
  dropped, reasons {reason: {documents, tokens}}, seconds, examples.
  """
  alive = np.arange(len(corpus), dtype=np.int64)
  rows = []
  link_rule_runs(steps)
  for step in steps:
    t0 = time.time()
    keep, why = step.apply(corpus, alive, workers)
    if len(why) != int((~keep).sum()):
      raise AssertionError(f"{step.name}: {len(why)} reasons for {int((~keep).sum())} drops")
    dropped = alive[~keep]
    reasons: dict[str, dict] = {}
    for i, (reason, _) in zip(dropped.tolist(), why):
      r = reasons.setdefault(reason, {"documents": 0, "tokens": 0})
      r["documents"] += 1
      r["tokens"] += int(corpus.tokens[i])
    row = {"step": step.name, "params": step.params,
           "documents_in": len(alive), "documents_kept": int(keep.sum()),
           "documents_dropped": int((~keep).sum()),
           "tokens_in": int(corpus.tokens[alive].sum()),
           "tokens_kept": int(corpus.tokens[alive[keep]].sum()),
           "tokens_dropped": int(corpus.tokens[dropped].sum()),
           "reasons": dict(sorted(reasons.items())),
           "seconds": round(time.time() - t0, 3),
           "examples": _examples(corpus, alive, keep, why)}
    rows.append(row)
    if log is not None:
      log(f"curation {step.name}: kept {row['documents_kept']} of {row['documents_in']} "
          f"documents ({row['tokens_kept']} of {row['tokens_in']} tokens)")
    alive = alive[keep]
  return alive, rows


# ------------------------------------------------------------------------------------------
# Recipes.


CURATED_DIR = "curated"


def curated_source(inputs: str, chain: list[dict], weight: float = 1.0,
                   tokenizer: str = "olmo", field: str = "text"):
  """A recipe source whose token files are `inputs` (globs under data_dir, '|'-separated)
  curated by `chain` and tokenised once into <data_dir>/curated/<key>/.

  The key hashes (inputs as written, chain as written, tokenizer, field), so recipes that share
  all of them share the files; the index inside records the input contents and the full chain,
  and a rerun over changed inputs is refused rather than silently mixed.
  """
  key = digest({"inputs": inputs, "chain": chain, "tokenizer": tokenizer, "field": field,
                "version": CHAIN_VERSION})[:16]
  c = ml_collections.ConfigDict()
  c.kind, c.paths, c.weight = "tokens", f"{CURATED_DIR}/{key}/*.npy", float(weight)
  c.curation = ml_collections.ConfigDict({
      "inputs": inputs, "chain": json.dumps(jsonable(chain), sort_keys=True),
      "tokenizer": tokenizer, "field": field, "output": f"{CURATED_DIR}/{key}",
      "description": describe_chain(chain)})
  return c
