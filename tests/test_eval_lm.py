"""Language-modelling evaluation (eval/lm.py, `eval.run --lm_files / --lm_heldout`):
bits-per-byte and perplexity equal a brute-force forward, windows, CLI, held-out split."""

import json
import math
import os

import eval_fixtures  # noqa: F401  (offline HF environment first)
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_fixtures import tiny_eval_config
from test_data_heldout import write_token_docs
from test_eval_run import run_cli

from data_pipeline import heldout
from data_pipeline.tokenizer import EOS_TOKEN_ID as EOS
from data_pipeline.tokenizer import load_tokenizer
from eval import lm
from eval.scorer import Scorer
from olmo_jax import checkpoint
from olmo_jax import config as config_lib
from olmo_jax.load import load_model
from olmo_jax.model import forward

SEQ = 64
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Un café naïf, s'il vous plaît.",
         "def f(x):\n  return x * 2\n", "Zürich – 東京 – Kraków"]


def write_checkpoint(workdir, data_dir=None, fraction=0.0):
  """A random tiny model (context SEQ) whose recorded run reads data_dir's token files."""
  c = tiny_eval_config(SEQ)
  saved = c.to_dict()
  if data_dir is not None:
    saved["data"].update(mixture="custom", data_dir=str(data_dir), sources="tok=tok/*.npy",
                         heldout_fraction=fraction)
  from hf_fixtures import random_params
  mcfg = config_lib.model_config(c)
  params = random_params(mcfg)
  checkpoint.write_params_checkpoint(str(workdir), params, {"config": saved})
  return str(workdir)


def write_jsonl(path, texts):
  with open(path, "w") as f:
    for t in texts:
      f.write(json.dumps({"text": t}) + "\n")
  return str(path)


def brute_logprob(cfg, params, seq):
  """Summed log-prob of seq[1:] given the tokens before, with one plain forward."""
  logits = forward(cfg, params, jnp.asarray([seq[:-1]], jnp.int32))
  lsm = np.asarray(jax.nn.log_softmax(logits[0], axis=-1), np.float64)
  return float(lsm[np.arange(len(seq) - 1), seq[1:]].sum())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  d = tmp_path_factory.mktemp("lm")
  write_jsonl(d / "val.jsonl", TEXTS)
  model = load_model(write_checkpoint(d / "run"))
  return d, model, Scorer(model.cfg, model.params, max_length=model.max_length,
                          batch_tokens=1024)


def test_bits_per_byte_equals_a_plain_forward(tiny):
  d, model, scorer = tiny
  sets = lm.file_sets(lm.resolve_files([str(d / "val.jsonl")]))
  assert list(sets) == ["val"]
  res = lm.evaluate_sets(scorer, sets, load_tokenizer())["val"]
  docs = sets["val"]
  total = sum(brute_logprob(model.cfg, model.params, [EOS] + d.tokens.tolist()) for d in docs)
  nbytes = sum(len(t.encode("utf-8")) for t in TEXTS)
  ntok = sum(len(d.tokens) for d in docs)
  assert res["bytes"] == nbytes and res["documents"] == 4 and res["tokens"] == ntok
  assert abs(res["bits_per_byte"] - (-total / math.log(2) / nbytes)) < 1e-4
  assert abs(res["perplexity"] - math.exp(-total / ntok)) < 1e-4 * res["perplexity"]
  # A strided window over a document that fits gives the same sums.
  assert np.allclose(lm.document_logprobs(scorer, docs, stride=5),
                     lm.document_logprobs(scorer, docs), atol=1e-4)


def test_long_documents_are_scored_in_strided_windows(tiny):
  _, model, scorer = tiny
  rng = np.random.default_rng(0)
  doc = heldout.EvalDocument("x", np.append(rng.integers(0, 50000, 150), EOS).astype(np.int32))
  seq = [EOS] + doc.tokens.tolist()
  for stride in (SEQ, 24):
    want = 0.0
    for a in range(1, len(seq), stride):  # every piece given up to SEQ tokens before it
      b = min(a + stride, len(seq))
      lo = max(0, b - 1 - SEQ)
      lsm = np.asarray(jax.nn.log_softmax(
          forward(model.cfg, model.params, jnp.asarray([seq[lo:b - 1]]))[0], -1), np.float64)
      want += sum(lsm[i - 1 - lo, seq[i]] for i in range(a, b))
    got = lm.document_logprobs(scorer, [doc], stride=stride)[0]
    assert abs(got - want) < 1e-3, (stride, got, want)
  assert len(lm.windows(doc.tokens, SEQ, 24)) == math.ceil(151 / 24)
  with pytest.raises(ValueError, match="--lm_stride 65"):
    lm.windows(doc.tokens, SEQ, 65)


def test_set_names():
  assert lm.set_name("val/c4_en.jsonl.gz") == "c4_en"
  assert lm.set_name("paloma/wikitext/*.jsonl.gz") == "wikitext/*"
  assert lm.set_name("tok/part-00000.npy") == "part-00000"


def test_cli_writes_lm_block_for_files_and_the_heldout_split(tmp_path):
  tok = load_tokenizer()
  os.makedirs(tmp_path / "val")
  write_jsonl(tmp_path / "val" / "a.jsonl", TEXTS[:2])
  write_jsonl(tmp_path / "val" / "b.jsonl", TEXTS[2:])
  ids = np.concatenate([tok.encode(t).ids + [EOS] for t in TEXTS]).astype(np.uint16)
  ids.tofile(tmp_path / "toks.npy")
  write_token_docs(tmp_path / "data" / "tok", n_files=1, docs_per_file=40)
  run = write_checkpoint(tmp_path / "run", tmp_path / "data", fraction=0.25)
  out = tmp_path / "out"
  p = run_cli("--checkpoint", run, "--lm_files", str(tmp_path / "val" / "*.jsonl"),
              "--lm_files", str(tmp_path / "toks.npy"), "--lm_heldout", "--limit", "3",
              "--output", str(out), "--no_progress")
  assert p.returncode == 0, p.stderr[-3000:]
  m = json.loads((out / "metrics.json").read_text())
  assert m["tasks"] == {} and set(m["lm"]) == {"val/*", "toks", "heldout/tok"}
  nbytes = sum(len(t.encode("utf-8")) for t in TEXTS[:3])
  assert m["lm"]["val/*"]["documents"] == 3 and m["lm"]["val/*"]["bytes"] == nbytes
  # The same text read as tokens counts the same bytes and scores the same.
  for k in ("bits_per_byte", "perplexity", "tokens", "bytes"):
    assert m["lm"]["toks"][k] == pytest.approx(m["lm"]["val/*"][k], rel=1e-5), k
  held = m["lm"]["heldout/tok"]
  assert held["documents"] == 3 and held["bits_per_byte"] > 0 and held["perplexity"] > 1
  assert "bits_per_byte" in p.stdout and "heldout/tok" in p.stdout

  bad = write_jsonl(tmp_path / "bad.jsonl", [])
  with open(bad, "w") as f:
    f.write("not json\n")
  no_split = write_checkpoint(tmp_path / "run0", tmp_path / "data", fraction=0.0)
  cases = [
      (("--checkpoint", run, "--lm_files", str(tmp_path / "nope" / "*.jsonl")), "no such file"),
      (("--checkpoint", run, "--lm_files", bad), "not a JSON line"),
      (("--checkpoint", no_split, "--lm_heldout"), "heldout_fraction is 0"),
  ]
  for args, needle in cases:
    p = run_cli(*args, "--output", str(tmp_path / "o2"), timeout=300)
    assert p.returncode == 2, (args, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
  assert not os.path.exists(tmp_path / "o2")
