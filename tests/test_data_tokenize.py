"""Tokenisation CLI and the embedded sample corpus."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import mixture, sample_corpus, sources, tokenize
from data_pipeline import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS = tokenizer_lib.EOS_TOKEN_ID


def write_jsonl_gz(path, docs):
  with gzip.open(path, "wt") as f:
    for d in docs:
      f.write(json.dumps({"text": d}) + "\n")


@pytest.fixture
def raw(tmp_path):
  d = tmp_path / "raw"
  d.mkdir()
  docs = {f"f{i}.jsonl.gz": [f"File {i}, document {j}: " + "words " * j for j in range(5)]
          for i in range(3)}
  for name, ds in docs.items():
    write_jsonl_gz(d / name, ds)
  return d, docs


def test_cli_writes_olmo_token_files_and_index(raw, tmp_path):
  d, docs = raw
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "-m", "data_pipeline.tokenize", "--inputs",
                         str(d / "*.jsonl.gz"), "--output", str(out), "--workers", "1"],
                        cwd=REPO, capture_output=True, text=True, check=True)
  assert "15 documents" in proc.stdout
  index = json.loads((out / "index.json").read_text())
  assert index["documents"] == 15 and index["dtype"] == "uint16"
  assert index["tokenizer_hash"] == tokenizer_lib.tokenizer_hash()
  tok = tokenizer_lib.load_tokenizer()
  for k, name in enumerate(sorted(docs)):
    ids = np.fromfile(out / f"part-{k:05d}.npy", np.uint16)
    expected = np.concatenate([tok.encode(t, add_special_tokens=False).ids + [EOS]
                               for t in docs[name]])
    np.testing.assert_array_equal(ids, expected)
    assert index["shards"][k]["tokens"] == len(ids)
  assert sum(s["tokens"] for s in index["shards"]) == index["tokens"]


def test_rerun_skips_finished_shards_and_redoes_missing_ones(raw, tmp_path):
  d, _ = raw
  out = str(tmp_path / "out")
  tokenize.run([str(d / "*.jsonl.gz")], out, progress=False)
  first = open(os.path.join(out, "part-00000.npy"), "rb").read()
  stamp = os.path.getmtime(os.path.join(out, "part-00000.npy"))
  os.remove(os.path.join(out, "part-00001.npy"))  # as if the run died before this shard
  index = tokenize.run([str(d / "*.jsonl.gz")], out, progress=False)
  assert os.path.getmtime(os.path.join(out, "part-00000.npy")) == stamp  # skipped
  assert open(os.path.join(out, "part-00000.npy"), "rb").read() == first
  assert os.path.isfile(os.path.join(out, "part-00001.npy"))
  assert index["documents"] == 15


def test_bad_input_fails_without_leaving_a_visible_shard(raw, tmp_path):
  d, _ = raw
  data = open(d / "f1.jsonl.gz", "rb").read()
  (d / "f1.jsonl.gz").write_bytes(data[:len(data) // 2])
  out = str(tmp_path / "out")
  with pytest.raises(ValueError, match="f1.jsonl.gz: truncated or corrupt gzip"):
    tokenize.run([str(d / "*.jsonl.gz")], out, progress=False)
  assert not os.path.exists(os.path.join(out, "part-00001.npy"))
  assert not [f for f in os.listdir(out) if ".tmp" in f]
  with pytest.raises(FileNotFoundError, match="nothing-here"):
    tokenize.run([str(d / "nothing-here*.jsonl")], out, progress=False)
  (d / "empty.jsonl").write_text("")
  with pytest.raises(ValueError, match="empty.jsonl"):
    tokenize.run([str(d / "empty.jsonl")], out, progress=False)


def test_tokenized_files_feed_the_mixture(raw, tmp_path):
  d, _ = raw
  tokenize.run([str(d / "*.jsonl.gz")], str(tmp_path / "tok"), progress=False)
  cfg = mixture.default_config()
  cfg.mixture, cfg.data_dir, cfg.sources = "custom", str(tmp_path), "t=tok/*.npy"
  batch = next(mixture.build_train_iterator(cfg, seq_len=7, batch_size=2, seed=0,
                                            vocab_size=50304))
  assert batch["input_ids"].shape == (2, 8)


@pytest.mark.slow
def test_parallel_workers_write_the_same_shards(raw, tmp_path):
  d, _ = raw
  a = tokenize.run([str(d / "*.jsonl.gz")], str(tmp_path / "a"), workers=1, progress=False)
  b = tokenize.run([str(d / "*.jsonl.gz")], str(tmp_path / "b"), workers=2, progress=False)
  assert a["tokens"] == b["tokens"]
  for k in range(3):
    assert (open(tmp_path / "a" / f"part-{k:05d}.npy", "rb").read()
            == open(tmp_path / "b" / f"part-{k:05d}.npy", "rb").read())


@pytest.fixture
def small_corpus(monkeypatch):
  """The real builder over a slice of the standard library, to stay fast."""
  modules = sample_corpus.stdlib_modules()
  monkeypatch.setattr(sample_corpus, "stdlib_modules", lambda: modules[:30])
  monkeypatch.setattr(sample_corpus, "CODE_BYTES", 100_000)


def test_sample_corpus_is_built_once_deterministically(small_corpus, tmp_path):
  a = sample_corpus.build(str(tmp_path / "a"))
  b = sample_corpus.build(str(tmp_path / "b"))
  ma = json.loads(open(os.path.join(a, "manifest.json")).read())
  mb = json.loads(open(os.path.join(b, "manifest.json")).read())
  assert ma["sources"] == mb["sources"]
  assert set(ma["sources"]) == {"sample_prose", "sample_code"}
  for name in ("sample_prose", "sample_code"):
    assert ma["sources"][name]["tokens"] > 10_000
  stamp = os.path.getmtime(os.path.join(a, "manifest.json"))
  sample_corpus.build(str(tmp_path / "a"))  # cached: nothing rebuilt
  assert os.path.getmtime(os.path.join(a, "manifest.json")) == stamp
  # The kept documents are the ones tokenised.
  docs = sources.read_documents(os.path.join(a, "text", "sample_code.jsonl.gz"))
  assert any("def " in doc for doc in docs)


def test_sample_recipe_builds_on_first_use(small_corpus, tmp_path):
  cfg = mixture.default_config()
  cfg.mixture, cfg.data_dir = "sample", str(tmp_path / "data")
  mixture.validate_config(cfg, 50304)  # cheap: does not build
  assert not sample_corpus.is_built(cfg.data_dir)
  it = mixture.build_train_iterator(cfg, seq_len=64, batch_size=8, seed=0, vocab_size=50304)
  assert sample_corpus.is_built(cfg.data_dir)
  rows = np.concatenate([next(it)["input_ids"] for _ in range(20)])
  text = tokenizer_lib.load_tokenizer().decode(rows[:, :32].ravel().tolist())
  assert "def " in text or "self" in text  # code is in the mix
  assert rows.max() < 50280


@pytest.mark.slow
def test_full_sample_corpus_build_is_deterministic(tmp_path):
  a = sample_corpus.build(str(tmp_path / "a"))
  b = sample_corpus.build(str(tmp_path / "b"))
  assert (open(os.path.join(a, "manifest.json")).read()
          == open(os.path.join(b, "manifest.json")).read())
