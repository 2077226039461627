"""Tokenisation CLI and the embedded sample corpus."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import built_plan

from data_pipeline import (
  data_plan,
  materialize,
  mixture,
  recipe_config,
  sample_corpus,
  sources,
  tokenization,
)
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
  proc = subprocess.run([sys.executable, "-m", "data_pipeline.tokenize_files", "--inputs",
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
  tokenization.run([str(d / "*.jsonl.gz")], out, progress=False)
  first = open(os.path.join(out, "part-00000.npy"), "rb").read()
  stamp = os.path.getmtime(os.path.join(out, "part-00000.npy"))
  os.remove(os.path.join(out, "part-00001.npy"))  # as if the run died before this shard
  index = tokenization.run([str(d / "*.jsonl.gz")], out, progress=False)
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
    tokenization.run([str(d / "*.jsonl.gz")], out, progress=False)
  assert not os.path.exists(os.path.join(out, "part-00001.npy"))
  assert not [f for f in os.listdir(out) if ".tmp" in f]
  with pytest.raises(FileNotFoundError, match="nothing-here"):
    tokenization.run([str(d / "nothing-here*.jsonl")], out, progress=False)
  (d / "empty.jsonl").write_text("")
  with pytest.raises(ValueError, match="empty.jsonl"):
    tokenization.run([str(d / "empty.jsonl")], out, progress=False)


def test_tokenized_files_feed_the_mixture(raw, tmp_path):
  d, _ = raw
  tokenization.run([str(d / "*.jsonl.gz")], str(tmp_path / "tok"), progress=False)
  cfg = recipe_config.default_config()
  cfg.mixture, cfg.data_dir, cfg.sources = "custom", str(tmp_path), "t=tok/*.npy"
  batch = next(mixture.build_train_iterator(built_plan(cfg), seq_len=7, batch_size=2, seed=0,
                                            vocab_size=50304))
  assert batch["input_ids"].shape == (2, 8)


@pytest.mark.slow
def test_parallel_workers_write_the_same_shards(raw, tmp_path):
  d, _ = raw
  a = tokenization.run([str(d / "*.jsonl.gz")], str(tmp_path / "a"), workers=1, progress=False)
  b = tokenization.run([str(d / "*.jsonl.gz")], str(tmp_path / "b"), workers=2, progress=False)
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


def test_sample_recipe_is_built_by_the_explicit_materialize_step_only(small_corpus, tmp_path):
  cfg = recipe_config.default_config()
  cfg.mixture, cfg.data_dir = "sample", str(tmp_path / "data")
  data_plan.validate_config(cfg, 50304)  # cheap: does not build
  plan = data_plan.resolve(cfg)
  assert "built on first use" in data_plan.describe(plan)
  # The readers never build: they name the step an entry point takes first.
  with pytest.raises(ValueError, match="python -m data_pipeline.sample_corpus"):
    mixture.build_train_iterator(plan, seq_len=64, batch_size=8, seed=0, vocab_size=50304)
  with pytest.raises(TypeError, match="DataPlan"):
    mixture.build_train_iterator(cfg, seq_len=64, batch_size=8, seed=0, vocab_size=50304)
  assert not sample_corpus.is_built(cfg.data_dir)
  materialize.materialize(plan)
  assert sample_corpus.is_built(cfg.data_dir) and not plan.unbuilt()
  it = mixture.build_train_iterator(plan, seq_len=64, batch_size=8, seed=0, vocab_size=50304)
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


# ------------------------------------------------------------------------------------------
# Tokenized outputs are what the inputs say (the command line, as the README prints it).


def tokenize_cli(*args):
  return subprocess.run([sys.executable, "-m", "data_pipeline.tokenize_files", *args], cwd=REPO,
                        capture_output=True, text=True)


def test_output_holding_another_tokenization_is_refused_unless_overwrite(raw, tmp_path):
  d, docs = raw
  out = tmp_path / "out"
  assert tokenize_cli("--inputs", str(d / "*.jsonl.gz"), "--output", str(out),
                      "--workers", "1").returncode == 0
  assert sorted(p.name for p in out.glob("*.npy")) == [f"part-{k:05d}.npy" for k in range(3)]
  other = tmp_path / "other.jsonl"
  other.write_text(json.dumps({"text": "something else entirely"}) + "\n")
  proc = tokenize_cli("--inputs", str(other), "--output", str(out), "--workers", "1")
  assert proc.returncode == 2
  assert "holds another tokenization" in proc.stderr and "--overwrite" in proc.stderr
  assert len(list(out.glob("*.npy"))) == 3  # nothing touched
  proc = tokenize_cli("--inputs", str(other), "--output", str(out), "--workers", "1",
                      "--overwrite")
  assert proc.returncode == 0, proc.stderr
  assert [p.name for p in out.glob("*.npy")] == ["part-00000.npy"]  # old shards removed
  tok = tokenizer_lib.load_tokenizer()
  np.testing.assert_array_equal(np.fromfile(out / "part-00000.npy", np.uint16),
                                tok.encode("something else entirely").ids + [EOS])


def test_input_edited_without_changing_its_size_is_not_already_done(tmp_path):
  src = tmp_path / "docs.jsonl"
  src.write_text(json.dumps({"text": "the cat sat on the mat"}) + "\n")
  out = tmp_path / "out"
  args = ("--inputs", str(src), "--output", str(out), "--workers", "1")
  assert tokenize_cli(*args).returncode == 0
  before = src.stat().st_size
  src.write_text(json.dumps({"text": "the dog sat on the log"}) + "\n")
  assert src.stat().st_size == before
  proc = tokenize_cli(*args)
  assert proc.returncode == 2
  assert "docs.jsonl changed since" in proc.stderr
  proc = tokenize_cli(*args, "--overwrite")
  assert proc.returncode == 0, proc.stderr
  tok = tokenizer_lib.load_tokenizer()
  np.testing.assert_array_equal(np.fromfile(out / "part-00000.npy", np.uint16),
                                tok.encode("the dog sat on the log").ids + [EOS])


def test_finished_shards_are_recognised_by_their_input_hash(raw, tmp_path):
  d, _ = raw
  out = str(tmp_path / "out")
  tokenization.run([str(d / "*.jsonl.gz")], out, progress=False)
  side = os.path.join(out, "part-00002.json")
  meta = json.loads(open(side).read())
  meta["source_sha256"] = "0" * 64  # as if the shard came from other bytes of the same size
  open(side, "w").write(json.dumps(meta))
  stamps = [os.path.getmtime(os.path.join(out, f"part-{k:05d}.npy")) for k in range(3)]
  tokenization.run([str(d / "*.jsonl.gz")], out, progress=False)
  after = [os.path.getmtime(os.path.join(out, f"part-{k:05d}.npy")) for k in range(3)]
  assert after[:2] == stamps[:2] and after[2] != stamps[2]


def test_failed_run_leaves_no_tmp_files_and_corrupt_index_is_named(raw, tmp_path):
  d, _ = raw
  data = open(d / "f2.jsonl.gz", "rb").read()
  (d / "f2.jsonl.gz").write_bytes(data[:len(data) // 2])
  out = tmp_path / "out"
  proc = tokenize_cli("--inputs", str(d / "*.jsonl.gz"), "--output", str(out), "--workers", "2")
  assert proc.returncode == 2
  assert "f2.jsonl.gz: truncated or corrupt gzip" in proc.stderr
  assert not [p for p in os.listdir(out) if ".tmp" in p]
  assert not (out / "part-00002.npy").exists()
  (d / "f2.jsonl.gz").write_bytes(data)
  (out / "index.json").write_text('{"format": "olmo-token')
  proc = tokenize_cli("--inputs", str(d / "*.jsonl.gz"), "--output", str(out), "--workers", "1")
  assert proc.returncode == 2
  assert f"{out / 'index.json'} is corrupt" in proc.stderr
  proc = tokenize_cli("--inputs", str(d / "*.jsonl.gz"), "--output", str(out), "--workers", "1",
                      "--overwrite")
  assert proc.returncode == 0, proc.stderr
  assert json.loads((out / "index.json").read_text())["complete"] is True
