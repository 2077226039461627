"""XLA:CPU kernels of the model: each computes the plain expression's values, faster on CPU.

The blocked causal attention with its written-out (flash-attention style) backward pass,
`weight_grad` (every weight gradient as a plain matmul), `linear` (a projection whose weight
gradient goes through it) and the SwiGLU MLP with its written-out backward pass. The model
takes them when its `model.platform` resolves to 'cpu' (ModelConfig.on_cpu); tests pin
each one to the plain expression.

Shape suffixes as in model.py: B batch, L sequence, H heads, K head dim, D d_model, F MLP
hidden, T tokens (B * L).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def weight_grad(a_TxP, b_TxQ, preferred_element_type=None):
  """a^T @ b, contracting the leading (token) axis: the shape of every weight gradient.

  Formed as a plain matmul: the smaller operand is transposed explicitly (and, when that is
  `b`, so is the small result), with barriers that keep XLA from folding the transposes back
  into the dot, which XLA:CPU would hand to a slower transposed-operand kernel. 5-20% faster
  for this model's weight-gradient shapes; same values up to float32 summation order.
  """
  keep = jax.lax.optimization_barrier
  if a_TxP.shape[1] <= b_TxQ.shape[1]:
    return jnp.dot(keep(a_TxP.T), b_TxQ, preferred_element_type=preferred_element_type)
  return keep(jnp.dot(keep(b_TxQ.T), a_TxP, preferred_element_type=preferred_element_type)).T


def _query_blocks(L: int, block: int) -> list[tuple[int, int]]:
  return [(start, min(start + block, L)) for start in range(0, L, block)]


def _visible_scores(q_BxHxQxK, k_BxHxMxK, start: int, scale: float, keys_first: bool = False):
  """float32 scores of a query block against keys [0, M), -inf where causally hidden.

  [B, H, Q, M], or [B, H, M, Q] with `keys_first` (the layout the backward pass wants).
  """
  spec = "bhmk,bhqk->bhmq" if keys_first else "bhqk,bhmk->bhqm"
  operands = (k_BxHxMxK, q_BxHxQxK) if keys_first else (q_BxHxQxK, k_BxHxMxK)
  s = jnp.einsum(spec, *operands, preferred_element_type=jnp.float32) * scale
  Q, M = q_BxHxQxK.shape[2], k_BxHxMxK.shape[2]
  visible_QxM = jnp.arange(M)[None, :] <= start + jnp.arange(Q)[:, None]
  return jnp.where(visible_QxM.T if keys_first else visible_QxM, s, -jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _blocked_attention(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, block: int):
  return _blocked_attention_fwd(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, block)[0]


def _blocked_attention_fwd(q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, block):
  L, K = q_BxHxLxK.shape[2:]
  scale = 1.0 / math.sqrt(K)
  outs, lses = [], []
  for start, end in _query_blocks(L, block):
    s = _visible_scores(q_BxHxLxK[:, :, start:end], k_BxHxLxK[:, :, :end], start, scale)
    m = s.max(-1, keepdims=True)
    e = jnp.exp(s - m)
    total = e.sum(-1, keepdims=True)
    # Normalise the [Q, K] output rather than the [Q, M] probabilities: one pass fewer.
    pv = jnp.einsum("bhqm,bhmk->bhqk", e.astype(v_BxHxLxK.dtype), v_BxHxLxK[:, :, :end],
                    preferred_element_type=jnp.float32)
    outs.append((pv / total).astype(v_BxHxLxK.dtype))
    lses.append(m + jnp.log(total))
  o = jnp.concatenate(outs, axis=2)
  return o, (q_BxHxLxK, k_BxHxLxK, v_BxHxLxK, o, jnp.concatenate(lses, axis=2))


def _blocked_attention_bwd(block, res, do_BxHxLxK):
  # Probabilities are recomputed per block from the saved log-sum-exp rather than stored:
  # one extra score matmul instead of a [B, H, L, L] residual per layer. The block's
  # scores are formed transposed ([keys, queries]) so that dK and dV come out of plain
  # (non-transposed) batched matmuls, which XLA:CPU runs much faster; dQ likewise comes out
  # transposed ([K, queries]) from K^T (transposed once) times the transposed score block.
  q, k, v, o, lse = res
  L, K = q.shape[2:]
  scale = 1.0 / math.sqrt(K)
  delta = jnp.sum(do_BxHxLxK.astype(jnp.float32) * o.astype(jnp.float32), -1, keepdims=True)
  t = lambda x: jnp.swapaxes(x, 2, 3)
  # The barrier keeps XLA from folding the transpose back into the dots (as a transposed
  # operand, which XLA:CPU hands to a slower kernel).
  k_BxHxKxL = jax.lax.optimization_barrier(t(k))
  dq_ts = []
  dk = jnp.zeros(k.shape, jnp.float32)
  dv = jnp.zeros(v.shape, jnp.float32)
  for start, end in _query_blocks(L, block):
    q_b, do_b = q[:, :, start:end], do_BxHxLxK[:, :, start:end]
    k_b, v_b = k[:, :, :end], v[:, :, :end]
    p_t = jnp.exp(_visible_scores(q_b, k_b, start, scale, keys_first=True)
                  - t(lse[:, :, start:end]))
    dp_t = jnp.einsum("bhmk,bhqk->bhmq", v_b, do_b, preferred_element_type=jnp.float32)
    ds_t = (p_t * (dp_t - t(delta[:, :, start:end])) * scale).astype(q.dtype)
    dq_ts.append(jnp.einsum("bhkm,bhmq->bhkq", k_BxHxKxL[:, :, :, :end], ds_t))
    pad = ((0, 0), (0, 0), (0, L - end), (0, 0))
    dk = dk + jnp.pad(jnp.einsum("bhmq,bhqk->bhmk", ds_t, q_b, preferred_element_type=jnp.float32),
                      pad)
    dv = dv + jnp.pad(jnp.einsum("bhmq,bhqk->bhmk", p_t.astype(v.dtype), do_b,
                                 preferred_element_type=jnp.float32), pad)
  return t(jnp.concatenate(dq_ts, axis=3)), dk.astype(k.dtype), dv.astype(v.dtype)


_blocked_attention.defvjp(_blocked_attention_fwd, _blocked_attention_bwd)


def blocked_causal_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, block: int = 0):
  """Causal attention over query blocks, each against only the keys it can see.

  Skips the masked upper triangle (about half the work) and keeps the score tiles small
  enough for CPU caches. The backward pass is written out (flash-attention style): it keeps
  only the output and the row log-sum-exp, and recomputes each block's probabilities.
  Same values as full masked softmax attention (float32 scores).
  """
  L = q_BxLxHxK.shape[1]
  block = block or max(64, L // 16)
  t = lambda x: jnp.swapaxes(x, 1, 2)  # [B, L, H, K] <-> [B, H, L, K]
  return t(_blocked_attention(t(q_BxLxHxK), t(k_BxLxHxK), t(v_BxLxHxK), block))


@jax.custom_vjp
def linear(x_BxLxD, w_DxF):
  """x @ w whose weight gradient goes through weight_grad (the CPU projections)."""
  return x_BxLxD @ w_DxF


def _linear_fwd(x_BxLxD, w_DxF):
  return x_BxLxD @ w_DxF, (x_BxLxD, w_DxF)


def _linear_bwd(res, dy_BxLxF):
  x, w_DxF = res
  D, F = w_DxF.shape
  dw = weight_grad(x.reshape(-1, D), dy_BxLxF.reshape(-1, F))
  return dy_BxLxF @ w_DxF.T, dw.astype(w_DxF.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


@jax.custom_vjp
def swiglu_mlp(h_BxLxD, w_up_DxF, w_gate_DxF, w_down_FxD):
  """silu(h @ w_gate) * (h @ w_up) @ w_down, with a written-out backward pass.

  One wide [D, 2F] matmul in the forward pass, and a backward pass of four plain 2-D
  matmuls with the elementwise SwiGLU derivative in between (XLA:CPU runs this faster than
  the generic differentiation of the same graph). Only the input and the [up | gate]
  projection are kept for the backward pass, which recomputes the activation from them.
  Same values as the plain expression.
  """
  return _swiglu_fwd(h_BxLxD, w_up_DxF, w_gate_DxF, w_down_FxD)[0]


def _swiglu_fwd(h_BxLxD, w_up_DxF, w_gate_DxF, w_down_FxD):
  F = w_up_DxF.shape[1]
  w_ug = jnp.concatenate([w_up_DxF, w_gate_DxF], axis=-1)
  ug = h_BxLxD @ w_ug
  up, gate = ug[..., :F], ug[..., F:]
  act = gate * jax.nn.sigmoid(gate) * up  # silu, written so XLA makes one pass of it
  return act @ w_down_FxD, (h_BxLxD, ug, w_ug, w_down_FxD)


def _swiglu_bwd(res, dy_BxLxD):
  h, ug, w_ug, w_down = res
  F = w_down.shape[0]
  T = math.prod(h.shape[:-1])
  h_TxD, dy_TxD = h.reshape(T, -1), dy_BxLxD.reshape(T, -1)
  ug_Tx2xF = ug.reshape(T, 2, F)
  up, gate = ug_Tx2xF[:, :1], ug_Tx2xF[:, 1:]  # [T, 1, F] each
  sig = jax.nn.sigmoid(gate)
  act_TxF = (gate * sig * up).reshape(T, F)
  dw_down = weight_grad(act_TxF, dy_TxD)
  dact_TxF = dy_TxD @ w_down.T
  # d/d[up | gate] as one elementwise expression over [T, 2, F] (a single pass, no concat):
  # d_up = dact * silu(gate), d_gate = dact * up * sig * (1 + gate * (1 - sig)).
  is_up = jax.lax.broadcasted_iota(jnp.int32, (1, 2, 1), 1) == 0
  coef = jnp.where(is_up, gate * sig, up * sig * (1 + gate * (1 - sig)))
  dug = (dact_TxF[:, None, :] * coef).reshape(T, 2 * F)
  dw_ug = weight_grad(h_TxD, dug)
  dh = dug @ w_ug.T
  return dh.reshape(h.shape), dw_ug[:, :F], dw_ug[:, F:], dw_down


swiglu_mlp.defvjp(_swiglu_fwd, _swiglu_bwd)
