"""Documents/s of each curation step next to plain tokenization of the same text, in one run.

  python benchmarks/bench_curation.py [--mb 50] [--workers 2]

The text (~`--mb` MB) is made deterministically from the embedded corpus's prose (Python's help
topics and docstrings): each document is a base document with its paragraphs reordered and a
few words replaced, and 5% exact copies and 5% near copies (1-8 words replaced) are planted.
Tokenization uses the OLMo tokenizer with `--workers` threads; per-document rules use
`--workers` processes; exact and MinHash dedup are one process (they need the whole set). Each
cost is given relative to tokenization (ratio = step seconds / tokenization seconds), and so is
the chain exact dedup > MinHash > rules, run as the tokenizer runs it. Target: that chain's
ratio <= 1.0.

MinHash is run twice, with the LSH banded for recall (the default) and with datasketch's own
balanced banding: seconds, and recall = the share of planted near-copy pairs at exact Jaccard
>= 0.8 that end in one cluster (at most one of the two kept). The word splitter of the rules
(datatrove's spaCy English tokenizer) is timed alone next to a regex split of the same text.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from data_pipeline import curation, dedup, quality_rules, sample_corpus, tokenization
from data_pipeline import tokenizer as tokenizer_lib
from data_pipeline.corpus import Corpus


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def make_corpus(mb: float, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
  """~mb MB of varied prose documents with planted exact and near duplicates: (texts,
  [(original, near copy)] positions)."""
  base = sample_corpus.prose_documents(sample_corpus.stdlib_modules())
  rng = np.random.default_rng(seed)
  vocab = sorted({w for d in base[:200] for w in d.split() if w.isalpha() and len(w) > 3})
  docs, pairs, size, target = [], [], 0, int(mb * 1e6)
  while size < target:
    r = rng.random()
    if docs and r < 0.05:
      doc = docs[int(rng.integers(len(docs)))]  # exact copy
    elif docs and r < 0.10:
      src = int(rng.integers(len(docs)))
      words = docs[src].split(" ")
      for k in rng.integers(0, len(words), size=int(rng.integers(1, 9))):
        words[k] = vocab[int(rng.integers(len(vocab)))]
      doc = " ".join(words)  # near copy: 1-8 words changed
      pairs.append((src, len(docs)))
    else:
      paras = base[int(rng.integers(len(base)))].split("\n\n")
      paras = [paras[k] for k in rng.permutation(len(paras))]
      words = "\n\n".join(paras).split(" ")
      for k in rng.integers(0, len(words), size=max(1, len(words) // 20)):
        words[k] = vocab[int(rng.integers(len(vocab)))]
      doc = " ".join(words)
    docs.append(doc)
    size += len(doc.encode())
  return docs, pairs


def minhash_recall(corpus, pairs, lsh: str, threshold: float = 0.8):
  """(seconds, documents dropped, recall over planted pairs at exact Jaccard >= threshold,
  number of such pairs) of minhash_dedup alone."""
  step = dedup.MinHashDedup(threshold=threshold, lsh=lsh)
  t0 = time.time()
  keep, _ = step.apply(corpus, np.arange(len(corpus)))
  sec = time.time() - t0
  sets = {}

  def jac(i, j):
    for k in (i, j):
      if k not in sets:
        sets[k] = dedup.shingles(corpus.texts[k], step.params["ngram"])
    inter = np.intersect1d(sets[i], sets[j]).size
    return inter / (sets[i].size + sets[j].size - inter)

  near = [(i, j) for i, j in pairs if jac(i, j) >= threshold]
  found = sum(not (keep[i] and keep[j]) for i, j in near)
  return sec, int((~keep).sum()), found / max(len(near), 1), len(near)


def split_seconds(texts: list[str]) -> tuple[float, float]:
  """Seconds to split every text into words: datatrove's default English splitter (spaCy),
  and a regex of word and punctuation runs; one process."""
  import re

  from datatrove.utils.word_tokenizers import load_word_tokenizer
  spacy_en = load_word_tokenizer("en")
  spacy_en.word_tokenize("warm up")
  t0 = time.time()
  for t in texts:
    spacy_en.word_tokenize(t)
  t_spacy = time.time() - t0
  runs = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]+")
  t0 = time.time()
  for t in texts:
    runs.findall(t)
  return t_spacy, time.time() - t0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--mb", type=float, default=50.0, help="megabytes of text")
  p.add_argument("--workers", type=int, default=2, help="threads/processes (cores)")
  args = p.parse_args(argv)
  os.environ["RAYON_NUM_THREADS"] = str(args.workers)  # before the tokenizer starts its pool

  t0 = time.time()
  texts, pairs = make_corpus(args.mb)
  mb = sum(len(t.encode()) for t in texts) / 1e6
  print(f"CPU: {cpu_model()} ({os.cpu_count()} visible cores, {args.workers} used)")
  print(f"text: {len(texts)} documents, {mb:.1f} MB (made in {time.time() - t0:.1f}s)")
  tok = tokenizer_lib.load_tokenizer("olmo")
  tok.encode_batch(texts[:64], add_special_tokens=False)  # warm the thread pool
  t0 = time.time()
  ids = tokenization.encode_texts(tok, texts, "uint16")
  t_tok = time.time() - t0
  corpus = Corpus(["bench"], texts, [{"score": float(k % 997)} for k in
                                              range(len(texts))],
                           np.zeros(len(texts), dtype=np.int64))
  corpus.tokens = np.array([a.size for a in ids], dtype=np.int64)
  rows = [("tokenize (OLMo BPE)", t_tok, len(texts), len(texts))]
  rows += time_chains(curation, corpus, args.workers)
  print_rows(rows, t_tok)
  print_minhash_and_splitting(corpus, pairs, t_tok)
  return 0


def time_chains(curation, corpus, workers: int) -> list[tuple]:
  """(name, seconds, documents in, kept) of each curation step alone, then of two chains."""
  n, rows = len(corpus.texts), []
  budget = int(corpus.tokens.sum() // 2)
  single = [
      ("exact_dedup", [{"step": "exact_dedup"}]),
      ("minhash_dedup", [{"step": "minhash_dedup"}]),
      ("gopher_quality", [{"step": "gopher_quality"}]),
      ("gopher_repetition", [{"step": "gopher_repetition"}]),
      ("fineweb_quality", [{"step": "fineweb_quality"}]),
      ("top_p (field)", [{"step": "top_p", "fraction": 0.1, "field": "score"}]),
      ("subsample uniform", [{"step": "subsample", "mode": "uniform", "tokens": budget}]),
      ("subsample length_weighted", [{"step": "subsample", "mode": "length_weighted",
                                      "tokens": budget}]),
      ("subsample diversity (hashed)", [{"step": "subsample", "mode": "diversity",
                                         "tokens": budget, "features": "hashed",
                                         "clusters": 16}]),
  ]
  rules = [{"step": "gopher_quality"}, {"step": "gopher_repetition"},
           {"step": "fineweb_quality"}]
  chain = [{"step": "exact_dedup"}, {"step": "minhash_dedup"}] + rules
  balanced = [{"step": "exact_dedup"}, {"step": "minhash_dedup", "lsh": "balanced"}] + rules
  if workers > 1:  # start the rule workers outside the timings (once per tokenize run)
    quality_rules.rule_pool(workers).map(abs, range(workers * 4))
  chains = [("CHAIN minhash lsh=balanced", balanced), ("CHAIN exact > minhash > rules", chain)]
  for name, ch in single + chains:
    steps = curation.parse_chain(ch)
    for s in steps:
      s.check(corpus)
    t0 = time.time()
    kept, _ = curation.run_chain(steps, corpus, workers=workers)
    rows.append((name, time.time() - t0, n, len(kept)))
  return rows


def print_rows(rows: list[tuple], t_tok: float) -> None:
  chain = {"exact_dedup", "minhash_dedup", "gopher_quality", "gopher_repetition",
           "fineweb_quality"}
  print(f"\n{'step':32s} {'seconds':>8s} {'docs/s':>9s} {'kept':>7s} {'x tokenize':>10s}")
  for name, sec, docs_in, kept in rows:
    print(f"{name:32s} {sec:8.2f} {docs_in / sec:9.0f} {kept:7d} {sec / t_tok:10.2f}")
  ratio = rows[-1][1] / t_tok
  alone = sum(sec for name, sec, _, _ in rows if name in chain)
  print(f"\nthe chain's steps each on all documents: {alone / t_tok:.2f} x tokenize; in a "
        "chain each step sees only what the previous ones kept")
  print(f"\nchain / tokenization = {ratio:.2f} (target <= 1.0: "
        f"{'met' if ratio <= 1.0 else 'NOT met'}); with MinHash lsh=balanced: "
        f"{rows[-2][1] / t_tok:.2f}")


def print_minhash_and_splitting(corpus, pairs, t_tok: float) -> None:
  """MinHash recall vs seconds under both bandings, and the rules' word splitting alone."""
  print(f"\nMinHash at threshold 0.8 alone ({len(pairs)} planted near copies):")
  for lsh in ("balanced", "recall"):
    sec, dropped, recall, n_near = minhash_recall(corpus, pairs, lsh)
    bands = dedup.lsh_bands(0.8, 128, lsh)
    print(f"  lsh={lsh:8s} {bands[0]:3d} bands x {bands[1]:2d} rows: {sec:7.2f} s "
          f"({sec / t_tok:.2f} x tokenize), {dropped} dropped, recall {recall:.3f} of "
          f"{n_near} pairs at Jaccard >= 0.8")
  t_spacy, t_regex = split_seconds(corpus.texts)
  print(f"\nword splitting of all documents, one process: datatrove spaCy English "
        f"{t_spacy:.1f} s ({t_spacy / t_tok:.2f} x tokenize), regex {t_regex:.1f} s")


if __name__ == "__main__":
  sys.exit(main())
