"""Curation matches its reference methods: every near-duplicate pair at or above the threshold
is found, the rule steps decide exactly as datatrove's filters, subsampling fills its budget and
diversity sampling finds planted topics."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import curation, dedup, quality_rules, selection, tokenization
from data_pipeline import tokenizer as tokenizer_lib
from data_pipeline.corpus import Corpus
from data_pipeline.curation_step import CHAIN_VERSION

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _words(n, seed):
  """n distinct made-up words (so every word 5-gram of a document is its own)."""
  rng = np.random.default_rng(seed)
  letters = np.array(list("abcdefghiklmnoprstuvwz"))
  out = set()
  while len(out) < n:
    out.add("".join(rng.choice(letters, int(rng.integers(4, 9)))))
  return sorted(out)


POOL = _words(6000, 0)


def jaccard(a: str, b: str, ngram: int = 5) -> float:
  """Exact Jaccard of two documents' word n-gram sets, as minhash_dedup compares them."""
  x, y = dedup.shingles(a, ngram), dedup.shingles(b, ngram)
  inter = np.intersect1d(x, y).size
  return inter / (x.size + y.size - inter)


def edited(text: str, edits: int, rng, fresh) -> str:
  """text with `edits` words, at least 5 apart, replaced by words it does not contain."""
  words = text.split(" ")
  slots = rng.choice(np.arange(2, len(words) - 2, 6), edits, replace=False)
  for k in slots.tolist():
    words[k] = next(fresh)
  return " ".join(words)


def planted_pair(rng, fresh, lo: float, hi: float):
  """(document, copy) whose exact 5-gram Jaccard lies in [lo, hi]."""
  while True:
    base = " ".join(rng.choice(POOL, int(rng.integers(120, 400)), replace=False))
    for edits in rng.permutation(np.arange(1, 16)).tolist():
      copy = edited(base, edits, rng, fresh)
      if lo <= jaccard(base, copy) <= hi:
        return base, copy


def planted_corpus(seed=0):
  """30 pairs at Jaccard 0.80-0.90 and 30 at 0.70-0.77, shuffled: (texts, copy positions,
  Jaccards of the high pairs, Jaccards of the low pairs)."""
  rng = np.random.default_rng(seed)
  fresh = iter(f"zq{k}x" for k in range(10**6))
  high = [planted_pair(rng, fresh, 0.80, 0.90) for _ in range(30)]
  low = [planted_pair(rng, fresh, 0.70, 0.77) for _ in range(30)]
  # Each copy comes after its original; otherwise the order is random.
  slots = rng.permutation(120)
  texts = [None] * 120
  copies = []
  for n, (a, b) in enumerate(high + low):
    first, second = sorted(slots[2 * n:2 * n + 2].tolist())
    texts[first], texts[second] = a, b
    if n < 30:
      copies.append(second)
  return (texts, set(copies), [jaccard(a, b) for a, b in high],
          [jaccard(a, b) for a, b in low])


def test_every_pair_at_or_above_the_threshold_loses_its_copy_from_the_command_line(tmp_path):
  texts, copies, high, low = planted_corpus()
  assert 0.80 <= min(high) and max(high) <= 0.90 and min(high) < 0.82 and max(high) > 0.88
  assert 0.70 <= min(low) and max(low) <= 0.77
  raw = tmp_path / "docs.jsonl"
  raw.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
  out = tmp_path / "out"
  chain = '[{"step": "minhash_dedup", "threshold": 0.8}]'
  proc = subprocess.run([sys.executable, "-m", "data_pipeline.tokenize_files", "--inputs", str(raw),
                         "--output", str(out), "--chain", chain, "--workers", "1"],
                        cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  kept = [t for k, t in enumerate(texts) if k not in copies]
  tok = tokenizer_lib.load_tokenizer()
  want = np.concatenate([tok.encode(t, add_special_tokens=False).ids
                         + [tokenizer_lib.EOS_TOKEN_ID] for t in kept])
  np.testing.assert_array_equal(np.fromfile(out / "part-00000.npy", np.uint16), want)
  (row,) = json.loads((out / "index.json").read_text())["curation"]["steps"]
  assert row["documents_dropped"] == 30 and row["params"]["lsh"] == "recall"


def test_datasketch_balanced_banding_misses_pairs_the_recall_banding_finds():
  texts, copies, _, _ = planted_corpus()
  corpus = Corpus(["mem"], texts, [{} for _ in texts], np.zeros(len(texts), np.int64))
  dropped = {}
  for lsh in ("recall", "balanced"):
    step = dedup.MinHashDedup(threshold=0.8, lsh=lsh)
    keep, _ = step.apply(corpus, np.arange(len(texts)))
    dropped[lsh] = set(np.flatnonzero(~keep).tolist())
  assert dropped["recall"] == copies
  assert dropped["balanced"] < copies  # datasketch's equal-weight banding misses some
  assert dedup.lsh_bands(0.8, 128, "balanced") == (9, 13)


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.85, 0.9, 0.95])
def test_recall_banding_misses_a_pair_at_the_threshold_at_most_one_in_a_million(threshold):
  b, r = dedup.lsh_bands(threshold, 128)
  assert b * r <= 128 and b >= 2
  assert (1 - threshold ** r) ** b <= dedup.LSH_MISS
  # and it is the fewest-candidates banding that does: one more row per band would not
  assert (1 - threshold ** (r + 1)) ** (128 // (r + 1)) > dedup.LSH_MISS


def _chain_docs():
  """A ~ B (0.80-0.90), B ~ C (0.80-0.90), A !~ C (below 0.8)."""
  rng = np.random.default_rng(7)
  fresh = iter(f"zq{k}y" for k in range(10**6))
  a = " ".join(rng.choice(POOL, 300, replace=False))
  words = a.split(" ")
  b = " ".join(words[:150]) + " " + edited(" ".join(words[150:]), 4, rng, fresh)
  c = edited(" ".join(b.split(" ")[:150]), 4, rng, fresh) + " " + " ".join(b.split(" ")[150:])
  return a, b, c


def test_a_chain_of_near_duplicates_keeps_the_first_document_of_its_cluster():
  a, b, c = _chain_docs()
  assert jaccard(a, b) >= 0.8 and jaccard(b, c) >= 0.8 and jaccard(a, c) < 0.8
  other = " ".join(np.random.default_rng(8).choice(POOL, 200, replace=False))
  names = {a: "A", b: "B", c: "C", other: "X"}
  for order, want in (((a, b, c), "AX"), ((b, a, c), "BX"), ((c, b, a), "CX"),
                      ((a, c, b), "AX"), ((other, c, a, b), "XC")):
    docs = list(order) + ([other] if other not in order else [])
    corpus = Corpus(["mem"], docs, [{} for _ in docs], np.zeros(len(docs), np.int64))
    kept, rows = curation.run_chain([dedup.MinHashDedup(threshold=0.8)], corpus)
    assert "".join(names[docs[i]] for i in kept) == want, [names[d] for d in docs]
  # In the order A, C, B, C is dropped although only B (after it) is its near-duplicate.
  corpus = Corpus(["mem"], [a, c, b], [{}] * 3, np.zeros(3, np.int64))
  _, rows = curation.run_chain([dedup.MinHashDedup(threshold=0.8)], corpus)
  details = [d["detail"] for d in rows[0]["examples"]["dropped"]]
  assert details[0].startswith(f"Jaccard {jaccard(b, c):.3f} with mem#2; kept mem#0")


# ------------------------------------------------------------------------------------------
# The rule steps are datatrove's default filters, document by document.


def _prose(rng, n):
  stop = ["the", "of", "and", "to", "with", "that", "have", "be"]
  return " ".join(rng.choice(POOL[:300]) if k % 3 else rng.choice(stop) for k in range(n))


def varied_documents():
  """Documents where word splitting decides: decimals, URLs, contractions, code, bullets,
  ellipses, hashes, repeated lines, short lines, lists, no words at all."""
  rng = np.random.default_rng(3)
  decimals = " ".join(f"{x:.2f}" for x in rng.random(8) * 100)
  docs = [
      _prose(rng, 42) + " costs " + decimals + ".",  # 50 words only if 25.76 is one word
      _prose(rng, 44) + " see https://example.com/a/b?c=1&d=2 and www.site.org/x.html now.",
      "I don't think we can't, won't or shouldn't. " * 8 + _prose(rng, 20) + ".",
      "def f(x):\n  return x ** 2 + g(x, y=3)  # square\n" * 3 + _prose(rng, 60) + ".",
      "\n".join("- " + _prose(rng, 9) + "." for _ in range(12)),
      "\n".join("• " + _prose(rng, 9) for _ in range(6)) + "\n" + _prose(rng, 30) + ".",
      "\n".join(_prose(rng, 10) + "..." for _ in range(8)),
      " ".join(f"#{w} the {w}" for w in POOL[:30]) + ".",
      "\n".join([_prose(rng, 12) + "."] * 6),
      "\n\n".join([_prose(rng, 25) + "."] * 4),
      "\n".join(_prose(rng, 3) for _ in range(40)),
      _prose(rng, 80).replace(" ", "\n", 30) + ".",
      "The price rose 3.5% (e.g. from $25.76 to $26.66) i.e. a lot, Mr. Smith's firm said. "
      * 6,
      "Visit http://a.io, https://b.co/c and ftp://d.net/e.txt for the data. " * 7,
      "\n".join(f"See https://example.com/files/{w}/index.html." for w in POOL[:12]),
      "\n".join(f"Rates: {x:.3f}, {x / 2:.3f} and {x / 3:.3f}." for x in rng.random(10) * 9),
      " ".join(["supercalifragilistic"] * 30 + ["the", "and"]) + ".",
      "... ... ... !!! ??? ### ---",
      "   \n\n  ",
      "",
  ] + [_prose(rng, int(rng.integers(40, 120))) + "." + ("\n" + _prose(rng, 15) + ".") * k
       for k in range(6)]
  return docs


def _datatrove(step):
  from datatrove.pipeline.filters import (
      FineWebQualityFilter,
      GopherQualityFilter,
      GopherRepetitionFilter,
  )
  return {"gopher_quality": GopherQualityFilter, "gopher_repetition": GopherRepetitionFilter,
          "fineweb_quality": FineWebQualityFilter}[step]()  # defaults, default word splitter


def _datatrove_reason(filt, text, k):
  from datatrove.data import Document
  res = filt.filter(Document(text=text, id=str(k)))
  return None if res is True else res[1]


@pytest.mark.parametrize("step", ["gopher_quality", "gopher_repetition", "fineweb_quality"])
def test_rule_step_decisions_equal_datatroves_default_filter(step):
  docs = varied_documents()
  filt = _datatrove(step)
  want = [_datatrove_reason(filt, t, k) for k, t in enumerate(docs)]
  corpus = Corpus(["mem"], docs, [{} for _ in docs], np.zeros(len(docs), np.int64))
  keep, why = curation.STEPS[step]().apply(corpus, np.arange(len(docs)))
  got = [None] * len(docs)
  for j, (reason, _) in zip(np.flatnonzero(~keep).tolist(), why):
    got[j] = reason
  assert got == want
  assert 3 <= sum(r is None for r in want) <= len(docs) - 3  # both outcomes are exercised


def test_a_chain_of_rules_decides_each_document_as_datatroves_filters_in_turn():
  docs = varied_documents()
  steps = ["gopher_quality", "gopher_repetition", "fineweb_quality"]
  alive = list(range(len(docs)))
  want = []
  for step in steps:
    filt = _datatrove(step)
    reasons = {k: _datatrove_reason(filt, docs[k], k) for k in alive}
    want.append({k: r for k, r in reasons.items() if r is not None})
    alive = [k for k in alive if reasons[k] is None]
  corpus = Corpus(["mem"], docs, [{} for _ in docs], np.zeros(len(docs), np.int64))
  kept, rows = curation.run_chain(curation.parse_chain([{"step": s} for s in steps]), corpus)
  assert kept.tolist() == alive
  for row, dropped in zip(rows, want):
    counts = {}
    for r in dropped.values():
      counts[r] = counts.get(r, 0) + 1
    assert {r: v["documents"] for r, v in row["reasons"].items()} == counts


def test_the_word_splitter_is_datatroves_spacy_english_and_loads_offline():
  from datatrove.utils.word_tokenizers import SpaCyTokenizer, load_word_tokenizer
  tok = load_word_tokenizer("en")
  assert isinstance(tok, SpaCyTokenizer)
  assert tok.word_tokenize("It costs 25.76, see https://a.io/b. Don't.") == [
      "It", "costs", "25.76", ",", "see", "https://a.io/b", ".", "Do", "n't", "."]
  # spacy.blank: tokenizer rules shipped in the package, no trained pipeline
  assert tok.tokenizer.pipe_names == ["sentencizer"]


# ------------------------------------------------------------------------------------------
# Subsampling.


def test_a_token_budget_is_filled_skipping_documents_that_do_not_fit():
  rng = np.random.default_rng(0)
  sizes = np.concatenate([rng.integers(5, 60, 150), rng.integers(400, 900, 12)])
  docs = [f"doc {k}" for k in range(len(sizes))]
  for mode in ("uniform", "length_weighted"):
    for seed in range(5):
      corpus = Corpus(["mem"], docs, [{} for _ in docs], np.zeros(len(docs), np.int64))
      corpus.tokens[:] = sizes
      step = selection.Subsample(mode=mode, tokens=2000, seed=seed)
      alive = np.arange(len(docs))
      keep, _ = step.apply(corpus, alive)
      left = 2000 - int(sizes[keep].sum())
      assert left >= 0
      assert (sizes[~keep] > left).all()  # nothing left out would still fit
      # the draw went on past a document that did not fit
      taken = keep[step.priority(corpus, alive)]
      assert np.flatnonzero(~taken)[0] < np.flatnonzero(taken)[-1]


def topic_documents(n_topics=10, per=5, seed=0):
  rng = np.random.default_rng(seed)
  size = 40  # words per topic: documents of a topic share most of their words
  docs = [" ".join(rng.choice(POOL[t * size:(t + 1) * size], 30))
          for t in range(n_topics) for _ in range(per)]
  return docs, np.repeat(np.arange(n_topics), per)


def test_diversity_sampling_covers_every_planted_topic():
  docs, topic = topic_documents()
  corpus = Corpus(["mem"], docs, [{} for _ in docs], np.zeros(len(docs), np.int64))
  alive = np.arange(len(docs))
  missed_with_one_start = 0
  for seed in range(6):
    # one document per cluster: all 10 topics exactly when every cluster is one topic
    keep, _ = selection.Subsample(mode="diversity", fraction=0.2, clusters=10,
                                 seed=seed).apply(corpus, alive)
    assert sorted(topic[keep].tolist()) == list(range(10))
    keep, _ = selection.Subsample(mode="diversity", fraction=0.2, clusters=10, seed=seed,
                                 n_init=1).apply(corpus, alive)
    missed_with_one_start += len(set(topic[keep].tolist())) < 10
  assert missed_with_one_start >= 2  # a single k-means start merges planted topics


def test_files_curated_by_an_earlier_version_are_refused_not_reused(tmp_path):
  raw = tmp_path / "docs.jsonl"
  raw.write_text("".join(json.dumps({"text": " ".join(POOL[k:k + 60])}) + "\n"
                         for k in range(0, 600, 60)))
  out = tmp_path / "out"
  chain = [{"step": "minhash_dedup"}]
  index = tokenization.run([str(raw)], str(out), progress=False, chain=chain)
  assert index["chain_version"] == CHAIN_VERSION
  del index["chain_version"]  # as written before versions were recorded
  (out / "index.json").write_text(json.dumps(index))
  with pytest.raises(ValueError, match="curated by version 1 of the curation steps"):
    tokenization.run([str(raw)], str(out), progress=False, chain=chain)
  again = tokenization.run([str(raw)], str(out), progress=False, chain=chain, overwrite=True)
  assert again["chain_version"] == CHAIN_VERSION


def test_no_words_is_our_reason_only_where_datatrove_cannot_decide():
  docs = ["", "   \n ", "!!! ???", " ".join(["the cat and the dog"] * 20) + "."]
  corpus = Corpus(["mem"], docs, [{} for _ in docs], np.zeros(len(docs), np.int64))
  _, why = quality_rules.GopherQuality().apply(corpus, np.arange(len(docs)))
  assert [r for r, _ in why] == ["gopher_short_doc"] * 3  # datatrove's own reason
  from datatrove.data import Document
  from datatrove.pipeline.filters import GopherQualityFilter
  with pytest.raises(ZeroDivisionError):  # datatrove itself fails on these documents
    GopherQualityFilter(min_doc_words=None).filter(Document(text="", id="0"))
  keep, why = quality_rules.GopherQuality(min_doc_words=None).apply(corpus, np.arange(len(docs)))
  assert keep[3] and [r for r, _ in why][:2] == ["no_words", "no_words"]
