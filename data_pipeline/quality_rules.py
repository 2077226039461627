"""Rule-based quality steps: datatrove's Gopher and FineWeb filters, document by document.

  gopher_quality     Gopher rules: length, mean word length, symbol/word ratio, bullets,
                     ellipses, alphabetic words, stop words (datatrove GopherQualityFilter)
  gopher_repetition  Gopher repetition: duplicate lines/paragraphs, top and duplicated n-gram
                     character fractions (datatrove GopherRepetitionFilter)
  fineweb_quality    FineWeb/C4-style line rules: fraction of lines ending in punctuation,
                     short lines, duplicated lines, newlines per word (datatrove)

The filters split words with datatrove's default English word splitter (spaCy's rule-based
tokenizer), so their decisions are datatrove's. Consecutive rule steps of a chain are
evaluated in one pass (`link_rule_runs`); each step still reports its own drops.
"""

from __future__ import annotations

import atexit
import functools
import json
import multiprocessing

import numpy as np

from data_pipeline.curation_step import CurationError, Step

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
      return [r for part in rule_pool(workers).map(_rule_results, jobs) for r in part]
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
def rule_pool(workers: int):
  """A spawn pool of `workers` processes for per-document rules, reused across steps."""
  pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_import_rules)
  atexit.register(pool.terminate)
  return pool
