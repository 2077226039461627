"""Shared helpers for the HF conversion tests: tiny configs, real-text token batches, and
the same logits from transformers and from our forward."""

from __future__ import annotations

import functools
import os

# Every model here is built from a local config; nothing may reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipeline import tokenizer as tokenizer_lib
from data_pipeline.tokenizer import load_tokenizer
from olmo_jax import sizes
from olmo_jax.model import ModelConfig, OLMo, forward

# Weights near 1/sqrt(d) keep activations and logits O(1), so a wrong mapping moves the
# logits by far more than the 1e-4 tolerance (std 0.02 at d=64 would shrink every signal).
TINY_STD = 0.1
LONG_LEN = 256
TOL = 1e-4
CLIP_QKV = 0.5  # small enough that OLMo 1's clipping actually bites at TINY_STD

SENTENCES = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Language models are trained to predict the next token given all of the previous ones.",
    "In 1969, two astronauts walked on the Moon and collected rocks to bring back to Earth.",
    "Water boils at one hundred degrees Celsius at sea level, but at lower temperatures up high.",
]


def tiny_config(variant: str, **overrides) -> ModelConfig:
  """A 2-layer d=64 model of `variant` with the real 50304-row embedding."""
  kw = dict(variant=variant, d_model=64, n_heads=4, n_layers=2, max_seq_len=LONG_LEN,
            init_std=TINY_STD, clip_qkv=CLIP_QKV if variant == "olmo1" else 0.0)
  kw.update(overrides)
  return ModelConfig(**kw)


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
  """Our init, with every norm weight moved off 1 so a misplaced norm is visible."""
  params = nnx.to_pure_dict(nnx.state(OLMo(cfg, rngs=nnx.Rngs(seed)), nnx.Param))
  rng = np.random.RandomState(seed + 1)
  params = jax.tree.map(np.asarray, params)
  for name, value in list(params["blocks"].items()):
    if name.endswith("norm"):
      params["blocks"][name] = (1.0 + 0.3 * rng.randn(*value.shape)).astype(np.float32)
  if "final_norm" in params:
    params["final_norm"] = (1.0 + 0.3 * rng.randn(cfg.d_model)).astype(np.float32)
  return params


@functools.lru_cache(maxsize=1)
def token_batches() -> tuple[np.ndarray, np.ndarray]:
  """(sentences int32 [4, L] cut to the shortest, no padding; one [1, LONG_LEN] row of text)."""
  tok = load_tokenizer()
  rows = [tok.encode(s).ids for s in SENTENCES]
  n = min(len(r) for r in rows)
  short = np.array([r[:n] for r in rows], np.int32)
  stream = [t for r in rows for t in r + [tokenizer_lib.EOS_TOKEN_ID]]
  long = np.resize(np.array(stream, np.int32), (1, LONG_LEN))  # repeats the real text
  return short, long


_jit_forward = jax.jit(forward, static_argnums=0)


def our_logits(cfg: ModelConfig, params: dict, ids: np.ndarray) -> np.ndarray:
  """float32 [B, L, V] from our forward."""
  return np.asarray(_jit_forward(cfg, params, jnp.asarray(ids)))


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
  """float32 [B, L, V] from a transformers causal LM (no padding, no mask)."""
  import torch
  with torch.no_grad():
    return model(torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()


def max_diff(model, cfg: ModelConfig, params: dict, long: bool = True) -> float:
  """Max |HF - ours| logit difference over the sentence batch (and the long row)."""
  batches = token_batches() if long else token_batches()[:1]
  return max(float(np.abs(hf_logits(model, ids) - our_logits(cfg, params, ids)).max())
             for ids in batches)


def hf_random_model(variant: str, seed: int = 0, **config_overrides):
  """A randomly initialised float32 eval-mode HF model of `variant`, norms off 1."""
  import torch
  import transformers
  common = dict(vocab_size=sizes.EMBEDDING_SIZE, hidden_size=64, intermediate_size=256,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=LONG_LEN,
                initializer_range=TINY_STD, tie_word_embeddings=False, pad_token_id=1,
                eos_token_id=tokenizer_lib.EOS_TOKEN_ID)
  if variant == "ladder":
    cls, conf = transformers.LlamaForCausalLM, transformers.LlamaConfig
    common.update(bos_token_id=None)
  elif variant == "olmo1":
    cls, conf = transformers.OlmoForCausalLM, transformers.OlmoConfig
    common.update(clip_qkv=CLIP_QKV)
  else:
    # Olmo2Config's own default eps (1e-5) and a non-default theta: import must read both.
    cls, conf = transformers.Olmo2ForCausalLM, transformers.Olmo2Config
    common.update(rope_parameters={"rope_type": "default", "rope_theta": 500_000.0})
  common.update(config_overrides)
  config = conf(**common)
  torch.manual_seed(seed)
  model = cls._from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
  return model
