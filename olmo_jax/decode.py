"""Cached forward passes of the OLMo model: a prefill that returns each layer's keys and
values, and an extension of new tokens that attend to such a cache.

Both run the model's own pieces (norms, RoPE, SwiGLU MLP, causal attention from model.py);
only the per-layer keys/values and per-row positions are threaded through. Used by
evaluation to score all choices of a question against one forward pass of the shared
context, and by the greedy decoder. Same values as `model.forward` up to float32 summation
order (tests/test_eval_scorer.py checks it).

Shapes: B batch, P cached (past) length, T new tokens, D d_model, H heads, K head dim,
N layers.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from olmo_jax import model as model_lib
from olmo_jax.model import ModelConfig


def _block(cfg: ModelConfig, x_BxTxD, layer: dict[str, jax.Array], positions_BxT,
           table_len: int, attend: Callable):
  """model.block_forward at per-row positions, attend(q, k, v) doing the attention.

  Returns (output [B, T, D], this block's keys and values [B, T, H, K] after RoPE).
  """
  cos_LxK, sin_LxK = model_lib.rope_tables(table_len, cfg.head_dim, cfg.theta)
  kv = {}

  def keep_kv(q, k, v):
    kv["k"], kv["v"] = k, v
    return attend(q, k, v)

  y = model_lib.block_forward(cfg, x_BxTxD, layer, cos_LxK[positions_BxT],
                              sin_LxK[positions_BxT], attend=keep_kv)
  return y, kv["k"], kv["v"]


def _final_norm(cfg: ModelConfig, params, x_BxTxD):
  return model_lib.final_norm(cfg, params, x_BxTxD)


def prefill(cfg: ModelConfig, params: dict[str, Any], ids_BxP: jax.Array):
  """Causal forward over a (right-padded) context.

  Returns (final hidden [B, P, D], keys [N, B, P, H, K], values [N, B, P, H, K]). Padding
  at the end of a row changes nothing before it (causal attention).
  """
  B, P = ids_BxP.shape
  x = jnp.take(params["embed"], ids_BxP, axis=0).astype(cfg.compute_dtype)
  positions = jnp.broadcast_to(jnp.arange(P), (B, P))
  attend = lambda q, k, v: model_lib.attention(q, k, v, cfg.attention, cfg.on_cpu)

  def body(x, layer):
    y, k, v = _block(cfg, x, layer, positions, P, attend)
    return y, (k, v)

  x, (k_N, v_N) = jax.lax.scan(body, x, params["blocks"])
  return _final_norm(cfg, params, x), k_N, v_N


def _masked_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS):
  """Softmax attention in float32 over the keys that mask_BxTxS allows."""
  scale = 1.0 / jnp.sqrt(jnp.float32(q_BxTxHxK.shape[-1]))
  s = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK,
                 preferred_element_type=jnp.float32) * scale
  s = jnp.where(mask_BxTxS[:, None], s, -jnp.inf)
  p = jax.nn.softmax(s, axis=-1)
  o = jnp.einsum("bhts,bshk->bthk", p.astype(v_BxSxHxK.dtype), v_BxSxHxK,
                 preferred_element_type=jnp.float32)
  return o.astype(q_BxTxHxK.dtype)


def extend(cfg: ModelConfig, params: dict[str, Any], ids_BxT: jax.Array, positions_BxT,
           past_k_NxBxPxHxK, past_v_NxBxPxHxK, past_mask_BxTxP, self_mask_BxTxT):
  """New tokens at `positions` attending to a cache (where past_mask) and to each other
  (where self_mask; causal within one continuation, several continuations may share a row).

  Returns (final hidden [B, T, D], new keys [N, B, T, H, K], new values [N, B, T, H, K]).
  """
  P = past_k_NxBxPxHxK.shape[2]
  T = ids_BxT.shape[1]
  x = jnp.take(params["embed"], ids_BxT, axis=0).astype(cfg.compute_dtype)
  mask = jnp.concatenate([past_mask_BxTxP, self_mask_BxTxT], axis=-1)

  def body(x, xs):
    layer, pk, pv = xs

    def attend(q, k, v):
      return _masked_attention(q, jnp.concatenate([pk, k], 1), jnp.concatenate([pv, v], 1),
                               mask)

    y, k, v = _block(cfg, x, layer, positions_BxT, P + T, attend)
    return y, (k, v)

  x, (k_N, v_N) = jax.lax.scan(body, x, (params["blocks"], past_k_NxBxPxHxK, past_v_NxBxPxHxK))
  return _final_norm(cfg, params, x), k_N, v_N


def logits(cfg: ModelConfig, params: dict[str, Any], hidden_xD: jax.Array) -> jax.Array:
  """float32 logits [..., V] of final hidden states (as model.forward's head)."""
  head = params["lm_head"].astype(cfg.compute_dtype)
  h = hidden_xD
  if cfg.compute_dtype == jnp.float16 and jax.default_backend() == "cpu":
    h, head = h.astype(jnp.float32), head.astype(jnp.float32)
  return jnp.einsum("...d,dv->...v", h, head, preferred_element_type=jnp.float32)
