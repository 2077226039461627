"""Curation strategies, their materialisation at tokenisation, accounting and the CLIs."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import curation, mixture, tokenize
from data_pipeline import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vocabulary(n=400, seed=0):
  rng = np.random.default_rng(seed)
  cons, vow = "bcdfghklmnprstvz", "aeiou"
  out = set()
  while len(out) < n:
    out.add("".join(cons[rng.integers(len(cons))] + vow[rng.integers(len(vow))]
                    for _ in range(int(rng.integers(2, 4)))))
  return sorted(out)


VOCAB = _vocabulary()


def good_doc(seed: int, sentences: int = 8) -> str:
  """Prose that passes every rule: long enough, stop words, punctuated lines, no repetition."""
  rng = np.random.default_rng(seed + 1000)

  def w():
    return VOCAB[rng.integers(len(VOCAB))]

  return "\n".join(f"The {w()} {w()} of the {w()} was {w()} with {w()} and {w()} to {w()} "
                   f"{w()} that {w()} {w()}." for _ in range(sentences))


def edit_one_word(text: str, k: int = 10) -> str:
  words = text.split(" ")
  words[k] = "quixotic"
  return " ".join(words)


def write_jsonl(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return str(path)


def corpus_of(texts, metas=None):
  c = curation.Corpus(["mem"], list(texts), metas or [{} for _ in texts],
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


# ------------------------------------------------------------------------------------------
# Each strategy keeps exactly the expected set.

ZH = ("数据决定是一种通过小规模代理实验来选择预训练数据的方法。研究者在多个模型规模上训练模型，"
      "比较不同数据配方的下游表现，并据此预测在更大规模上哪种配方更好。")
JA = ("データ選択は事前学習の重要な部分です。小さなモデルで複数のデータ配合を比較し、"
      "大きなモデルでどの配合が最も良い結果を出すかを予測します。")


@pytest.mark.parametrize("base", [ZH * 6, JA * 6], ids=["chinese", "japanese"])
def test_minhash_finds_near_duplicates_in_text_without_spaces(base):
  # 20 copies, each with one character changed (99.8% identical), and 5 other texts.
  copies = [base[:40 + i] + "。" + base[41 + i:] for i in range(20)]
  others = [base[::-1], ZH[::3] * 5, JA[::2] * 5, good_doc(0), good_doc(1)]
  sh = curation.shingles(copies[0], 5)
  assert sh.size > 50  # characters are the units: many shingles, not one
  assert curation.shingle_units("a日本b", 5) == ["a", "日", "本", "b"]
  kept, rows = kept_set([{"step": "minhash_dedup", "threshold": 0.8, "ngram": 5}],
                        copies + others)
  assert kept == {0, *range(20, 25)}
  assert rows[0]["reasons"]["near_duplicate"]["documents"] == 19


def test_texts_with_fewer_words_than_the_ngram_are_compared_by_characters():
  a = "internationalization localization globalization"  # 3 words < ngram 5
  b = "internationalisation localization globalization"
  assert curation.shingle_units(a, 5) == list(a.replace(" ", ""))
  sa, sb = curation.shingles(a, 5), curation.shingles(b, 5)
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
  sh = [curation.shingles(d, 5) for d in docs]

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


BAD = {
    "short": "The cat sat with the dog and that was all.",
    "hashes": " ".join(f"#tag{i} the word{i} and" for i in range(40)),
    "no_stop_words": " ".join(VOCAB[:120]) + ".",
    "long_words": " ".join(["the", "and"] + ["supercalifragilisticexpialidocious"] * 60),
}


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
  corpus = curation.load_corpus([path])
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
  index = tokenize.run([path], out, progress=False,
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
  got = curation.fasttext_scores(curation.load_fasttext(model_path), docs, "__label__hq")
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


# ------------------------------------------------------------------------------------------
# Materialisation at tokenisation: bytes, accounting, caching.


CHAIN = [{"step": "exact_dedup"}, {"step": "minhash_dedup", "threshold": 0.85},
         {"step": "gopher_quality"}, {"step": "gopher_repetition"},
         {"step": "subsample", "mode": "diversity", "fraction": 0.8, "clusters": 3}]


@pytest.fixture
def raw(tmp_path):
  d = tmp_path / "raw"
  d.mkdir()
  a = [good_doc(i) for i in range(20)]
  b = [good_doc(100 + i) for i in range(20)] + [a[3], edit_one_word(a[7])] + list(BAD.values())
  write_jsonl(d / "a.jsonl", [{"text": t, "q": i} for i, t in enumerate(a)])
  with gzip.open(d / "b.jsonl.gz", "wt") as f:
    for i, t in enumerate(b):
      f.write(json.dumps({"text": t, "q": 100 + i}) + "\n")
  return d, a, b


def test_curated_tokenization_writes_kept_documents_and_accounting(raw, tmp_path):
  d, a, b = raw
  out = str(tmp_path / "out")
  index = tokenize.run([str(d / "*")], out, workers=1, progress=False, chain=CHAIN[:4])
  cur = index["curation"]
  assert [r["step"] for r in cur["steps"]] == [s["step"] for s in CHAIN[:4]]
  assert [r["documents_dropped"] for r in cur["steps"]] == [1, 1, len(BAD), 0]
  assert cur["documents_in"] == len(a) + len(b)
  assert index["documents"] == len(a) + 20
  tok = tokenizer_lib.load_tokenizer()
  eos = tokenizer_lib.EOS_TOKEN_ID
  want_b = np.concatenate([tok.encode(t, add_special_tokens=False).ids + [eos] for t in b[:20]])
  np.testing.assert_array_equal(np.fromfile(os.path.join(out, "part-00001.npy"), np.uint16),
                                want_b)
  for r in cur["steps"]:
    assert r["documents_in"] == r["documents_kept"] + r["documents_dropped"]
    assert r["tokens_in"] == r["tokens_kept"] + r["tokens_dropped"]
    assert sum(v["tokens"] for v in r["reasons"].values()) == r["tokens_dropped"]
  assert cur["steps"][-1]["tokens_kept"] == index["tokens"]
  # The training side reads them as plain token files.
  cfg = mixture.default_config()
  cfg.mixture, cfg.data_dir, cfg.sources = "custom", str(tmp_path), "c=out/*.npy"
  batch = next(mixture.build_train_iterator(cfg, seq_len=15, batch_size=2, seed=0,
                                            vocab_size=50304))
  assert batch["input_ids"].shape == (2, 16)


def _shard_bytes(out):
  return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))
          if n.endswith(".npy")}


def test_same_inputs_and_chain_give_identical_token_files_with_1_or_n_workers(raw, tmp_path):
  d, _, _ = raw
  outs = []
  for k, workers in enumerate((1, 1, 2)):
    out = str(tmp_path / f"out{k}")
    tokenize.run([str(d / "*")], out, workers=workers, progress=False, chain=CHAIN)
    outs.append(_shard_bytes(out))
  assert outs[0] == outs[1] == outs[2] and outs[0]


def test_chain_runs_are_byte_identical_and_reused(raw, tmp_path):
  d, _, _ = raw
  a = tokenize.run([str(d / "*")], str(tmp_path / "a"), progress=False, chain=CHAIN)
  b = tokenize.run([str(d / "*")], str(tmp_path / "b"), progress=False, chain=CHAIN)
  assert _shard_bytes(str(tmp_path / "a")) == _shard_bytes(str(tmp_path / "b"))
  assert a["curation"]["key"] == b["curation"]["key"]
  stamp = os.path.getmtime(tmp_path / "a" / "part-00000.npy")
  again = tokenize.run([str(d / "*")], str(tmp_path / "a"), progress=False, chain=CHAIN)
  assert os.path.getmtime(tmp_path / "a" / "part-00000.npy") == stamp
  assert again == a


RECIPES = '''
from data_pipeline.curation import curated_source
import ml_collections

CHAINS = {{"raw": [], "dedup": [{{"step": "exact_dedup"}}],
          "dedup_rules": [{{"step": "exact_dedup"}}, {{"step": "gopher_quality"}}]}}


def recipe_names():
  return ["cur_" + k for k in CHAINS] + ["cur_dedup_again"]


def get_config(name):
  c = ml_collections.ConfigDict()
  c.name = name
  chain = CHAINS["dedup" if name == "cur_dedup_again" else name[4:]]
  c.sources = ml_collections.ConfigDict()
  c.sources.web = curated_source("raw/*", chain, weight={weight})
  return c
'''


def test_recipes_materialise_once_per_chain_and_train(raw, tmp_path):
  d, a, b = raw
  recipes = tmp_path / "recipes"
  recipes.mkdir()
  (recipes / "cur.py").write_text(RECIPES.format(weight=1.0))
  data_dir = str(tmp_path)
  first = tokenize.materialize_recipe("cur_dedup", data_dir, recipes_dir=str(recipes),
                                      progress=False)
  out, index = first["web"]
  assert index["documents"] == len(a) + len(b) - 1
  stamp = os.path.getmtime(os.path.join(out, "part-00000.npy"))
  second = tokenize.materialize_recipe("cur_dedup_again", data_dir, recipes_dir=str(recipes),
                                       progress=False)
  assert second["web"][0] == out  # same inputs, chain and tokenizer: same files, reused
  assert os.path.getmtime(os.path.join(out, "part-00000.npy")) == stamp
  other = tokenize.materialize_recipe("cur_dedup_rules", data_dir, recipes_dir=str(recipes),
                                      progress=False)
  assert other["web"][0] != out
  assert other["web"][1]["documents"] == len(a) + len(b) - 1 - len(BAD)
  cfg = mixture.default_config()
  cfg.mixture, cfg.data_dir, cfg.recipes_dir = "cur_dedup_rules", data_dir, str(recipes)
  batch = next(mixture.build_train_iterator(cfg, seq_len=15, batch_size=2, seed=0,
                                            vocab_size=50304))
  assert batch["input_ids"].shape == (2, 16)


def test_training_builds_a_recipes_curated_sources_on_first_use(raw, tmp_path):
  recipes = tmp_path / "recipes"
  recipes.mkdir()
  (recipes / "cur.py").write_text(RECIPES.format(weight=1.0))
  cfg = mixture.default_config()
  cfg.mixture, cfg.data_dir, cfg.recipes_dir = "cur_dedup", str(tmp_path), str(recipes)
  mixture.validate_config(cfg, 50304)  # inputs exist; the token files are made later
  # the start-up table (train.py prints it before building the data) must not need them
  assert mixture.describe(cfg).endswith("curated source(s) web built on first use")
  first = next(mixture.build_train_iterator(cfg, seq_len=15, batch_size=2, seed=0,
                                            vocab_size=50304))
  built = tokenize.materialize_recipe("cur_dedup", str(tmp_path), recipes_dir=str(recipes),
                                      progress=False)
  shard = os.path.join(built["web"][0], "part-00000.npy")
  stamp = os.path.getmtime(shard)
  again = next(mixture.build_train_iterator(cfg, seq_len=15, batch_size=2, seed=0,
                                            vocab_size=50304))
  assert os.path.getmtime(shard) == stamp  # reused, not rebuilt
  assert "web " in mixture.describe(cfg).splitlines()[2]  # now listed with its tokens
  np.testing.assert_array_equal(first["input_ids"], again["input_ids"])
  cfg.data_dir = str(tmp_path / "elsewhere")
  with pytest.raises(FileNotFoundError, match="curated source 'web'"):
    mixture.validate_config(cfg, 50304)


# ------------------------------------------------------------------------------------------
# Bad input: one clear error, exit 2, nothing written. Run as the README prints the commands.


def cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("chain, records, expect", [
    ([{"step": "top_p", "fraction": 0.1, "field": "q"}], "some_missing_q",
     "score field 'q' is missing or not a finite number in 1 of"),
    ([{"step": "dedupe"}], None, "unknown curation step 'dedupe'"),
    ([{"step": "exact_dedup", "threshold": 0.5}], None,
     "curation step 'exact_dedup': unknown parameter(s) ['threshold']"),
    ([{"step": "subsample", "mode": "diversity"}], None, "give exactly one budget"),
    ([{"step": "minhash_dedup", "threshold": 1.5}], None,
     "minhash_dedup': threshold must be a number in (0, 1], got 1.5"),
    ([{"step": "gopher_quality", "max_symbol_word_ratio": -0.1}], None,
     "max_symbol_word_ratio must be a number in [0, 1]"),
    ([{"step": "top_p", "fraction": 0.1, "fasttext": "CLASSIFIER"}], None,
     "does not load"),
    ([{"step": "top_p", "fraction": 0.1, "attributes": "ATTRS", "attribute": "qc"}], None,
     "has 2 lines but"),
])
def test_bad_input_is_one_clear_error_exit_2_and_no_output(tmp_path, chain, records, expect):
  docs = [{"text": good_doc(i), "q": i} for i in range(4)]
  if records == "some_missing_q":
    del docs[2]["q"]
  path = write_jsonl(tmp_path / "docs.jsonl", docs)
  bad_model = tmp_path / "qc.bin"
  bad_model.write_bytes(b"not a fasttext model at all")
  write_jsonl(tmp_path / "attrs.jsonl", [{"attributes": {"qc": 0.5}}] * 2)
  chain_text = (json.dumps(chain).replace("CLASSIFIER", str(bad_model))
                .replace("ATTRS", str(tmp_path / "attrs.jsonl")))
  out = tmp_path / "out"
  proc = cli("data_pipeline.tokenize", "--inputs", path, "--output", str(out), "--chain",
             chain_text, "--workers", "1")
  assert proc.returncode == 2, proc.stderr
  assert expect in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert not out.exists()


def test_cli_chain_file_and_inspect_print_the_accounting(raw, tmp_path):
  d, _, _ = raw
  chain_file = tmp_path / "chain.json"
  chain_file.write_text(json.dumps(CHAIN[:3]))
  out = tmp_path / "tok"
  proc = cli("data_pipeline.tokenize", "--inputs", str(d / "*.jsonl*"), "--output", str(out),
             "--chain", str(chain_file), "--workers", "1")
  assert proc.returncode == 0, proc.stderr
  proc = cli("data_pipeline.inspect", str(out))
  assert proc.returncode == 0, proc.stderr
  text = proc.stdout
  assert "curation: exact_dedup > minhash_dedup(threshold=0.85) > gopher_quality" in text
  index = json.loads((out / "index.json").read_text())
  for r in index["curation"]["steps"]:
    row = next(line for line in text.splitlines() if line.startswith(r["step"] + " "))
    assert row.split()[1:4] == [str(r["documents_in"]), str(r["documents_kept"]),
                                str(r["documents_dropped"])]
  assert "dropped  " in text and "[exact_duplicate: same text as" in text
  assert "[gopher_short_doc" in text and "kept     " in text
  plain = tmp_path / "plain"
  tokenize.run([str(d / "a.jsonl")], str(plain), progress=False)
  proc = cli("data_pipeline.inspect", str(plain))
  assert proc.returncode == 0 and "curation: none" in proc.stdout
  assert "20 documents" in proc.stdout
  proc = cli("data_pipeline.inspect", str(tmp_path / "nothing"))
  assert proc.returncode == 2 and "is not a directory" in proc.stderr


def test_cli_recipe_materialises_curated_sources(raw, tmp_path):
  recipes = tmp_path / "recipes"
  recipes.mkdir()
  (recipes / "cur.py").write_text(RECIPES.format(weight=1.0))
  args = ("data_pipeline.tokenize", "--recipe", "cur_dedup", "--data_dir", str(tmp_path),
          "--recipes_dir", str(recipes), "--workers", "1")
  proc = cli(*args)
  assert proc.returncode == 0, proc.stderr
  assert "web: " in proc.stdout and "(exact_dedup) -> " in proc.stdout
  out = proc.stdout.split(" -> ")[-1].strip()
  assert os.path.isfile(os.path.join(out, "part-00000.npy"))
  proc = cli("data_pipeline.tokenize", "--recipe", "no_such_recipe", "--data_dir",
             str(tmp_path), "--recipes_dir", str(recipes))
  assert proc.returncode == 2 and "not a known recipe" in proc.stderr


def test_shipped_curation_recipes_name_their_chains():
  directory = mixture.recipes_dir(mixture.default_config())
  names = [n for n in mixture.known_recipes(directory) if n.startswith("curation_")]
  assert set(names) == {"curation_raw", "curation_dedup", "curation_dedup_rules",
                        "curation_dedup_rules_diverse50", "curation_qc_top10"}
  dirs = {}
  for name in names:
    specs = tokenize.curated_specs(name, "data", directory)
    (spec,) = specs.values()
    steps = curation.parse_chain(json.loads(spec.curation.chain))  # every chain is valid
    assert spec.paths == spec.curation.output + "/*.npy"
    dirs[name] = spec.curation.output
    assert mixture.load_recipe(name, directory).description.endswith(
        curation.describe_chain(curation.chain_spec(steps)))
  assert len(set(dirs.values())) == len(names)  # different chains, different files


@pytest.mark.slow
def test_shipped_recipe_materialises_from_the_command_line(tmp_path):
  proc = cli("data_pipeline.tokenize", "--recipe", "curation_dedup", "--data_dir",
             str(tmp_path), "--workers", "2")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout.strip().split(" -> ")[-1]
  proc = cli("data_pipeline.inspect", out)
  assert proc.returncode == 0 and "minhash_dedup" in proc.stdout
  cfg = mixture.default_config()
  cfg.mixture, cfg.data_dir = "curation_dedup", str(tmp_path)
  batch = next(mixture.build_train_iterator(cfg, seq_len=63, batch_size=2, seed=0,
                                            vocab_size=50304))
  assert batch["input_ids"].shape == (2, 64)
