"""OLMo in Flax NNX: the DataDecide ladder, OLMo 1 and OLMo 2 variants.

Layers are stacked along a leading `layers` axis and run with `jax.lax.scan`, so one block
is compiled whatever the depth. Parameters are float32; activations run in the compute
dtype; norms, RoPE, logits and the loss run in float32.

Shape suffixes: B batch, L sequence, D d_model, H heads, K head dim, F MLP hidden (4D),
V embedding rows (50304), N layers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from olmo_jax import sizes
from olmo_jax.sharding import constrain

VARIANTS = ("ladder", "olmo1", "olmo2")
REMAT_POLICIES = ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "save_qkv_proj",
                  "full")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "blocked")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Logical axes of activations (sharding.RULES maps them onto the mesh).
EMBED, HEADS, MLP = ("batch", "length", "embed"), ("batch", "length", "heads", "head_dim"), \
    ("batch", "length", "mlp")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes the model's shapes and numerics."""

  variant: str = "ladder"
  d_model: int = 64
  n_heads: int = 8
  n_layers: int = 8
  vocab_size: int = sizes.VOCAB_SIZE
  embedding_size: int = sizes.EMBEDDING_SIZE
  mlp_hidden: int = 0  # 0: 4 * d_model (OLMo's mlp_ratio 8, fused and halved)
  max_seq_len: int = sizes.SEQ_LEN  # length of the RoPE table
  rope_theta: float = 0.0  # 0: the variant's default (10k; 500k for OLMo 2)
  norm_eps: float = 0.0  # 0: the variant's default (1e-6 RMSNorm; 1e-5 LayerNorm)
  clip_qkv: float = 0.0  # OLMo 1 option; 0 disables
  init_std: float = 0.02
  dtype: str = "float32"  # compute dtype
  remat: str = "none"
  attention: str = "auto"
  scan_layers: bool = True

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def hidden(self) -> int:
    return self.mlp_hidden or 4 * self.d_model

  @property
  def theta(self) -> float:
    return self.rope_theta or (500_000.0 if self.variant == "olmo2" else 10_000.0)

  @property
  def eps(self) -> float:
    return self.norm_eps or (1e-5 if self.variant == "olmo1" else 1e-6)

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  def validate(self) -> None:
    """Raises ValueError naming the config field (model.*) that is wrong."""
    if self.variant not in VARIANTS:
      raise ValueError(f"model.variant={self.variant!r} is unknown; choose one of {VARIANTS}")
    for name in ("d_model", "n_heads", "n_layers", "vocab_size", "embedding_size", "max_seq_len"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name}={getattr(self, name)} must be positive")
    if self.d_model % self.n_heads:
      raise ValueError(f"model.n_heads={self.n_heads} does not divide model.d_model="
                       f"{self.d_model}")
    if self.head_dim % 2:
      raise ValueError(f"head dim d_model/n_heads={self.head_dim} must be even for RoPE")
    if self.embedding_size < self.vocab_size:
      raise ValueError(f"model.embedding_size={self.embedding_size} is smaller than "
                       f"model.vocab_size={self.vocab_size}")
    if self.dtype not in DTYPES:
      raise ValueError(f"model.dtype={self.dtype!r} is unknown; choose one of {list(DTYPES)}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat={self.remat!r} is unknown; choose one of {REMAT_POLICIES}")
    if self.attention not in ATTENTION_IMPLS:
      raise ValueError(f"model.attention={self.attention!r} is unknown; choose one of "
                       f"{ATTENTION_IMPLS}")
    if self.clip_qkv < 0 or self.init_std <= 0 or self.rope_theta < 0 or self.norm_eps < 0:
      raise ValueError("model.clip_qkv, model.rope_theta and model.norm_eps must be >= 0 and "
                       "model.init_std > 0")


def truncated_normal(std: float):
  """OLMo's init: normal(0, std) truncated at +-3 std (std is the untruncated one)."""
  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.truncated_normal(key, -3.0, 3.0, shape, dtype)
  return init


def rms_norm(x, weight, eps):
  """RMSNorm in float32: x / rms(x) * weight. x: [..., D]; weight: [D] or None."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  if weight is not None:
    y = y * weight.astype(jnp.float32)
  return y


def layer_norm_no_affine(x, eps):
  """OLMo 1's LayerNorm without weight or bias, in float32. x: [..., D]."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(var + eps)


def rope_tables(seq_len: int, head_dim: int, theta: float):
  """cos, sin tables of split-half RoPE: float32 [seq_len, head_dim]."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_LxK2 = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  angles_LxK = jnp.concatenate([angles_LxK2, angles_LxK2], axis=-1)
  return jnp.cos(angles_LxK), jnp.sin(angles_LxK)


def apply_rope(x_BxLxHxK, cos_LxK, sin_LxK):
  """Split-half rotary embedding: x * cos + rotate_half(x) * sin, rotate_half = [-x2, x1]."""
  x32 = x_BxLxHxK.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  cos, sin = cos_LxK[None, :, None, :], sin_LxK[None, :, None, :]
  return (x32 * cos + rotated * sin).astype(x_BxLxHxK.dtype)


def _param(rngs, init, shape, axes):
  return nnx.Param(init(rngs.params(), shape), axes=axes)


def _ones(shape, axes):
  return nnx.Param(jnp.ones(shape, jnp.float32), axes=axes)


class Blocks(nnx.Module):
  """All transformer blocks, each weight stacked on a leading `layers` axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    n, d, f = cfg.n_layers, cfg.d_model, cfg.hidden
    init = truncated_normal(cfg.init_std)
    # Kernels are [in, out] per layer (HF nn.Linear stores the transpose).
    self.wq = _param(rngs, init, (n, d, d), ("layers", "embed", "q_heads"))
    self.wk = _param(rngs, init, (n, d, d), ("layers", "embed", "kv_heads"))
    self.wv = _param(rngs, init, (n, d, d), ("layers", "embed", "kv_heads"))
    self.wo = _param(rngs, init, (n, d, d), ("layers", "q_heads", "embed"))
    self.w_up = _param(rngs, init, (n, d, f), ("layers", "embed", "mlp"))
    self.w_gate = _param(rngs, init, (n, d, f), ("layers", "embed", "mlp"))
    self.w_down = _param(rngs, init, (n, f, d), ("layers", "mlp", "embed"))
    if cfg.variant == "ladder":
      self.attn_norm = _ones((n, d), ("layers", "norm"))
      self.mlp_norm = _ones((n, d), ("layers", "norm"))
    elif cfg.variant == "olmo2":
      self.q_norm = _ones((n, d), ("layers", "norm"))
      self.k_norm = _ones((n, d), ("layers", "norm"))
      self.post_attn_norm = _ones((n, d), ("layers", "norm"))
      self.post_mlp_norm = _ones((n, d), ("layers", "norm"))


# Activations tagged for the named remat presets.
def _tag(x, name):
  return checkpoint_name(x, name)


def _remat_policy(name: str):
  cp = jax.checkpoint_policies
  return {
      "dots_saveable": cp.dots_saveable,
      "dots_with_no_batch_dims_saveable": cp.dots_with_no_batch_dims_saveable,
      "save_qkv_proj": cp.save_only_these_names("query_proj", "key_proj", "value_proj",
                                                "out_proj"),
      "full": cp.nothing_saveable,
  }[name]


def weight_grad(a_TxP, b_TxQ, preferred_element_type=None):
  """a^T @ b, contracting the leading (token) axis: the shape of every weight gradient.

  On CPU the product is formed as a plain matmul: the smaller operand is transposed
  explicitly (and, when that is `b`, so is the small result), with barriers that keep XLA
  from folding the transposes back into the dot, which it would hand to a slower
  transposed-operand kernel. 5-20% faster for this model's weight-gradient shapes; same
  values up to float32 summation order.
  """
  if jax.default_backend() != "cpu":
    return jnp.dot(a_TxP.T, b_TxQ, preferred_element_type=preferred_element_type)
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


def attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, impl: str):
  """Causal softmax attention.

  'auto' is 'blocked' on CPU; elsewhere jax.nn.dot_product_attention picks cuDNN flash
  attention where it supports the shapes and dtype (GPU, bf16/fp16) and XLA otherwise.
  'cudnn' insists (and fails loudly) on cuDNN; 'xla' is XLA's fused attention.
  """
  if impl == "auto":
    impl = "blocked" if jax.default_backend() == "cpu" else None
  if impl == "blocked":
    return blocked_causal_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
  dt = q_BxLxHxK.dtype
  if dt == jnp.float16 and jax.default_backend() == "cpu":
    # XLA:CPU lacks f16 dots with f32 accumulation; float16 is for GPUs without bf16.
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (t.astype(jnp.float32)
                                       for t in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))
  out = jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, is_causal=True,
                                     implementation=impl)
  return out.astype(dt)


def block_forward(cfg: ModelConfig, x_BxLxD, layer: dict[str, jax.Array], cos_LxK, sin_LxK):
  """One transformer block. `layer` holds one layer's weights (no `layers` axis)."""
  dt = cfg.compute_dtype
  B, L, D = x_BxLxD.shape
  H, K = cfg.n_heads, cfg.head_dim
  w = {k: v.astype(dt) for k, v in layer.items() if not k.endswith("norm")}

  def norm(h, name):
    if cfg.variant == "olmo1":
      return layer_norm_no_affine(h, cfg.eps).astype(dt)
    return rms_norm(h, layer[name], cfg.eps).astype(dt)

  # On CPU one wide matmul beats several narrow ones, and the MLP runs with its written-out
  # backward pass (same values). Elsewhere keep the kernels apart: concatenating
  # tensor-sharded kernels along their sharded axis would reshard.
  fuse = jax.default_backend() == "cpu"
  matmul = linear if fuse else jnp.matmul

  def project(h, names):
    if not fuse:
      return [h @ w[n] for n in names]
    return jnp.split(matmul(h, jnp.concatenate([w[n] for n in names], axis=-1)), len(names),
                     axis=-1)

  def attn(h_BxLxD):
    q, k, v = project(h_BxLxD, ("wq", "wk", "wv"))
    q, k, v = _tag(q, "query_proj"), _tag(k, "key_proj"), _tag(v, "value_proj")
    if cfg.clip_qkv:
      q, k, v = (jnp.clip(t, -cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
    if cfg.variant == "olmo2":  # QK-norm over the full projection, before heads and RoPE
      q, k = norm(q, "q_norm"), norm(k, "k_norm")
    q_BxLxHxK = constrain(apply_rope(q.reshape(B, L, H, K), cos_LxK, sin_LxK), HEADS)
    k_BxLxHxK = constrain(apply_rope(k.reshape(B, L, H, K), cos_LxK, sin_LxK), HEADS)
    v_BxLxHxK = constrain(v.reshape(B, L, H, K), HEADS)
    o_BxLxHxK = constrain(attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, cfg.attention), HEADS)
    return _tag(matmul(o_BxLxHxK.reshape(B, L, D), w["wo"]), "out_proj")

  def mlp(h_BxLxD):
    if fuse:
      return swiglu_mlp(h_BxLxD, w["w_up"], w["w_gate"], w["w_down"])
    up_BxLxF, gate_BxLxF = project(h_BxLxD, ("w_up", "w_gate"))
    up_BxLxF, gate_BxLxF = constrain(up_BxLxF, MLP), constrain(gate_BxLxF, MLP)
    return (jax.nn.silu(gate_BxLxF) * up_BxLxF) @ w["w_down"]

  if cfg.variant == "olmo2":
    h = x_BxLxD + norm(attn(x_BxLxD), "post_attn_norm")
    return h + norm(mlp(h), "post_mlp_norm")
  h = x_BxLxD + attn(norm(x_BxLxD, "attn_norm"))
  return h + mlp(norm(h, "mlp_norm"))


class OLMo(nnx.Module):
  """The OLMo decoder: embedding, scanned blocks, final norm, untied head."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    init = truncated_normal(cfg.init_std)
    self.embed = _param(rngs, init, (cfg.embedding_size, cfg.d_model), ("vocab", "embed"))
    self.blocks = Blocks(cfg, rngs=rngs)
    if cfg.variant != "olmo1":
      self.final_norm = _ones((cfg.d_model,), ("norm",))
    self.lm_head = _param(rngs, init, (cfg.d_model, cfg.embedding_size), ("embed", "vocab"))

  def __call__(self, input_ids_BxL: jax.Array) -> jax.Array:
    """Logits float32 [B, L, V] for int token ids [B, L]."""
    params = nnx.to_pure_dict(nnx.state(self, nnx.Param))
    return forward(self.cfg, params, input_ids_BxL)


def forward(cfg: ModelConfig, params: dict[str, Any], input_ids_BxL: jax.Array,
            return_hidden: bool = False) -> jax.Array:
  """Pure forward over a nested param dict (as nnx.to_pure_dict gives).

  Returns float32 logits [B, L, V] (or the final hidden states [B, L, D] in the
  compute dtype when return_hidden).
  """
  B, L = input_ids_BxL.shape
  if L > cfg.max_seq_len:
    raise ValueError(f"sequence length {L} exceeds model.max_seq_len={cfg.max_seq_len}")
  dt = cfg.compute_dtype
  x_BxLxD = jnp.take(params["embed"], input_ids_BxL, axis=0).astype(dt)
  x_BxLxD = constrain(x_BxLxD, EMBED)
  cos_LxK, sin_LxK = rope_tables(L, cfg.head_dim, cfg.theta)
  blocks = params["blocks"]

  def body(x, layer):
    return constrain(block_forward(cfg, x, layer, cos_LxK, sin_LxK), EMBED), None

  if cfg.remat != "none":
    body = jax.checkpoint(body, policy=_remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    x_BxLxD, _ = jax.lax.scan(body, x_BxLxD, blocks)
  else:
    for i in range(cfg.n_layers):
      x_BxLxD, _ = body(x_BxLxD, jax.tree.map(lambda a: a[i], blocks))
  if cfg.variant == "olmo1":
    x_BxLxD = layer_norm_no_affine(x_BxLxD, cfg.eps).astype(dt)
  else:
    x_BxLxD = rms_norm(x_BxLxD, params["final_norm"], cfg.eps).astype(dt)
  if return_hidden:
    return x_BxLxD
  head_DxV = params["lm_head"].astype(dt)
  if dt == jnp.float16 and jax.default_backend() == "cpu":
    # XLA:CPU has no f16 x f16 -> f32 dot; the f32 product of the f16 values is the same.
    x_BxLxD, head_DxV = x_BxLxD.astype(jnp.float32), head_DxV.astype(jnp.float32)
  logits_BxLxV = jnp.einsum("bld,dv->blv", x_BxLxD, head_DxV, preferred_element_type=jnp.float32)
  return constrain(logits_BxLxV, ("batch", "length", "vocab"))


def param_axes(model: OLMo) -> dict[str, Any]:
  """Nested dict (like the params) of logical axis-name tuples for every parameter."""
  state = nnx.state(model, nnx.Param)
  axes = jax.tree.map(lambda v: v.get_metadata()["axes"], state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(axes) if not isinstance(axes, dict) else axes


def count_params(params, exclude_input_embedding: bool = False) -> int:
  """Number of scalar parameters (optionally without the input embedding, as N counts)."""
  total = sum(int(math.prod(x.shape)) for x in jax.tree.leaves(params))
  if exclude_input_embedding:
    total -= int(math.prod(params["embed"].shape))
  return total


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


def _head_loss_chunks(h_TxD, w_DxV, targets_T, z_loss: float, chunk: int, with_grads: bool):
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
    dw_acc = dw_acc + weight_grad(h_c, d_CxV, preferred_element_type=jnp.float32)
    return dw_acc, (nll, lse2, dh_c)

  dw0 = jnp.zeros((D, V), jnp.float32) if with_grads else None
  dw, (nll, lse2, dh) = jax.lax.scan(body, dw0, (hs, ys))
  dh = dh.reshape(T, D) if with_grads else None
  return nll.sum(), lse2.sum(), dh, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _fused_loss(h_TxD, w_DxV, targets_T, z_loss, chunk):
  nll, lse2, _, _ = _head_loss_chunks(h_TxD, w_DxV, targets_T, z_loss, chunk, False)
  T = h_TxD.shape[0]
  return (nll + z_loss * lse2) / T, nll / T, lse2 / T


def _fused_loss_fwd(h_TxD, w_DxV, targets_T, z_loss, chunk):
  # The loss is a scalar at the end of the graph, so its gradients are computed in the
  # forward sweep (one pass over the logits instead of two) and only scaled in backward.
  nll, lse2, dh, dw = _head_loss_chunks(h_TxD, w_DxV, targets_T, z_loss, chunk, True)
  T = h_TxD.shape[0]
  out = ((nll + z_loss * lse2) / T, nll / T, lse2 / T)
  return out, (dh, dw.astype(w_DxV.dtype), np.zeros(targets_T.shape, jax.dtypes.float0))


def _fused_loss_bwd(z_loss, chunk, res, g):
  dh, dw, dy = res
  g_loss = g[0]  # 'ce' and 'z_loss' are reported metrics, not differentiated
  return (dh * g_loss.astype(dh.dtype), dw * g_loss, dy)


_fused_loss.defvjp(_fused_loss_fwd, _fused_loss_bwd)


def fused_head_loss(hidden_BxLxD, lm_head_DxV, targets_BxL, z_loss: float = 0.0,
                    chunk_tokens: int = 256):
  """Mean next-token loss from final hidden states, without materialising the logits.

  Same value as cross_entropy(hidden @ lm_head, targets) (float32 logits and softmax),
  computed over chunks of `chunk_tokens` tokens. Only the returned loss is differentiable.
  Returns (loss, {"ce", "z_loss"}).
  """
  B, L, D = hidden_BxLxD.shape
  T = B * L
  loss, ce, zl = _fused_loss(hidden_BxLxD.reshape(T, D), lm_head_DxV,
                             targets_BxL.reshape(T).astype(jnp.int32), float(z_loss),
                             _chunk_size(T, chunk_tokens))
  return loss, {"ce": ce, "z_loss": zl}
