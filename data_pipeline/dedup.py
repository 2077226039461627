"""Deduplication steps: exact (normalised text) and near duplicates (MinHash LSH, confirmed by
the exact Jaccard of n-gram sets).

  exact_dedup        normalised-text hash (case and whitespace folded), first copy kept (hashlib)
  minhash_dedup      near duplicates: MinHash LSH over word n-grams (datasketch, banded for
                     recall), candidates confirmed by the exact Jaccard of their n-gram sets
                     >= threshold; the earliest document of each connected component is kept
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

from data_pipeline.curation_step import CurationError, Step


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
