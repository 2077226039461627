"""Data curation: deterministic, composable steps that choose which documents a source keeps.

A chain is a list of steps, each `{"step": NAME, **params}`, applied in order to the documents of
a source (jsonl / parquet with a `text` field and optional metadata) when the source is
tokenised (`python -m data_pipeline.tokenize --chain ...` or `--recipe ...`), so training still
reads plain token files. Every step only keeps or drops whole documents (never rewrites text),
so token accounting per step is exact and the same inputs + chain + tokenizer always give the
same bytes.

Steps (and the library underneath each):
  exact_dedup        normalised-text hash (case and whitespace folded), first copy kept (hashlib)
  minhash_dedup      near duplicates: MinHash LSH over word n-grams (datasketch, banded for
                     recall), candidates confirmed by the exact Jaccard of their n-gram sets
                     >= threshold; the earliest document of each connected component is kept
  gopher_quality     Gopher rules: length, mean word length, symbol/word ratio, bullets,
                     ellipses, alphabetic words, stop words (datatrove GopherQualityFilter)
  gopher_repetition  Gopher repetition: duplicate lines/paragraphs, top and duplicated n-gram
                     character fractions (datatrove GopherRepetitionFilter)
  fineweb_quality    FineWeb/C4-style line rules: fraction of lines ending in punctuation,
                     short lines, duplicated lines, newlines per word (datatrove)
  top_p              keep the top `fraction` of documents by a score from a metadata field, a
                     Dolma-style attributes file, or a fastText classifier (fasttext); ties
                     go to the earlier document
  subsample          uniform or length-weighted sampling to a token budget (filled: a document
                     that does not fit is skipped) or fraction, or diversity sampling
                     round-robin over k-means clusters (several starts) of TF-IDF / hashed
                     n-gram features (scikit-learn)

The three rule steps are datatrove's filters with datatrove's default English word splitter
(spaCy's rule-based tokenizer), so their decisions are datatrove's, document by document.

User errors (unknown step or parameter, threshold out of range, missing score field, attributes
misaligned with the documents, a classifier that does not load) raise `CurationError` naming
the step and the fix, before any output is written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import zlib

import numpy as np

# Bumped whenever a step's decisions change for the same parameters (2: MinHash clusters and
# recall banding, datatrove's own word splitter, budget filling, k-means starts), so curated
# files made before are rebuilt, not reused.
CHAIN_VERSION = 2
EXAMPLES_PER_STEP = 3
SNIPPET_CHARS = 160


class CurationError(ValueError):
  """A user error in a curation chain or its inputs (the CLI prints it and exits 2)."""


# ------------------------------------------------------------------------------------------
# Documents.


class Corpus:
  """The documents of one source, in input order, with what the steps need.

  texts: list[str]; metas: list[dict] (every field but `text`); origins: list[str] ("file#k");
  file_index: int64[N] (which input file); tokens: int64[N] (tokens written per document,
  EOS included; filled by the tokenizer before the chain runs).
  """

  def __init__(self, files: list[str], texts: list[str], metas: list[dict],
               file_index: np.ndarray, base_dir: str = "."):
    self.files, self.texts, self.metas = list(files), texts, metas
    self.file_index = np.asarray(file_index, dtype=np.int64)
    self.base_dir = base_dir
    self.tokens = np.zeros(len(texts), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(np.bincount(self.file_index,
                                                        minlength=len(files)))])
    self.file_starts = starts.astype(np.int64)

  def __len__(self) -> int:
    return len(self.texts)

  def origin(self, i: int) -> str:
    """'path#k': document k (0-based) of its input file."""
    f = int(self.file_index[i])
    return f"{self.files[f]}#{i - int(self.file_starts[f])}"


def read_records(path: str, field: str | None = "text") -> list[dict]:
  """Every document of a jsonl[.gz|.zst] or parquet file as a dict (text + metadata); with
  field=None any JSON object is a record (Dolma attribute files).

  Raises ValueError naming the file (and line) on anything malformed, like sources.iter_documents.
  """
  from data_pipeline import sources as sources_lib
  if not os.path.isfile(path):
    raise FileNotFoundError(f"document file not found: {path}")
  if os.path.getsize(path) == 0:
    raise ValueError(f"document file is empty: {path}")
  out = []
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq  # deferred: heavy import
    try:
      rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for bad files
      raise ValueError(f"{path}: cannot read parquet ({e})") from e
    for k, row in enumerate(rows):
      if field is not None and not isinstance(row.get(field), str):
        raise ValueError(f"{path}: row {k}: expected a string {field!r} column")
      out.append(row)
  elif path.endswith(sources_lib.TEXT_SUFFIXES):
    out.extend(sources_lib.iter_json_lines(path, field))
  else:
    raise ValueError(f"{path}: unknown document format; expected one of "
                     f"{sources_lib.TEXT_SUFFIXES}")
  if not out:
    raise ValueError(f"document file has no documents: {path}")
  return out


def load_corpus(files: list[str], field: str = "text", base_dir: str = ".") -> Corpus:
  """All documents of `files` (in order) as a Corpus."""
  texts, metas, file_index = [], [], []
  for f, path in enumerate(files):
    for rec in read_records(path, field):
      texts.append(rec.pop(field))
      metas.append(rec)
      file_index.append(f)
  return Corpus(files, texts, metas, np.asarray(file_index, dtype=np.int64), base_dir)


# ------------------------------------------------------------------------------------------
# Parameters.


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_param(step: str, name: str, kind: str, v) -> None:
  """Raises CurationError unless v fits kind: frac [0,1], count int >= 0, pos int >= 1,
  num >= 0, unit (0,1], bool, str, strs; a trailing '?' allows None."""
  if kind.endswith("?"):
    if v is None:
      return
    kind = kind[:-1]
  ok = {
      "frac": lambda: _is_num(v) and 0 <= v <= 1,
      "unit": lambda: _is_num(v) and 0 < v <= 1,
      "num": lambda: _is_num(v) and v >= 0,
      "count": lambda: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
      "pos": lambda: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
      "bool": lambda: isinstance(v, bool),
      "str": lambda: isinstance(v, str),
      "strs": lambda: isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v),
      "ngram_fracs": lambda: isinstance(v, (list, tuple)) and all(
          isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], int)
          and p[0] >= 1 and _is_num(p[1]) and 0 <= p[1] <= 1 for p in v),
  }[kind]()
  if not ok:
    want = {"frac": "a number in [0, 1]", "unit": "a number in (0, 1]",
            "num": "a number >= 0", "count": "an integer >= 0", "pos": "an integer >= 1",
            "bool": "true or false", "str": "a string", "strs": "a list of strings",
            "ngram_fracs": "a list of [n >= 1, fraction in [0, 1]] pairs"}[kind]
    raise CurationError(f"curation step {step!r}: {name} must be {want}, got {v!r}")


def _jsonable(v):
  """Tuples -> lists, recursively, so that params hash the same however they were written."""
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, dict):
    return {k: _jsonable(x) for k, x in v.items()}
  return v


# ------------------------------------------------------------------------------------------
# Steps. Each has `name`, `PARAMS` {param: (kind, default)}, `check(corpus)` (cheap checks of
# the inputs, before tokenisation) and `apply(corpus, alive, workers)` -> (keep bool[len(alive)],
# [(reason, detail)] for each dropped document in order).


class Step:
  name = ""
  PARAMS: dict[str, tuple[str, object]] = {}

  def __init__(self, **params):
    unknown = sorted(set(params) - set(self.PARAMS))
    if unknown:
      raise CurationError(f"curation step {self.name!r}: unknown parameter(s) {unknown}; "
                          f"known: {sorted(self.PARAMS)}")
    self.params = {k: _jsonable(params.get(k, default))
                   for k, (_, default) in self.PARAMS.items()}
    for k, (kind, _) in self.PARAMS.items():
      _check_param(self.name, k, kind, self.params[k])
    self.validate()

  def validate(self) -> None:
    """Cross-parameter checks."""

  def spec(self) -> dict:
    """The step with every parameter (defaults filled): what the cache key hashes."""
    return {"step": self.name, **self.params}

  def check(self, corpus: Corpus) -> None:
    """Cheap checks against the inputs, before any tokenisation."""

  def apply(self, corpus: Corpus, alive: np.ndarray, workers: int = 1):
    raise NotImplementedError


_WORD_RE = re.compile(r"\w+", re.UNICODE)


def normalize_text(text: str) -> str:
  """Case and whitespace folded: what exact deduplication compares."""
  return " ".join(text.lower().split())


class ExactDedup(Step):
  name = "exact_dedup"
  PARAMS = {}

  def apply(self, corpus, alive, workers=1):
    first: dict[bytes, int] = {}
    keep = np.ones(len(alive), dtype=bool)
    why = []
    for j, i in enumerate(alive.tolist()):
      h = hashlib.blake2b(normalize_text(corpus.texts[i]).encode(), digest_size=16).digest()
      if h in first:
        keep[j] = False
        why.append(("exact_duplicate", f"same text as {corpus.origin(first[h])}"))
      else:
        first[h] = i
    return keep, why


def _identity(x):
  return x


_GRAM_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the n-gram hash


# Scripts written without spaces: each character is a word of its own (Han, Hiragana,
# Katakana incl. the half-width forms, Hangul syllables).
_CJK = ("\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
        "\uff66-\uff9f")
_UNIT_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+", re.UNICODE)


def shingle_units(text: str, ngram: int) -> list[str]:
  """The units a document's shingles are n-grams of (lowercased): its words, where a Chinese,
  Japanese or Korean character counts as one word; when that gives fewer than `ngram` words
  (a text in another script without spaces, e.g. Thai), its characters (whitespace dropped)."""
  text = text.lower()
  words = _UNIT_RE.findall(text)
  if len(words) >= ngram or not words:
    return words
  chars = [c for c in text if not c.isspace()]
  return chars if len(chars) > len(words) else words


def shingles(text: str, ngram: int) -> np.ndarray:
  """Sorted unique 32-bit hashes of the n-grams of `shingle_units(text)`: uint32[k].

  Each unit is hashed once (crc32); an n-gram's hash is a polynomial of its units' hashes mod
  2^64, folded to 32 bits (vectorised: no string per n-gram). A text shorter than `ngram` units
  is one shingle; a text without words has none.
  """
  words = shingle_units(text, ngram)
  if not words:
    return np.zeros(0, dtype=np.uint32)
  w = np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint64, count=len(words))
  n = min(ngram, len(words))
  m = len(words) - n + 1
  h = np.zeros(m, dtype=np.uint64)
  for j in range(n):  # Horner: h = sum_j w[k + j] * MULT^(n - 1 - j), wrapping mod 2^64
    h = h * _GRAM_MULT + w[j:j + m]
  return np.unique(((h >> np.uint64(32)) ^ h).astype(np.uint32))


LSH_MISS = 1e-6  # recall tuning: the most a pair exactly at the threshold may be missed
LSH_TUNINGS = ("recall", "balanced")


def lsh_bands(threshold: float, num_perm: int, tuning: str = "recall") -> tuple[int, int]:
  """(bands, rows per band) of the MinHash LSH index.

  recall: the most rows per band (fewest false candidates) for which a pair at exactly the
  threshold is a candidate with probability >= 1 - LSH_MISS (1 - (1 - t^r)^b); balanced:
  datasketch's own choice (equal weights on false positives and false negatives).
  """
  if tuning == "balanced":
    from datasketch import MinHashLSH  # deferred: only this step needs it
    try:
      index = MinHashLSH(threshold=threshold, num_perm=num_perm)
    except ValueError as e:  # datasketch needs at least 2 bands
      raise CurationError(f"curation step 'minhash_dedup': lsh 'balanced' cannot index "
                          f"threshold {threshold} with {num_perm} permutations ({e}); "
                          "use lsh 'recall'") from e
    return index.b, index.r
  best = (num_perm, 1)
  for r in range(1, num_perm // 2 + 1):  # datasketch needs at least 2 bands
    b = num_perm // r
    if (1.0 - threshold ** r) ** b <= LSH_MISS:
      best = (b, r)
  return best


class _Components:
  """Union-find over document positions whose root is always the earliest member."""

  def __init__(self, n: int):
    self.parent = np.arange(n)

  def find(self, i: int) -> int:
    root = i
    while self.parent[root] != root:
      root = self.parent[root]
    while self.parent[i] != root:  # path compression
      self.parent[i], i = root, self.parent[i]
    return int(root)

  def union(self, a: int, b: int) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra != rb:
      self.parent[max(ra, rb)] = min(ra, rb)


class MinHashDedup(Step):
  name = "minhash_dedup"
  PARAMS = {"threshold": ("unit", 0.8), "ngram": ("pos", 5), "num_perm": ("pos", 128),
            "seed": ("count", 1), "lsh": ("str", "recall")}

  def validate(self):
    if self.params["num_perm"] < 2:
      raise CurationError(f"curation step {self.name!r}: num_perm must be >= 2")
    if self.params["lsh"] not in LSH_TUNINGS:
      raise CurationError(f"curation step {self.name!r}: lsh must be one of {LSH_TUNINGS}, "
                          f"got {self.params['lsh']!r}")
    if self.params["lsh"] == "balanced":
      lsh_bands(self.params["threshold"], self.params["num_perm"], "balanced")

  def apply(self, corpus, alive, workers=1):
    """Drops every document but the earliest of each connected component of near-duplicates.

    Two documents are linked when the exact Jaccard of their n-gram sets is >= threshold
    (LSH only proposes candidates); a chain A~B~C is one component even when A~C is below
    the threshold, so which documents survive depends on the set, not on the order of pairs.
    """
    p = self.params
    comp = _Components(len(alive))
    edge: dict[int, tuple[int, float]] = {}  # position -> (first linked position, Jaccard)
    for j, k, jac in self._links(corpus, alive, comp):
      comp.union(j, k)
      edge.setdefault(j, (k, jac))
      edge.setdefault(k, (j, jac))
    roots = np.array([comp.find(j) for j in range(len(alive))], dtype=np.int64)
    keep = roots == np.arange(len(alive))
    why = []
    for j in np.flatnonzero(~keep).tolist():
      k, jac = edge[j]
      why.append(("near_duplicate", f"Jaccard {jac:.3f} with {corpus.origin(int(alive[k]))}; "
                  f"kept {corpus.origin(int(alive[roots[j]]))} (threshold {p['threshold']})"))
    return keep, why

  def _links(self, corpus, alive, comp):
    """Yields (earlier position, later position, Jaccard) for confirmed near-duplicate pairs.

    The caller joins each pair before the next is looked for, so a candidate already in the
    document's component is skipped unconfirmed (it would change nothing): a cluster of n
    copies costs about n confirmations, not n^2 / 2.
    """
    from datasketch import MinHash, MinHashLSH  # deferred: only this step needs it
    p = self.params
    lsh = MinHashLSH(num_perm=p["num_perm"],
                     params=lsh_bands(p["threshold"], p["num_perm"], p["lsh"]))
    proto = MinHash(num_perm=p["num_perm"], seed=p["seed"], hashfunc=_identity)
    sets: dict[int, np.ndarray] = {}
    for j, i in enumerate(alive.tolist()):
      sh = shingles(corpus.texts[i], p["ngram"])
      if not sh.size:
        continue  # no words: nothing to compare
      m = MinHash(num_perm=p["num_perm"], seed=p["seed"], hashfunc=_identity,
                  permutations=proto.permutations, scheme=proto.scheme)
      m.update_batch(sh.tolist())
      for c in sorted(lsh.query(m)):
        if comp.find(c) == comp.find(j):
          continue
        other = sets[c]
        inter = np.intersect1d(sh, other, assume_unique=True).size
        jac = inter / (sh.size + other.size - inter)
        if jac >= p["threshold"]:
          yield c, j, jac
      lsh.insert(j, m, check_duplication=False)
      sets[j] = sh


# Rule parameters: (kind, default). Defaults are datatrove's (the papers' thresholds).
_GOPHER_QUALITY = {
    "min_doc_words": ("count?", 50), "max_doc_words": ("count?", 100_000),
    "min_avg_word_length": ("num?", 3), "max_avg_word_length": ("num?", 10),
    "max_symbol_word_ratio": ("frac?", 0.1), "max_bullet_lines_ratio": ("frac?", 0.9),
    "max_ellipsis_lines_ratio": ("frac?", 0.3), "max_non_alpha_words_ratio": ("frac?", 0.8),
    "min_stop_words": ("count?", 2),
    "stop_words": ("strs?", None),
}
_GOPHER_REPETITION = {
    "dup_line_frac": ("frac?", 0.3), "dup_para_frac": ("frac?", 0.3),
    "dup_line_char_frac": ("frac?", 0.2), "dup_para_char_frac": ("frac?", 0.2),
    "top_n_grams": ("ngram_fracs", [[2, 0.2], [3, 0.18], [4, 0.16]]),
    "dup_n_grams": ("ngram_fracs", [[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11],
                                    [10, 0.10]]),
}
_FINEWEB_QUALITY = {
    "line_punct_thr": ("frac", 0.12), "line_punct_exclude_zero": ("bool", False),
    "stop_chars": ("strs?", None), "short_line_thr": ("frac", 0.67),
    "short_line_length": ("count", 30), "char_duplicates_ratio": ("frac", 0.01),
    "new_line_ratio": ("num", 0.3),
}


@functools.lru_cache(maxsize=16)
def _datatrove_filter(step: str, params_json: str):
  """The datatrove filter object of a rule step (cached per process).

  No `language` is passed: each filter splits words with datatrove's default for English
  (its own spaCy English tokenizer, `spacy.blank("en")`: rules only, no model to download).
  """
  from datatrove.pipeline.filters import (  # deferred: heavy import
      FineWebQualityFilter,
      GopherQualityFilter,
      GopherRepetitionFilter,
  )
  params = json.loads(params_json)
  if step == "gopher_quality":
    return GopherQualityFilter(**params)
  if step == "gopher_repetition":
    params = {k: (tuple(tuple(x) for x in v) if k.endswith("n_grams") else v)
              for k, v in params.items()}
    return GopherRepetitionFilter(**params)
  if params["stop_chars"] is not None:
    params["stop_chars"] = tuple(params["stop_chars"])
  else:
    del params["stop_chars"]
  return FineWebQualityFilter(**params)


def _rule_reason(step: str, filt, doc) -> str | None:
  """datatrove's drop reason of one document under one rule (None: kept)."""
  try:
    res = filt.filter(doc)
  except ZeroDivisionError:
    # Ours: datatrove's ratios divide by the word count and raise on a document without
    # words once its length guards are switched off.
    return "no_words"
  if res is True:
    return None
  return res[1] if isinstance(res, tuple) and len(res) > 1 and res[1] else step


def _rule_results(job) -> list[list[str | None]]:
  """For each text, its result under each rule in turn up to the first drop (reason, or None
  to keep); runs in workers.

  The rules of one text run back to back on the same string, so datatrove's own cache of the
  last word splits serves every rule after the first: each document is split once.
  """
  rules, texts = job
  from datatrove.data import Document
  filters = [_datatrove_filter(step, params_json) for step, params_json in rules]
  out = []
  for k, text in enumerate(texts):
    doc, reasons = Document(text=text, id=str(k)), []
    for (step, _), filt in zip(rules, filters):
      reasons.append(_rule_reason(step, filt, doc))
      if reasons[-1] is not None:
        break
    out.append(reasons)
  return out


class _Rules(Step):
  """A datatrove rule. Consecutive rule steps of a chain (run_chain links them through
  `_next_rules`) are evaluated in one pass over the documents; each step still reports its
  own drops."""

  _next_rules: tuple = ()

  def apply(self, corpus, alive, workers=1):
    given = self.__dict__.pop("_given", None)  # results the first rule of the run computed
    if given is not None:
      results = [given[i] for i in alive.tolist()]
    else:
      rules = [self, *self._next_rules]
      per_doc = self._evaluate(rules, [corpus.texts[i] for i in alive.tolist()], workers)
      for n, step in enumerate(rules[1:], 1):
        step._given = {i: r[n] for i, r in zip(alive.tolist(), per_doc) if len(r) > n}
      results = [r[0] for r in per_doc]
    keep = np.array([r is None for r in results], dtype=bool)
    return keep, [(r, r) for r in results if r is not None]

  @staticmethod
  def _evaluate(rules, texts, workers) -> list[list[str | None]]:
    specs = [(s.name, json.dumps(s.params, sort_keys=True)) for s in rules]
    if workers > 1 and len(texts) > 64:
      chunk = -(-len(texts) // (workers * 4))
      jobs = [(specs, texts[k:k + chunk]) for k in range(0, len(texts), chunk)]
      return [r for part in _pool(workers).map(_rule_results, jobs) for r in part]
    return _rule_results((specs, texts))


def link_rule_runs(steps: list[Step]) -> None:
  """Lets each rule step evaluate the rule steps right after it in the same pass."""
  for k, step in enumerate(steps):
    if isinstance(step, _Rules):
      step.__dict__.pop("_given", None)
      after = []
      for nxt in steps[k + 1:]:
        if not isinstance(nxt, _Rules):
          break
        after.append(nxt)
      step._next_rules = tuple(after)


class GopherQuality(_Rules):
  name = "gopher_quality"
  PARAMS = _GOPHER_QUALITY

  def validate(self):
    p = self.params
    for lo, hi in (("min_doc_words", "max_doc_words"),
                   ("min_avg_word_length", "max_avg_word_length")):
      if p[lo] is not None and p[hi] is not None and p[lo] > p[hi]:
        raise CurationError(f"curation step {self.name!r}: {lo} {p[lo]} > {hi} {p[hi]}")


class GopherRepetition(_Rules):
  name = "gopher_repetition"
  PARAMS = _GOPHER_REPETITION


class FineWebQuality(_Rules):
  name = "fineweb_quality"
  PARAMS = _FINEWEB_QUALITY


def _import_rules() -> None:
  import datatrove.pipeline.filters  # noqa: F401  (workers pay the import once, at start)


@functools.lru_cache(maxsize=1)
def _pool(workers: int):
  """A spawn pool of `workers` processes for per-document rules, reused across steps."""
  import atexit
  import multiprocessing
  pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_import_rules)
  atexit.register(pool.terminate)
  return pool


def load_fasttext(path: str):
  """A fastText model; raises CurationError naming the file when it does not load."""
  import fasttext  # deferred: only for classifier scores
  if not os.path.isfile(path):
    raise CurationError(f"curation step 'top_p': fastText classifier not found: {path}")
  fasttext.FastText.eprint = lambda *a, **k: None  # the load_model notice is not a problem
  try:
    return fasttext.load_model(path)
  except Exception as e:  # fastText raises ValueError/RuntimeError on a bad file
    raise CurationError(f"curation step 'top_p': fastText classifier {path} does not load "
                        f"({e}); give a model saved by fasttext's save_model") from e


def fasttext_scores(model, texts: list[str], label: str) -> np.ndarray:
  """P(label | text) of a fastText classifier for each text: float64[N].

  fastText reads one line per example, so newlines become spaces (as its CLI input would be).
  """
  labels, probs = model.predict([t.replace("\n", " ") for t in texts], k=-1)
  out = np.zeros(len(texts), dtype=np.float64)
  for k, (ls, ps) in enumerate(zip(labels, probs)):
    for lab, pr in zip(ls, ps):
      if lab == label:
        out[k] = float(pr)
        break
  return out


def _resolve(path: str, base_dir: str) -> str:
  return path if os.path.isabs(path) else os.path.join(base_dir, path)


class TopP(Step):
  name = "top_p"
  PARAMS = {"fraction": ("unit", None), "field": ("str?", None), "attributes": ("str?", None),
            "attribute": ("str?", None), "fasttext": ("str?", None),
            "label": ("str", "__label__hq")}

  def validate(self):
    p = self.params
    if p["fraction"] is None:
      raise CurationError("curation step 'top_p': give fraction, in (0, 1] (0.1 = top 10%)")
    given = [k for k in ("field", "attributes", "fasttext") if p[k] is not None]
    if len(given) != 1:
      raise CurationError("curation step 'top_p': give exactly one score source: field "
                          "(a metadata field), attributes (Dolma attribute files, with "
                          f"attribute) or fasttext (a classifier .bin); got {given or 'none'}")
    if p["attributes"] is not None and p["attribute"] is None:
      raise CurationError("curation step 'top_p': attributes needs attribute (the name of "
                          "the score inside each line's 'attributes')")
    self._scores = None

  def check(self, corpus):
    p = self.params
    if p["field"] is not None:
      bad = [i for i, m in enumerate(corpus.metas) if not _is_num(m.get(p["field"]))]
      if bad:
        raise CurationError(
            f"curation step 'top_p': score field {p['field']!r} is missing or not a finite "
            f"number in {len(bad)} of {len(corpus)} documents (first: {corpus.origin(bad[0])})")
      self._scores = np.array([float(m[p["field"]]) for m in corpus.metas])
    elif p["attributes"] is not None:
      self._scores = self._attribute_scores(corpus)
    else:
      model = load_fasttext(_resolve(p["fasttext"], corpus.base_dir))
      if p["label"] not in model.get_labels():
        raise CurationError(f"curation step 'top_p': label {p['label']!r} is not one of the "
                            f"classifier's labels {model.get_labels()}")
      self._model = model

  def _attribute_scores(self, corpus) -> np.ndarray:
    import glob
    p = self.params
    pattern = _resolve(p["attributes"], corpus.base_dir)
    files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    files = [f for f in files if os.path.isfile(f)]
    if len(files) != len(corpus.files):
      raise CurationError(f"curation step 'top_p': attributes {p['attributes']!r} gives "
                          f"{len(files)} file(s) for {len(corpus.files)} document file(s); "
                          "give one attributes file per document file, in the same order")
    scores = []
    for f, path in enumerate(files):
      recs = read_records(path, field=None)
      n_docs = int(corpus.file_starts[f + 1] - corpus.file_starts[f])
      if len(recs) != n_docs:
        raise CurationError(f"curation step 'top_p': attributes file {path} has {len(recs)} "
                            f"lines but {corpus.files[f]} has {n_docs} documents; they must "
                            "align line by line")
      for k, rec in enumerate(recs):
        i = int(corpus.file_starts[f]) + k
        doc_id = corpus.metas[i].get("id")
        if doc_id is not None and rec.get("id") is not None and rec["id"] != doc_id:
          raise CurationError(f"curation step 'top_p': {path} line {k + 1} has id "
                              f"{rec['id']!r} but {corpus.origin(i)} has id {doc_id!r}")
        value = (rec.get("attributes") or {}).get(p["attribute"])
        # Dolma attributes are span lists [[start, end, score], ...]; a document-level score
        # is the one span over the document (or a bare number).
        if isinstance(value, list) and value and isinstance(value[0], list) and len(value[0]) == 3:
          value = value[0][2]
        if not _is_num(value):
          raise CurationError(f"curation step 'top_p': {path} line {k + 1} has no numeric "
                              f"attribute {p['attribute']!r}")
        scores.append(float(value))
    return np.array(scores, dtype=np.float64)

  def apply(self, corpus, alive, workers=1):
    p = self.params
    if p["fasttext"] is not None:
      scores = fasttext_scores(self._model, [corpus.texts[i] for i in alive.tolist()], p["label"])
    else:
      scores = self._scores[alive]
    n_keep = top_count(len(alive), p["fraction"])
    order = np.argsort(-scores, kind="stable")  # stable: ties go to the earlier document
    keep = np.zeros(len(alive), dtype=bool)
    keep[order[:n_keep]] = True
    cutoff = scores[order[n_keep - 1]] if n_keep else math.inf
    why = [("below_top_p", f"score {scores[j]:.6g} (kept >= {cutoff:.6g})")
           for j in np.flatnonzero(~keep).tolist()]
    return keep, why


def top_count(n: int, fraction: float) -> int:
  """Documents kept by top-p of n: ceil(fraction * n), at least 1 when n > 0."""
  return min(n, max(1 if n else 0, math.ceil(fraction * n - 1e-9)))


def fill_budget(tokens: np.ndarray, budget: int, order: np.ndarray) -> np.ndarray:
  """The positions `order` keeps when documents are taken in that order while they fit:
  one that would pass the budget is skipped and drawing goes on. int64[K].

  tokens: int64[N], the documents' tokens in draw order; the kept tokens sum to <= budget
  and no skipped document fits in what is left.
  """
  taken = np.zeros(len(tokens), dtype=bool)
  left = int(budget)
  smallest_after = np.minimum.accumulate(tokens[::-1])[::-1] if len(tokens) else tokens
  for k, t in enumerate(tokens.tolist()):
    if smallest_after[k] > left:
      break  # nothing later fits
    if t <= left:
      taken[k] = True
      left -= t
  return order[taken]


class Subsample(Step):
  name = "subsample"
  PARAMS = {"mode": ("str", "uniform"), "tokens": ("count?", None), "fraction": ("unit?", None),
            "seed": ("count", 0), "alpha": ("num", 1.0), "features": ("str", "tfidf"),
            "clusters": ("pos", 8), "ngram": ("pos", 1), "max_features": ("pos", 1 << 16),
            "n_init": ("pos", 10)}
  MODES = ("uniform", "length_weighted", "diversity")
  FEATURES = ("tfidf", "hashed")

  def validate(self):
    p = self.params
    if p["mode"] not in self.MODES:
      raise CurationError(f"curation step 'subsample': mode must be one of {self.MODES}, "
                          f"got {p['mode']!r}")
    if p["features"] not in self.FEATURES:
      raise CurationError(f"curation step 'subsample': features must be one of "
                          f"{self.FEATURES}, got {p['features']!r}")
    if (p["tokens"] is None) == (p["fraction"] is None):
      raise CurationError("curation step 'subsample': give exactly one budget: tokens (a "
                          "token budget) or fraction (of the documents)")

  def priority(self, corpus, alive) -> np.ndarray:
    """Positions into `alive` in the order they are taken."""
    p = self.params
    rng = np.random.default_rng([p["seed"], CHAIN_VERSION])
    if p["mode"] == "uniform":
      return rng.permutation(len(alive))
    if p["mode"] == "length_weighted":
      # Efraimidis-Spirakis: sampling without replacement with P ~ tokens^alpha.
      w = corpus.tokens[alive].astype(np.float64) ** p["alpha"]
      keys = np.log(rng.random(len(alive))) / np.maximum(w, 1e-12)
      return np.argsort(-keys, kind="stable")
    labels = self.clusters(corpus, alive)
    # Round-robin across clusters (each in a seeded order): every cluster is drawn from before
    # any is drawn twice.
    perm = rng.permutation(len(alive))
    by_cluster = [perm[labels[perm] == c] for c in range(int(labels.max()) + 1)]
    rank = np.empty(len(alive), dtype=np.int64)
    for members in by_cluster:
      rank[members] = np.arange(len(members))
    return np.lexsort((labels, rank))

  def clusters(self, corpus, alive) -> np.ndarray:
    """k-means cluster of each document over TF-IDF or hashed n-gram features: int[len(alive)]."""
    from sklearn.cluster import KMeans  # deferred: heavy import
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer
    p = self.params
    texts = [corpus.texts[i] for i in alive.tolist()]
    if p["features"] == "tfidf":
      vec = TfidfVectorizer(ngram_range=(1, p["ngram"]), max_features=p["max_features"],
                            dtype=np.float64)
    else:
      vec = HashingVectorizer(ngram_range=(1, p["ngram"]), n_features=p["max_features"],
                              alternate_sign=False, norm="l2")
    try:
      x = vec.fit_transform(texts)
    except ValueError as e:  # e.g. an empty vocabulary
      raise CurationError(f"curation step 'subsample': cannot build {p['features']} features "
                          f"({e})") from e
    k = min(p["clusters"], len(texts))
    # Several k-means++ starts, the lowest inertia kept: one start can merge planted topics.
    km = KMeans(n_clusters=k, n_init=p["n_init"], random_state=p["seed"], algorithm="lloyd")
    return km.fit_predict(x).astype(np.int64)

  def apply(self, corpus, alive, workers=1):
    p = self.params
    order = self.priority(corpus, alive)
    keep = np.zeros(len(alive), dtype=bool)
    if p["tokens"] is not None:
      keep[fill_budget(corpus.tokens[alive][order], p["tokens"], order)] = True
    else:
      keep[order[:top_count(len(alive), p["fraction"])]] = True
    why = [("not_sampled", f"{p['mode']} sample") for _ in range(int((~keep).sum()))]
    return keep, why


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
    defaults = {k: _jsonable(d) for k, (_, d) in known.items()}
    args = ",".join(f"{k}={v}" for k, v in sorted(item.items())
                    if k not in defaults or _jsonable(v) != defaults[k])
    parts.append(f"{name}({args})" if args else name)
  return " > ".join(parts)


def digest(obj) -> str:
  """SHA-256 of a JSON value (sorted keys): the cache keys."""
  return hashlib.sha256(json.dumps(_jsonable(obj), sort_keys=True).encode()).hexdigest()


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
  import time
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
  import ml_collections
  key = digest({"inputs": inputs, "chain": chain, "tokenizer": tokenizer, "field": field,
                "version": CHAIN_VERSION})[:16]
  c = ml_collections.ConfigDict()
  c.kind, c.paths, c.weight = "tokens", f"{CURATED_DIR}/{key}/*.npy", float(weight)
  c.curation = ml_collections.ConfigDict({
      "inputs": inputs, "chain": json.dumps(_jsonable(chain), sort_keys=True),
      "tokenizer": tokenizer, "field": field, "output": f"{CURATED_DIR}/{key}",
      "description": describe_chain(chain)})
  return c
