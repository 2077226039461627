"""eval/scorer.py and olmo_jax/decode.py: same numbers as the model's forward and as the
exported HF model in transformers (an independent forward), on real requests of every task."""

import eval_fixtures  # noqa: F401  (offline HF environment first)
import jax
import numpy as np
import pytest
from hf_fixtures import random_params, tiny_config

from data_pipeline.tokenizer import load_tokenizer
from eval import tasks
from eval.encoding import Encoder
from eval.evaluation import requests_of
from eval.scorer import Scorer, greedy_generate, truncate
from olmo_jax import decode
from olmo_jax.model import forward

_fwd = jax.jit(forward, static_argnums=(0, 3))


def reference_loglikelihood(cfg, params, ctx, cont, max_length):
  """Summed log-prob and greedy flag from one plain forward over the truncated request."""
  c, k = truncate(ctx, cont, max_length)
  whole = list(c) + list(k)
  logits = np.asarray(_fwd(cfg, params, np.array([whole[:-1]], np.int32), False))[0]
  rows = np.arange(len(c) - 1, len(whole) - 1)
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  return float(logp[rows, k].sum()), bool((logits[rows].argmax(-1) == np.array(k)).all())


def random_requests(seed=0, n_ctx=4, max_len=96):
  rng = np.random.default_rng(seed)
  reqs = []
  for _ in range(n_ctx):
    ctx = [int(x) for x in rng.integers(0, 50000, rng.integers(1, 60))]
    for _ in range(rng.integers(1, 11)):  # up to 10 choices: a shared context is split
      reqs.append((ctx, [int(x) for x in rng.integers(0, 50000, rng.integers(1, 9))]))
  reqs.append((list(range(5, 5 + 2 * max_len)), [7, 8, 9]))  # needs left truncation
  reqs.append(([3], [4] * (max_len + 5)))  # a continuation longer than the window
  return reqs


@pytest.mark.parametrize("variant", ["ladder", pytest.param("olmo1", marks=pytest.mark.slow),
                                     pytest.param("olmo2", marks=pytest.mark.slow)])
def test_scorer_equals_plain_forward_per_request(variant):
  cfg = tiny_config(variant, max_seq_len=128)
  params = random_params(cfg)
  reqs = random_requests()
  scorer = Scorer(cfg, params, max_length=96, batch_tokens=512)
  got = scorer.loglikelihood(reqs)
  for (ctx, cont), (lp, greedy) in zip(reqs, got):
    ref_lp, ref_greedy = reference_loglikelihood(cfg, params, ctx, cont, 96)
    assert abs(lp - ref_lp) < 1e-4 * max(1.0, abs(ref_lp)), (len(ctx), len(cont), lp, ref_lp)
    assert greedy == ref_greedy
  # Bucketing keeps the number of compiled shapes small.
  assert len(scorer.compiled_shapes) <= 6, scorer.compiled_shapes


def test_prefill_equals_forward_hidden_states():
  cfg = tiny_config("olmo2", max_seq_len=64)
  params = random_params(cfg)
  ids = np.random.default_rng(1).integers(0, 50000, (3, 40)).astype(np.int32)
  h, k, v = jax.jit(decode.prefill, static_argnums=0)(cfg, params, ids)
  ref = _fwd(cfg, params, ids, True)
  np.testing.assert_allclose(np.asarray(h), np.asarray(ref), atol=2e-5)
  assert k.shape == v.shape == (cfg.n_layers, 3, 40, cfg.n_heads, cfg.head_dim)


def test_greedy_decoder_equals_argmax_loop():
  cfg = tiny_config("ladder", max_seq_len=128)
  params = random_params(cfg)
  scorer = Scorer(cfg, params, max_length=128)
  prompts = [[11, 22, 33], list(range(100, 140)), [5]]
  out = greedy_generate(scorer, prompts, 6)
  for p, o in zip(prompts, out):
    seq = list(p)
    for _ in range(6):
      seq.append(int(np.asarray(_fwd(cfg, params, np.array([seq], np.int32), False))[0, -1]
                     .argmax()))
    assert o == seq[len(p):]
  # Stopping: eos ends a row, `stop` sees the tokens so far.
  first = out[0][0]
  assert greedy_generate(scorer, prompts[:1], 6, eos_id=first) == [[]]
  assert greedy_generate(scorer, prompts[:1], 6, stop=lambda t: len(t) >= 2) == [out[0][:2]]


def real_requests(per_task=2):
  """Requests (context, continuation text) of the first documents of every task family."""
  names = [f"{f}:{v}" for f in tasks.REQUEST_FAMILIES[:-1] for v in ("rc_5shot", "mc_5shot")]
  names += ["gsm8k", "mmlu:rc_5shot", "mmlu:mc_5shot"]
  out = {}
  reg = tasks.registry()
  for name in names:
    t = reg[name]
    if t.kind is tasks.MMLU:
      insts = [i for s in ("anatomy", "college_physics", "world_religions")
               for i in tasks.mmlu_subject_instances(s, t.variant, limit=1)]
    else:
      insts = tasks.load_instances(t, limit=per_task)
    out[name] = requests_of(insts)
  return out


@pytest.mark.slow
def test_summed_logprobs_equal_transformers_on_real_requests_of_every_task(tmp_path):
  import torch
  import transformers
  from eval_fixtures import export_hf, tiny_eval_config

  from olmo_jax import config as config_lib
  mcfg = config_lib.model_config(tiny_eval_config(1024))
  params = random_params(mcfg)
  hf_dir = export_hf(mcfg, params, str(tmp_path / "hf"))
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  enc = Encoder(load_tokenizer("olmo"))
  scorer = Scorer(mcfg, params, max_length=1024, batch_tokens=4096)
  per_task = real_requests()
  checked = 0
  for name, texts in per_task.items():
    pairs = enc.pairs(texts)
    ours = scorer.loglikelihood(pairs)
    for (ctx, cont), (lp, _) in zip(pairs, ours):
      c, k = truncate(ctx, cont, 1024)
      whole = torch.tensor([list(c) + list(k)])
      with torch.no_grad():
        logp = torch.log_softmax(model(whole[:, :-1]).logits[0].double(), -1)
      rows = torch.arange(len(c) - 1, whole.shape[1] - 1)
      theirs = float(logp[rows, torch.tensor(k)].sum())
      assert abs(lp - theirs) < 1e-4, (name, lp, theirs)
      checked += 1
  assert checked >= 100
