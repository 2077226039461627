"""Cached forward passes of the OLMo model, as evaluation and the greedy decoder call them.

Each is `model.forward` itself: a prefill is the forward returning every layer's keys and
values; an extension is the forward over new tokens with a `model.KVCache`. Same values as
an uncached forward up to float32 summation order (tests/test_eval_scorer.py checks it).

Shapes: B batch, P cached (past) length, T new tokens, D d_model, H heads, K head dim,
N layers.
"""

from __future__ import annotations

from typing import Any

import jax

from olmo_jax import model as model_lib
from olmo_jax.model import ModelConfig


def prefill(cfg: ModelConfig, params: dict[str, Any], ids_BxP: jax.Array):
  """Causal forward over a (right-padded) context.

  Returns (final hidden [B, P, D], keys [N, B, P, H, K], values [N, B, P, H, K]). Padding
  at the end of a row changes nothing before it (causal attention).
  """
  return model_lib.forward(cfg, params, ids_BxP, return_hidden=True, return_kv=True)


def extend(cfg: ModelConfig, params: dict[str, Any], ids_BxT: jax.Array, positions_BxT,
           past_k_NxBxPxHxK, past_v_NxBxPxHxK, past_mask_BxTxP, self_mask_BxTxT):
  """New tokens at `positions` attending to a cache (where past_mask) and to each other
  (where self_mask).

  Returns (final hidden [B, T, D], new keys [N, B, T, H, K], new values [N, B, T, H, K]).
  """
  cache = model_lib.KVCache(past_k_NxBxPxHxK, past_v_NxBxPxHxK, positions_BxT,
                            past_mask_BxTxP, self_mask_BxTxT)
  return model_lib.forward(cfg, params, ids_BxT, return_hidden=True, cache=cache,
                           return_kv=True)


def logits(cfg: ModelConfig, params: dict[str, Any], hidden_xD: jax.Array) -> jax.Array:
  """float32 logits [..., V] of final hidden states (the forward's own head)."""
  return model_lib.head_logits(cfg, params, hidden_xD)
