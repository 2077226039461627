"""Language-modelling evaluation: bits-per-byte and perplexity of documents (Paloma-style
validation files a user names, and the held-out split of a run's own training sources).

Every token of a document (its ids followed by EOS; the EOS is a prediction target too) is
scored given the tokens before it with the model's own forward (eval/scorer.py); the first
token is predicted from an EOS, as in training's packed stream where a document follows the
previous one's EOS. A document longer than the context window is scored in strided windows:
each window predicts the next `stride` tokens given up to max_length tokens before them
(stride = max_length, the default, is lm-eval's rolling log-likelihood: non-overlapping
windows, the last one filled up with earlier context; a smaller stride gives every token at
least max_length - stride + 1 tokens of context, at max_length / stride times the compute).

Per set: bits_per_byte = -(sum of log-probs) / ln 2 / (UTF-8 bytes of the documents' text);
documents read as tokens are decoded with the tokenizer to count their bytes (the EOS counts
no bytes). perplexity = exp(-(sum of log-probs) / tokens), tokens counting every EOS.
"""

from __future__ import annotations

import glob
import itertools
import math
import os
from typing import Any, Iterable, Sequence

from data_pipeline import data_plan, heldout
from data_pipeline import sources as sources_lib

EOS = heldout.EOS
_SUFFIXES = tuple(sorted(sources_lib.TEXT_SUFFIXES, key=len, reverse=True)) + (".npy", ".bin")


def windows(tokens: Sequence[int], max_length: int, stride: int | None = None,
            prefix: int = EOS) -> list[tuple[list[int], list[int]]]:
  """(context, continuation) requests that together predict every token of a document.

  tokens: the document's ids (with its EOS); the first is predicted from `prefix`. Each
  request is at most max_length + 1 tokens, so the scorer never truncates it; continuations
  are consecutive `stride`-token pieces.
  """
  stride = max_length if stride is None else stride
  if not 1 <= stride <= max_length:
    raise ValueError(f"--lm_stride {stride} must be between 1 and the context window "
                     f"{max_length}")
  seq = [prefix] + [int(t) for t in tokens]
  out = []
  for a in range(1, len(seq), stride):
    b = min(a + stride, len(seq))
    out.append((seq[max(0, b - 1 - max_length):a], seq[a:b]))
  return out


def rolling_logprobs(scorer, token_lists: Sequence[Sequence[int]], stride: int | None = None,
                     prefix: int = EOS) -> list[float]:
  """Summed natural-log probability of every token of each token list, scored in `windows`
  (float64 sums): the rolling log-likelihood of eval.lm sets and of lm-eval's
  `loglikelihood_rolling` (eval/harness.py)."""
  requests, owner = [], []
  for i, tokens in enumerate(token_lists):
    w = windows(tokens, scorer.max_length, stride, prefix)
    requests += w
    owner += [i] * len(w)
  sums = [0.0] * len(token_lists)
  for i, (lp, _) in zip(owner, scorer.loglikelihood(requests)):
    sums[i] += lp
  return sums


def document_logprobs(scorer, documents: Sequence[heldout.EvalDocument],
                      stride: int | None = None) -> list[float]:
  """Summed natural-log probability of each document's tokens (float64 sums)."""
  return rolling_logprobs(scorer, [doc.tokens for doc in documents], stride)


def set_metrics(documents: Sequence[heldout.EvalDocument], logprobs: Sequence[float],
                tokenizer=None) -> dict[str, Any]:
  """bits_per_byte, perplexity, tokens, documents and bytes of one set."""
  total = math.fsum(logprobs)
  tokens = sum(len(d.tokens) for d in documents)
  nbytes = sum(d.num_bytes(tokenizer) for d in documents)
  return {"bits_per_byte": -total / math.log(2) / nbytes if nbytes else float("nan"),
          "perplexity": math.exp(-total / tokens) if tokens else float("nan"),
          "tokens": tokens, "documents": len(documents), "bytes": nbytes}


def evaluate_sets(scorer, sets: dict[str, list[heldout.EvalDocument]], tokenizer,
                  stride: int | None = None) -> dict[str, dict[str, Any]]:
  """{set name: set_metrics} of every set."""
  return {name: set_metrics(docs, document_logprobs(scorer, docs, stride), tokenizer)
          for name, docs in sets.items()}


# ------------------------------------------------------------------------------- sets

def set_name(pattern: str) -> str:
  """A set's name: the path stem (val/c4_en.jsonl.gz -> c4_en; val/*.jsonl.gz -> val/*)."""
  base = os.path.basename(pattern.rstrip("/"))
  for s in _SUFFIXES:
    if base.endswith(s) and len(base) > len(s):
      base = base[:-len(s)]
      break
  if glob.has_magic(base):
    parent = os.path.basename(os.path.dirname(pattern.rstrip("/")))
    return f"{parent}/{base}" if parent else base
  return base


def resolve_files(specs: Sequence[str]) -> dict[str, list[str]]:
  """{set name: files} of --lm_files values (comma-separated globs, each may be NAME=GLOB).

  Raises FileNotFoundError / ValueError naming a glob that matches nothing or a repeated name.
  """
  out: dict[str, list[str]] = {}
  for spec in specs:
    for item in (s.strip() for s in spec.split(",")):
      if not item:
        continue
      name, pattern = item.split("=", 1) if "=" in item else (set_name(item), item)
      files = sorted(glob.glob(os.path.expanduser(pattern))) if glob.has_magic(pattern) \
          else [pattern]
      files = [f for f in files if not os.path.isdir(f)]
      if not files or not os.path.isfile(files[0]):
        raise FileNotFoundError(f"--lm_files {pattern}: no such file (a path or glob of "
                                ".jsonl[.gz|.zst], .parquet or token files)")
      if name in out:
        raise ValueError(f"--lm_files: two sets are named {name!r}; name them NAME=GLOB")
      out[name] = files
  return out


def _capped(docs: Iterable[heldout.EvalDocument], limit: int | None
            ) -> list[heldout.EvalDocument]:
  return list(docs if limit is None else itertools.islice(docs, limit))


def file_sets(files: dict[str, list[str]], tokenizer: str = "olmo", limit: int | None = None
              ) -> dict[str, list[heldout.EvalDocument]]:
  """The documents of each named set (at most `limit` per set); bad files raise ValueError."""
  return {name: _capped(heldout.eval_file_documents(paths, tokenizer=tokenizer), limit)
          for name, paths in files.items()}


def heldout_sets(run_config: dict, limit: int | None = None
                 ) -> dict[str, list[heldout.EvalDocument]]:
  """{"heldout/<source>": documents} of a run's held-out split (at most `limit` per source).

  run_config: the run's training config (its "data" section names the sources); raises
  ValueError when it holds no held-out split.
  """
  data = (run_config or {}).get("data")
  if data is None:
    raise ValueError("--lm_heldout: the checkpoint records no data config; it needs a "
                     "checkpoint of a training run")
  plan = data_plan.resolve(dict(data))
  if not plan.holds_out:
    why = ("the run trained on the synthetic token stream, which has no documents" if
           plan.synthetic else "the run's data.heldout_fraction is 0, so training read every "
           "document")
    raise ValueError(f"--lm_heldout: {why}; train with data.heldout_fraction > 0 (e.g. 0.01) "
                     "over data files or name validation files with --lm_files")
  out: dict[str, list[heldout.EvalDocument]] = {}
  for doc in heldout.heldout_documents(plan):
    got = out.setdefault(f"heldout/{doc.source}", [])
    if limit is None or len(got) < limit:
      got.append(doc)
  if not out:
    raise ValueError("--lm_heldout: the run's held-out split holds no documents; raise "
                     "data.heldout_fraction")
  return out


def format_table(results: dict[str, dict[str, Any]]) -> str:
  """set, bits_per_byte, perplexity, tokens, documents, bytes."""
  rows = [("lm set", "bits_per_byte", "perplexity", "tokens", "documents", "bytes")]
  for name, m in results.items():
    rows.append((name, f"{m['bits_per_byte']:.4f}", f"{m['perplexity']:.4f}", str(m["tokens"]),
                 str(m["documents"]), str(m["bytes"])))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, "-" * len(lines[0]))
  return "\n".join(lines)
