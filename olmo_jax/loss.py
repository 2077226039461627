"""The training losses: next-token cross entropy on logits, and the fused head + loss that
never materialises the [tokens, vocabulary] logits (chunked, with its gradients computed in
the forward sweep). Both in float32 with OLMo's z-loss (z_loss * mean(logsumexp^2)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from olmo_jax.kernels import cpu as cpu_kernels
from olmo_jax.runtime import resolve_platform


def cross_entropy(logits_BxLxV, targets_BxL, z_loss: float = 0.0, mask_BxL=None):
  """Mean next-token cross entropy in float32 (+ z_loss * mean(logsumexp^2)).

  Returns (loss, metrics dict with 'ce' and 'z_loss').
  """
  logits = logits_BxLxV.astype(jnp.float32)
  lse_BxL = jax.nn.logsumexp(logits, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  nll_BxL = lse_BxL - target_logit_BxL
  if mask_BxL is None:
    mask_BxL = jnp.ones_like(nll_BxL)
  denom = jnp.maximum(mask_BxL.sum(), 1.0)
  ce = (nll_BxL * mask_BxL).sum() / denom
  zl = (jnp.square(lse_BxL) * mask_BxL).sum() / denom
  loss = ce + z_loss * zl if z_loss else ce
  return loss, {"ce": ce, "z_loss": zl}



def _chunk_size(n_tokens: int, requested: int) -> int:
  """Largest divisor of n_tokens that is <= requested (so chunks tile the tokens exactly)."""
  c = max(1, min(requested, n_tokens))
  while n_tokens % c:
    c -= 1
  return c


def _head_loss_chunks(h_TxD, w_DxV, targets_T, z_loss: float, chunk: int, with_grads: bool,
                      on_cpu: bool):
  """Scans token chunks through head + softmax cross entropy, never holding [T, V] logits.

  Returns (sum_nll, sum_lse2, dh [T, D] or None, dw [D, V] f32 or None); the gradients are
  those of the MEAN loss (sum_nll + z_loss * sum_lse2) / T.
  """
  T, D = h_TxD.shape
  V = w_DxV.shape[1]
  dt = h_TxD.dtype
  w = w_DxV.astype(dt)
  n = T // chunk
  hs, ys = h_TxD.reshape(n, chunk, D), targets_T.reshape(n, chunk)

  def body(dw_acc, xs):
    h_c, y_c = xs
    logits_CxV = jnp.dot(h_c, w, preferred_element_type=jnp.float32)
    m = jax.lax.stop_gradient(logits_CxV.max(-1, keepdims=True))
    e_CxV = jnp.exp(logits_CxV - m)
    s = e_CxV.sum(-1, keepdims=True)
    lse_Cx1 = m + jnp.log(s)
    tgt = jnp.take_along_axis(logits_CxV, y_c[:, None], axis=-1)[:, 0]
    nll, lse2 = (lse_Cx1[:, 0] - tgt).sum(), jnp.square(lse_Cx1[:, 0]).sum()
    if not with_grads:
      return dw_acc, (nll, lse2, None)
    # d(nll + z * lse^2)/dlogits = softmax * (1 + 2 z lse) - onehot(target), for the mean.
    p_CxV = e_CxV / s
    if z_loss:
      p_CxV = p_CxV * (1.0 + 2.0 * z_loss * lse_Cx1)
    is_target = jax.lax.broadcasted_iota(jnp.int32, (chunk, V), 1) == y_c[:, None]
    d_CxV = (jnp.where(is_target, p_CxV - 1.0, p_CxV) / T).astype(dt)
    dh_c = jnp.dot(d_CxV, w.T, preferred_element_type=jnp.float32).astype(dt)
    if on_cpu:
      dw_acc = dw_acc + cpu_kernels.weight_grad(h_c, d_CxV, preferred_element_type=jnp.float32)
    else:
      dw_acc = dw_acc + jnp.dot(h_c.T, d_CxV, preferred_element_type=jnp.float32)
    return dw_acc, (nll, lse2, dh_c)

  dw0 = jnp.zeros((D, V), jnp.float32) if with_grads else None
  dw, (nll, lse2, dh) = jax.lax.scan(body, dw0, (hs, ys))
  dh = dh.reshape(T, D) if with_grads else None
  return nll.sum(), lse2.sum(), dh, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused_loss(h_TxD, w_DxV, targets_T, z_loss, chunk, on_cpu):
  nll, lse2, _, _ = _head_loss_chunks(h_TxD, w_DxV, targets_T, z_loss, chunk, False, on_cpu)
  T = h_TxD.shape[0]
  return (nll + z_loss * lse2) / T, nll / T, lse2 / T


def _fused_loss_fwd(h_TxD, w_DxV, targets_T, z_loss, chunk, on_cpu):
  # The loss is a scalar at the end of the graph, so its gradients are computed in the
  # forward sweep (one pass over the logits instead of two) and only scaled in backward.
  nll, lse2, dh, dw = _head_loss_chunks(h_TxD, w_DxV, targets_T, z_loss, chunk, True, on_cpu)
  T = h_TxD.shape[0]
  out = ((nll + z_loss * lse2) / T, nll / T, lse2 / T)
  return out, (dh, dw.astype(w_DxV.dtype), np.zeros(targets_T.shape, jax.dtypes.float0))


def _fused_loss_bwd(z_loss, chunk, on_cpu, res, g):
  dh, dw, dy = res
  g_loss = g[0]  # 'ce' and 'z_loss' are reported metrics, not differentiated
  return (dh * g_loss.astype(dh.dtype), dw * g_loss, dy)


_fused_loss.defvjp(_fused_loss_fwd, _fused_loss_bwd)


def fused_head_loss(hidden_BxLxD, lm_head_DxV, targets_BxL, z_loss: float = 0.0,
                    chunk_tokens: int = 256, platform: str = "auto"):
  """Mean next-token loss from final hidden states, without materialising the logits.

  Same value as cross_entropy(hidden @ lm_head, targets) (float32 logits and softmax),
  computed over chunks of `chunk_tokens` tokens. Only the returned loss is differentiable.
  platform: the model's (ModelConfig.platform). Returns (loss, {"ce", "z_loss"}).
  """
  B, L, D = hidden_BxLxD.shape
  T = B * L
  loss, ce, zl = _fused_loss(hidden_BxLxD.reshape(T, D), lm_head_DxV,
                             targets_BxL.reshape(T).astype(jnp.int32), float(z_loss),
                             _chunk_size(T, chunk_tokens), resolve_platform(platform) == "cpu")
  return loss, {"ce": ce, "z_loss": zl}
