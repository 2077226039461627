"""Each curation step keeps exactly the expected set of documents."""

import os

import numpy as np
import pytest
from curation_fixtures import BAD, VOCAB, edit_one_word, good_doc, write_jsonl

from data_pipeline import curation, dedup, selection, tokenization
from data_pipeline import tokenizer as tokenizer_lib
from data_pipeline.corpus import Corpus, load_corpus


def corpus_of(texts, metas=None):
  c = Corpus(["mem"], list(texts), metas or [{} for _ in texts],
                      np.zeros(len(texts), dtype=np.int64))
  c.tokens[:] = [len(t.split()) + 1 for t in texts]
  return c


def kept_set(chain, texts, metas=None, workers=1):
  corpus = corpus_of(texts, metas)
  steps = curation.parse_chain(chain)
  for s in steps:
    s.check(corpus)
  kept, rows = curation.run_chain(steps, corpus, workers=workers)
  return set(kept.tolist()), rows



ZH = ("数据决定是一种通过小规模代理实验来选择预训练数据的方法。研究者在多个模型规模上训练模型，"
      "比较不同数据配方的下游表现，并据此预测在更大规模上哪种配方更好。")
JA = ("データ選択は事前学習の重要な部分です。小さなモデルで複数のデータ配合を比較し、"
      "大きなモデルでどの配合が最も良い結果を出すかを予測します。")


@pytest.mark.parametrize("base", [ZH * 6, JA * 6], ids=["chinese", "japanese"])
def test_minhash_finds_near_duplicates_in_text_without_spaces(base):
  # 20 copies, each with one character changed (99.8% identical), and 5 other texts.
  copies = [base[:40 + i] + "。" + base[41 + i:] for i in range(20)]
  others = [base[::-1], ZH[::3] * 5, JA[::2] * 5, good_doc(0), good_doc(1)]
  sh = dedup.shingles(copies[0], 5)
  assert sh.size > 50  # characters are the units: many shingles, not one
  assert dedup.shingle_units("a日本b", 5) == ["a", "日", "本", "b"]
  kept, rows = kept_set([{"step": "minhash_dedup", "threshold": 0.8, "ngram": 5}],
                        copies + others)
  assert kept == {0, *range(20, 25)}
  assert rows[0]["reasons"]["near_duplicate"]["documents"] == 19


def test_texts_with_fewer_words_than_the_ngram_are_compared_by_characters():
  a = "internationalization localization globalization"  # 3 words < ngram 5
  b = "internationalisation localization globalization"
  assert dedup.shingle_units(a, 5) == list(a.replace(" ", ""))
  sa, sb = dedup.shingles(a, 5), dedup.shingles(b, 5)
  inter = np.intersect1d(sa, sb).size
  assert inter / (sa.size + sb.size - inter) > 0.8  # one shingle each before: Jaccard 0



def test_exact_dedup_removes_planted_copies_only():
  docs = [good_doc(i) for i in range(12)]
  docs.append("  " + docs[2].upper().replace(" ", "   ") + "\n")  # same text, case/space
  docs.append(docs[5])
  docs.append(docs[5] + " Extra.")  # not a copy
  kept, rows = kept_set([{"step": "exact_dedup"}], docs)
  assert kept == set(range(len(docs))) - {12, 13}
  assert rows[0]["reasons"] == {"exact_duplicate": {"documents": 2,
                                                    "tokens": int(sum(len(docs[i].split()) + 1
                                                                      for i in (12, 13)))}}


def test_minhash_removes_near_duplicates_at_the_threshold_and_nothing_else():
  docs = [good_doc(i) for i in range(30)]
  planted = {30: 4, 31: 17}
  for src in planted.values():
    docs.append(edit_one_word(docs[src]))  # one word changed: Jaccard ~0.9 over 5-grams
  far = edit_one_word(edit_one_word(edit_one_word(docs[8], 3), 25), 50)
  docs.append(far)  # three edits: Jaccard well below 0.9
  sh = [dedup.shingles(d, 5) for d in docs]

  def jac(a, b):
    inter = np.intersect1d(sh[a], sh[b]).size
    return inter / (sh[a].size + sh[b].size - inter)

  assert jac(30, 4) > 0.85 and jac(31, 17) > 0.85 and 0.6 < jac(32, 8) < 0.85
  kept, rows = kept_set([{"step": "minhash_dedup", "threshold": 0.85, "ngram": 5}], docs)
  assert kept == set(range(len(docs))) - set(planted)
  dropped = rows[0]["examples"]["dropped"]
  assert [d["doc"] for d in dropped] == ["mem#30", "mem#31"]
  assert "mem#4" in dropped[0]["detail"]
  # At a lower threshold the three-edit copy goes too.
  kept, _ = kept_set([{"step": "minhash_dedup", "threshold": 0.6, "ngram": 5}], docs)
  assert kept == set(range(len(docs))) - set(planted) - {32}



def test_gopher_quality_drops_the_planted_bad_documents():
  docs = [good_doc(i) for i in range(10)] + list(BAD.values())
  kept, rows = kept_set([{"step": "gopher_quality"}], docs)
  assert kept == set(range(10))
  assert set(rows[0]["reasons"]) == {"gopher_short_doc", "gopher_too_many_hashes",
                                     "gopher_enough_stop_words", "gopher_above_avg_threshold"}
  # Each threshold is the user's: allowing short documents keeps the short one.
  kept, _ = kept_set([{"step": "gopher_quality", "min_doc_words": 5}], docs)
  assert kept == set(range(10)) | {10}


def test_repetition_and_line_rules_drop_the_planted_bad_documents():
  repeated = "\n".join([good_doc(50, 2)] * 5)
  unpunctuated = good_doc(51).replace(".", "")
  docs = [good_doc(i) for i in range(10)] + [repeated, unpunctuated]
  kept, rows = kept_set([{"step": "gopher_repetition"}], docs)
  assert kept == set(range(10)) | {11}
  kept, rows = kept_set([{"step": "fineweb_quality"}], docs)
  assert 11 not in kept and "line_punct_ratio" in rows[0]["reasons"]
  assert set(range(10)) <= kept


def test_top_p_by_field_keeps_exactly_the_highest_scores_earlier_wins_ties():
  scores = [0.5, 0.9, 0.2, 0.9, 0.7, 0.1, 0.7, 0.3, 0.7, 0.05]
  docs = [good_doc(i) for i in range(10)]
  kept, rows = kept_set([{"step": "top_p", "fraction": 0.4, "field": "q"}], docs,
                        [{"q": s} for s in scores])
  assert kept == {1, 3, 4, 6}  # 0.9, 0.9, then the earlier two of the three 0.7s
  assert rows[0]["documents_kept"] == 4
  kept, _ = kept_set([{"step": "top_p", "fraction": 0.1, "field": "q"}], docs,
                     [{"q": s} for s in scores])
  assert kept == {1}


def test_top_p_reads_dolma_attribute_files(tmp_path):
  docs = [good_doc(i) for i in range(6)]
  path = write_jsonl(tmp_path / "d.jsonl", [{"id": f"d{i}", "text": t} for i, t in
                                            enumerate(docs)])
  scores = [0.3, 0.8, 0.1, 0.95, 0.5, 0.2]
  attr = write_jsonl(tmp_path / "a.jsonl", [
      {"id": f"d{i}", "attributes": {"qc": [[0, len(docs[i]), s]]}} for i, s in enumerate(scores)])
  corpus = load_corpus([path])
  corpus.tokens[:] = 5
  steps = curation.parse_chain([{"step": "top_p", "fraction": 0.5, "attributes": attr,
                                 "attribute": "qc"}])
  steps[0].check(corpus)
  kept, _ = curation.run_chain(steps, corpus)
  assert set(kept.tolist()) == {1, 3, 4}


def test_parquet_documents_with_metadata_are_curated(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  docs = [good_doc(i) for i in range(8)]
  scores = [3.0, 1.0, 4.0, 1.5, 9.0, 2.0, 6.0, 5.0]
  path = str(tmp_path / "docs.parquet")
  pq.write_table(pa.table({"text": docs, "q": scores}), path)
  out = str(tmp_path / "out")
  index = tokenization.run([path], out, progress=False,
                       chain=[{"step": "top_p", "fraction": 0.5, "field": "q"}])
  kept = [2, 4, 6, 7]  # scores 4, 9, 6, 5
  assert index["documents"] == 4
  tok = tokenizer_lib.load_tokenizer()
  want = np.concatenate([tok.encode(docs[i], add_special_tokens=False).ids
                         + [tokenizer_lib.EOS_TOKEN_ID] for i in kept])
  np.testing.assert_array_equal(np.fromfile(os.path.join(out, "part-00000.npy"), np.uint16),
                                want)


def test_fasttext_scores_match_fasttext_and_top_p_uses_them(tmp_path):
  import fasttext
  rng = np.random.default_rng(0)
  lines = []
  for k in range(200):
    good = k % 2 == 0
    words = rng.choice(VOCAB[:50] if good else VOCAB[50:100], 12)
    lines.append(("__label__hq " if good else "__label__lq ") + " ".join(words))
  train = tmp_path / "train.txt"
  train.write_text("\n".join(lines) + "\n")
  model = fasttext.train_supervised(str(train), epoch=5, dim=8, thread=1, seed=0, verbose=0)
  model_path = str(tmp_path / "qc.bin")
  model.save_model(model_path)
  docs = [" ".join(rng.choice(VOCAB[:100], 20)) + "\nsecond line" for _ in range(20)]
  loaded = fasttext.load_model(model_path)
  want = []
  for d in docs:
    labels, probs = loaded.predict(d.replace("\n", " "), k=-1)
    want.append(float(dict(zip(labels, probs))["__label__hq"]))
  got = selection.fasttext_scores(selection.load_fasttext(model_path), docs, "__label__hq")
  np.testing.assert_array_equal(got, np.array(want))
  kept, _ = kept_set([{"step": "top_p", "fraction": 0.25, "fasttext": model_path}], docs)
  assert kept == set(np.argsort(-np.array(want), kind="stable")[:5].tolist())


def test_subsampling_modes_meet_the_budget_and_are_seeded():
  docs = [good_doc(i, sentences=1 + i % 7) for i in range(40)]
  corpus = corpus_of(docs)
  budget = int(corpus.tokens.sum() // 3)
  for mode in ("uniform", "length_weighted", "diversity"):
    chain = [{"step": "subsample", "mode": mode, "tokens": budget, "clusters": 4}]
    a, _ = kept_set(chain, docs)
    b, _ = kept_set(chain, docs)
    assert a == b
    total = int(corpus.tokens[sorted(a)].sum())
    assert budget - corpus.tokens.max() < total <= budget
    c, _ = kept_set([{**chain[0], "seed": 1}], docs)
    assert c != a
  # Length-weighted sampling prefers long documents.
  lw, _ = kept_set([{"step": "subsample", "mode": "length_weighted", "fraction": 0.25,
                     "alpha": 2.0}], docs)
  assert corpus.tokens[sorted(lw)].mean() > corpus.tokens.mean()


def test_diversity_sampling_draws_across_clusters():
  # 12 words a topic: tight enough that the planted topics are k-means' best clustering (with
  # 40 a topic, splitting the big one and merging two small ones has the lower inertia)
  topics = [VOCAB[0:12], VOCAB[100:112], VOCAB[200:212], VOCAB[300:312]]
  rng = np.random.default_rng(0)
  docs, topic_of = [], []
  for t, n in zip(range(4), (40, 4, 4, 4)):  # one big cluster, three small ones
    for _ in range(n):
      docs.append(" ".join(rng.choice(topics[t], 30)))
      topic_of.append(t)
  kept, _ = kept_set([{"step": "subsample", "mode": "diversity", "fraction": 0.25,
                       "clusters": 4}], docs)
  assert {topic_of[i] for i in kept} == {0, 1, 2, 3}  # every topic represented
  uniform, _ = kept_set([{"step": "subsample", "mode": "uniform", "fraction": 0.25}], docs)
  assert sum(topic_of[i] == 0 for i in kept) < sum(topic_of[i] == 0 for i in uniform)


def test_rules_give_the_same_result_with_worker_processes():
  docs = [good_doc(i) for i in range(80)] + list(BAD.values()) * 10
  chain = [{"step": "gopher_quality"}, {"step": "gopher_repetition"}]
  a, rows_a = kept_set(chain, docs, workers=1)
  b, rows_b = kept_set(chain, docs, workers=2)
  assert a == b == set(range(80))
  assert [r["reasons"] for r in rows_a] == [r["reasons"] for r in rows_b]
