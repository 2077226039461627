"""The held-out document split: training never reads it, evaluation reads exactly it."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, built_plan

from data_pipeline import heldout, mixture, recipe_config
from data_pipeline import tokenizer as tokenizer_lib

EOS = tokenizer_lib.EOS_TOKEN_ID
VOCAB = 50304


def write_token_docs(directory, n_files=3, docs_per_file=150, first_id=0, seed=0):
  """Token files whose document k is [k] * n + [EOS]: every token names its document.

  Returns {document id: length with EOS}.
  """
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  lengths, k = {}, first_id
  for f in range(n_files):
    parts = []
    for _ in range(docs_per_file):
      n = int(rng.integers(20, 1500))
      parts += [np.full(n, k, np.uint16), np.array([EOS], np.uint16)]
      lengths[k] = n + 1
      k += 1
    np.concatenate(parts).tofile(os.path.join(directory, f"part-{f:05d}.npy"))
  return lengths


def write_record_docs(path, ids):
  """An ArrayRecord file of token documents: document k is [k] * (10 + k % 90)."""
  from array_record.python import array_record_module
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for k in ids:
    writer.write(np.full(10 + k % 90, k, np.uint16).tobytes())
  writer.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("heldout")
  lengths = write_token_docs(d / "tok")
  os.makedirs(d / "ar")
  write_record_docs(d / "ar" / "a.array_record", range(2000, 2300))
  write_record_docs(d / "ar" / "b.array_record", range(2300, 2500))
  rdir = d / "recipes"
  rdir.mkdir()
  (rdir / "both.py").write_text(
      "import ml_collections as m\n"
      "def get_config():\n"
      "  return m.ConfigDict({'name': 'both', 'sources': {\n"
      "    'tok': {'kind': 'tokens', 'paths': 'tok/*.npy', 'weight': 0.6},\n"
      "    'ar': {'kind': 'array_record', 'paths': 'ar/*.array_record', 'weight': 0.4,\n"
      "           'record_format': 'tokens_uint16'}}})\n")
  return d, lengths


def both_cfg(d, fraction, **kw):
  cfg = recipe_config.default_config()
  cfg.mixture, cfg.data_dir, cfg.recipes_dir = "both", str(d), str(d / "recipes")
  cfg.heldout_fraction = fraction
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def test_training_never_reads_heldout_documents(corpus):
  d, lengths = corpus
  cfg = both_cfg(d, 0.3)
  held = list(heldout.heldout_documents(built_plan(cfg)))
  by_source = {s: [doc for doc in held if doc.source == s] for s in ("tok", "ar")}
  assert by_source["tok"] and by_source["ar"]
  for doc in held:  # whole documents: every token of one document, then its EOS
    k = int(doc.tokens[0])
    assert doc.tokens[-1] == EOS and (doc.tokens[:-1] == k).all()
    assert len(doc.tokens) == (lengths[k] if doc.source == "tok" else 11 + k % 90)
  held_ids = {int(doc.tokens[0]) for doc in held}
  tok_share = sum(len(doc.tokens) for doc in by_source["tok"]) / sum(lengths.values())
  assert 0.1 < tok_share < 0.6
  it = mixture.build_train_iterator(built_plan(cfg), seq_len=63, batch_size=50, seed=3,
                                    vocab_size=VOCAB)
  seen = set()
  for _ in range(250):  # two epochs of the larger source, many of the smaller
    seen |= set(np.unique(next(it)["input_ids"]).tolist())
  seen.discard(EOS)
  assert not seen & held_ids
  # ... and training reads the rest: all documents of the text source, and all token-file
  # documents but a few short ones that share a window with a held-out span.
  assert set(range(2000, 2500)) - held_ids <= seen
  assert len(set(lengths) - held_ids - seen) <= 0.02 * len(lengths)


def test_split_off_reads_everything_as_before(corpus):
  d, _ = corpus
  kw = dict(seq_len=31, batch_size=16, seed=5, vocab_size=VOCAB)
  off = mixture.build_train_iterator(built_plan(both_cfg(d, 0.0)), **kw)
  cfg_without_field = both_cfg(d, 0.0)
  del cfg_without_field["heldout_fraction"]  # a config from before the field existed
  before = mixture.build_train_iterator(built_plan(cfg_without_field), **kw)
  for _ in range(30):
    np.testing.assert_array_equal(next(off)["input_ids"], next(before)["input_ids"])
  assert off.get_state() == before.get_state()
  assert "heldout" not in json.loads(off.get_state()["fingerprint"])
  on = mixture.build_train_iterator(built_plan(both_cfg(d, 0.3)), **kw)
  assert json.loads(on.get_state()["fingerprint"])["heldout"] == [0.3, heldout.CHUNK_TOKENS]
  with pytest.raises(ValueError, match="no held-out split"):
    list(heldout.heldout_documents(built_plan(both_cfg(d, 0.0))))


def test_split_is_deterministic_resumable_and_independent_of_the_run(corpus):
  d, _ = corpus
  docs = [doc.tokens for doc in heldout.heldout_documents(built_plan(both_cfg(d, 0.3)))]
  again = [doc.tokens for doc in heldout.heldout_documents(built_plan(both_cfg(d, 0.3, seed=9)))]
  assert len(docs) == len(again) and all(np.array_equal(a, b) for a, b in zip(docs, again))
  tail = [doc.tokens for doc in heldout.heldout_documents(built_plan(both_cfg(d, 0.3)), start=7)]
  assert len(tail) == len(docs) - 7 and all(np.array_equal(a, b) for a, b in zip(docs[7:], tail))
  # In-loop batches: the same for any seed, and the processes' shares make the global batch.
  kw = dict(seq_len=63, vocab_size=VOCAB)
  one = heldout.heldout_batches(built_plan(both_cfg(d, 0.3)), 3, batch_size=8, seed=1, **kw)
  other_seed = heldout.heldout_batches(built_plan(both_cfg(d, 0.3)), 3, batch_size=8, seed=2, **kw)
  halves = [heldout.heldout_batches(built_plan(both_cfg(d, 0.3)), 3, batch_size=4, seed=1,
                                    process_index=i,
                                    process_count=2, **kw) for i in range(2)]
  for b in range(3):
    np.testing.assert_array_equal(one[b]["input_ids"], other_seed[b]["input_ids"])
    np.testing.assert_array_equal(
        one[b]["input_ids"],
        np.concatenate([halves[0][b]["input_ids"], halves[1][b]["input_ids"]]))
  held_ids = {int(t[0]) for t in docs}
  rows = np.concatenate([b["input_ids"] for b in one])
  assert set(np.unique(rows).tolist()) - {EOS} <= held_ids
  # Training resumes over the split like any other stream.
  kw = dict(seq_len=31, batch_size=8, seed=4, vocab_size=VOCAB)
  it = mixture.build_train_iterator(built_plan(both_cfg(d, 0.3)), **kw)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it)["input_ids"] for _ in range(20)]
  resumed = mixture.build_train_iterator(built_plan(both_cfg(d, 0.3)), **kw)
  resumed.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(resumed)["input_ids"], e)


def test_too_small_a_split_for_the_in_loop_loss_names_the_fix(corpus):
  d, _ = corpus
  with pytest.raises(ValueError, match="held-out split holds .* raise data.heldout_fraction"):
    heldout.heldout_batches(built_plan(both_cfg(d, 0.3)), 400, seq_len=255, batch_size=32, seed=0,
                            vocab_size=VOCAB)
  with pytest.raises(ValueError, match="data.heldout_fraction is 0"):
    heldout.heldout_batches(built_plan(both_cfg(d, 0.0)), 1, seq_len=15, batch_size=2, seed=0,
                            vocab_size=VOCAB)


TEXTS = [f"Document {i}: {'a café and a naïve résumé ' * (1 + i % 5)} ends here."
         for i in range(300)]


def test_bits_per_byte_inputs_from_text_and_token_documents(tmp_path):
  tok = tokenizer_lib.load_tokenizer()
  os.makedirs(tmp_path / "text")
  with gzip.open(tmp_path / "text" / "d.jsonl.gz", "wt") as f:
    for t in TEXTS:
      f.write(json.dumps({"text": t}) + "\n")
  os.makedirs(tmp_path / "tok")
  ids = np.concatenate([tok.encode(t, add_special_tokens=False).ids + [EOS] for t in TEXTS])
  ids.astype(np.uint16).tofile(tmp_path / "tok" / "part-00000.npy")
  cfg = recipe_config.default_config()
  cfg.mixture, cfg.data_dir = "custom", str(tmp_path)
  cfg.sources, cfg.heldout_fraction = "text=text/*.jsonl.gz,tok=tok/*.npy", 0.2
  held = list(heldout.heldout_documents(built_plan(cfg)))
  for source in ("text", "tok"):
    docs = [d for d in held if d.source == source]
    assert docs
    for doc in docs:
      text = tok.decode(doc.tokens[:-1].tolist())
      assert text in TEXTS and doc.tokens[-1] == EOS
      assert doc.num_bytes(tok) == len(text.encode("utf-8")) > len(text)  # bytes, not chars
      assert doc.text == (text if source == "text" else None)


def test_named_evaluation_files_are_read_whole(tmp_path):
  tok = tokenizer_lib.load_tokenizer()
  with open(tmp_path / "val.jsonl", "w") as f:
    for t in TEXTS[:10]:
      f.write(json.dumps({"text": t}) + "\n")
  ids = np.concatenate([tok.encode(t, add_special_tokens=False).ids + [EOS] for t in TEXTS[10:15]])
  ids.astype(np.uint16).tofile(tmp_path / "val.npy")
  docs = list(heldout.eval_file_documents([str(tmp_path / "val.jsonl"),
                                           str(tmp_path / "val.npy")]))
  assert [d.source for d in docs] == ["val.jsonl"] * 10 + ["val.npy"] * 5
  assert [tok.decode(d.tokens[:-1].tolist()) for d in docs] == TEXTS[:15]
  assert [d.text for d in docs[:10]] == TEXTS[:10]
  rows = heldout.pack(docs, 17, 1000)
  assert rows.shape == (sum(len(d.tokens) for d in docs) // 17, 17)
  np.testing.assert_array_equal(rows.ravel(), np.concatenate([d.tokens for d in docs])[:rows.size])


def _train(workdir, data_dir, *overrides):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run(
      [sys.executable, "-m", "olmo_jax.train", "--config", f"{REPO}/configs/train.py:4M",
       "--workdir", str(workdir), "--config.model.size=custom", "--config.model.d_model=32",
       "--config.model.n_heads=2", "--config.model.n_layers=2", "--config.train.batch_size=4",
       "--config.train.seq_len=16", "--config.train.warmup_steps=1", "--config.train.steps=2",
       "--config.train.log_every=1", "--config.train.progress_bar=False",
       "--config.checkpoint.enabled=False", "--config.eval.every=1", "--config.eval.batches=2",
       f"--config.data.data_dir={data_dir}", *overrides],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_in_loop_loss_reads_the_heldout_split(tmp_path):
  write_token_docs(tmp_path / "data" / "tok", n_files=2, docs_per_file=60)
  proc = _train(tmp_path / "run", tmp_path / "data", "--config.data.heldout_fraction=0.25")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "held out of training for evaluation: 0.25" in proc.stdout
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert all(np.isfinite(r["eval_loss"]) for r in rows if "eval_loss" in r)
  assert any("eval_loss" in r for r in rows)
  proc = _train(tmp_path / "run2", tmp_path / "data")
  assert proc.returncode == 2 and "data.heldout_fraction is 0" in proc.stderr
  assert "Traceback" not in proc.stderr
