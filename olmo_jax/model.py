"""OLMo in Flax NNX: the DataDecide ladder, OLMo 1 and OLMo 2 variants.

Each variant's parameters (shapes, logical axes, init) come from its table in params.py;
the block reads the variant's flags for the few lines that differ (norm type and placement,
QK-norm). Layers are stacked along a leading `layers` axis and run with `jax.lax.scan`, so
one block is compiled whatever the depth. Parameters are float32; activations run in the
compute dtype; norms, RoPE and logits run in float32 (the losses: loss.py). On CPU
(`model.platform`) the model takes the XLA:CPU kernels of kernels/cpu.py.

Shape suffixes: B batch, L sequence, D d_model, H heads, K head dim, F MLP hidden (4D by
default), V embedding rows (50304), N layers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from data_pipeline.tokenizer import VOCAB_SIZE
from olmo_jax import params as params_lib
from olmo_jax import sizes
from olmo_jax.kernels import PLATFORMS
from olmo_jax.kernels import cpu as cpu_kernels
from olmo_jax.runtime import resolve_platform
from olmo_jax.sharding import constrain

VARIANTS = tuple(params_lib.VARIANTS)  # the built-in variants (tables in params.py)
REMAT_POLICIES = ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "save_qkv_proj",
                  "full")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "blocked")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Logical axes of activations (sharding.RULES maps them onto the mesh).
EMBED, HEADS, MLP = ("batch", "length", "embed"), ("batch", "length", "heads", "head_dim"), \
    ("batch", "length", "mlp")


def _execution(default):
  """A ModelConfig field that changes how the model runs, not its weights or function."""
  return dataclasses.field(default=default, metadata={"execution": True})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes the model's shapes and numerics.

  The `model` subtree of the training config is derived from these fields
  (config.model_config_dict), and read back by config.model_config.
  """

  variant: str = "ladder"
  d_model: int = 64
  n_heads: int = 8
  n_layers: int = 8
  vocab_size: int = VOCAB_SIZE
  embedding_size: int = sizes.EMBEDDING_SIZE
  mlp_hidden: int = 0  # 0: 4 * d_model (OLMo's mlp_ratio 8, fused and halved)
  max_seq_len: int = sizes.SEQ_LEN  # length of the RoPE table
  rope_theta: float = 0.0  # 0: the variant's default (10k; 500k for OLMo 2)
  norm_eps: float = 0.0  # 0: the variant's default (1e-6 RMSNorm; 1e-5 LayerNorm)
  clip_qkv: float = 0.0  # OLMo 1 option; 0 disables
  init_std: float = 0.02
  dtype: str = _execution("float32")  # compute dtype; params stay float32
  remat: str = _execution("none")  # REMAT_POLICIES
  attention: str = _execution("auto")  # ATTENTION_IMPLS
  scan_layers: bool = _execution(True)
  # The kernels' platform (PLATFORMS): 'auto' = the platform of the devices in use. Tracing
  # for 'gpu' / 'tpu' from a CPU host takes the accelerator path.
  platform: str = _execution("auto")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def hidden(self) -> int:
    return params_lib.mlp_hidden(self.d_model, self.mlp_hidden)

  @property
  def spec(self) -> params_lib.Variant:
    """The variant's parameter table and flags."""
    return params_lib.get(self.variant)

  @property
  def theta(self) -> float:
    return self.rope_theta or self.spec.rope_theta

  @property
  def eps(self) -> float:
    return self.norm_eps or self.spec.norm_eps

  @property
  def on_cpu(self) -> bool:
    """Whether the model takes the XLA:CPU kernels (kernels/cpu.py)."""
    return resolve_platform(self.platform) == "cpu"

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  def validate(self) -> None:
    """Raises ValueError naming the config field (model.*) that is wrong."""
    params_lib.get(self.variant)  # names model.variant and the choices
    for name in ("d_model", "n_heads", "n_layers", "vocab_size", "embedding_size", "max_seq_len"):
      if getattr(self, name) <= 0:
        raise ValueError(f"model.{name}={getattr(self, name)} must be positive")
    if self.mlp_hidden < 0:
      raise ValueError(f"model.mlp_hidden={self.mlp_hidden} must be >= 0 (0: 4 * d_model)")
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
    if self.platform not in PLATFORMS:
      raise ValueError(f"model.platform={self.platform!r} is unknown; choose one of {PLATFORMS}")
    if self.attention not in ATTENTION_IMPLS:
      raise ValueError(f"model.attention={self.attention!r} is unknown; choose one of "
                       f"{ATTENTION_IMPLS}")
    if self.clip_qkv < 0 or self.init_std <= 0 or self.rope_theta < 0 or self.norm_eps < 0:
      raise ValueError("model.clip_qkv, model.rope_theta and model.norm_eps must be >= 0 and "
                       "model.init_std > 0")


# The fields that fix the weights and the function they compute (a checkpoint's identity).
ARCHITECTURE_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig)
                            if not f.metadata.get("execution"))


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


def _norm(spec: params_lib.Variant, eps: float, x, weights: dict, name: str):
  """The variant's norm in float32: RMSNorm with weights[name], or weightless LayerNorm."""
  if spec.norm == "layer":
    return layer_norm_no_affine(x, eps)
  return rms_norm(x, weights[name], eps)


def rope_tables(seq_len: int, head_dim: int, theta: float):
  """cos, sin tables of split-half RoPE: float32 [seq_len, head_dim]."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_LxK2 = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  angles_LxK = jnp.concatenate([angles_LxK2, angles_LxK2], axis=-1)
  return jnp.cos(angles_LxK), jnp.sin(angles_LxK)


def apply_rope(x_BxLxHxK, cos_LxK, sin_LxK):
  """Split-half rotary embedding: x * cos + rotate_half(x) * sin, rotate_half = [-x2, x1].

  The tables are [L, K] (positions 0..L-1) or [B, L, K] (each row at its own positions).
  """
  x32 = x_BxLxHxK.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  if cos_LxK.ndim == 2:
    cos_LxK, sin_LxK = cos_LxK[None], sin_LxK[None]
  cos, sin = cos_LxK[:, :, None, :], sin_LxK[:, :, None, :]
  return (x32 * cos + rotated * sin).astype(x_BxLxHxK.dtype)


def _make_param(p: params_lib.Param, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Param:
  """A parameter as the table declares it (a 'normal' one draws the next params key)."""
  shape = p.shape(params_lib.Dims.of(cfg))
  if p.init == "ones":
    return nnx.Param(jnp.ones(shape, jnp.float32), axes=p.axes)
  return nnx.Param(truncated_normal(cfg.init_std)(rngs.params(), shape), axes=p.axes)


class Blocks(nnx.Module):
  """All transformer blocks, each weight stacked on a leading `layers` axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    # Kernels are [in, out] per layer (HF nn.Linear stores the transpose).
    for p in cfg.spec.block_params:
      setattr(self, p.path[-1], _make_param(p, cfg, rngs))


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


def attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, impl: str, on_cpu: bool | None = None):
  """Causal softmax attention.

  'auto' is 'blocked' on CPU; elsewhere jax.nn.dot_product_attention's own default, which in
  jax 0.10 is XLA's attention on GPUs too (the plan reports the kernel a step lowered to).
  'cudnn' insists (and fails loudly) on cuDNN flash attention; 'xla' is XLA's attention.
  on_cpu: the platform choice (ModelConfig.on_cpu); None asks the devices in use.
  """
  if on_cpu is None:
    on_cpu = resolve_platform() == "cpu"
  if impl == "auto":
    impl = "blocked" if on_cpu else None
  if impl == "blocked":
    return cpu_kernels.blocked_causal_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
  dt = q_BxLxHxK.dtype
  if dt == jnp.float16 and on_cpu:
    # XLA:CPU lacks f16 dots with f32 accumulation; float16 is for GPUs without bf16.
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (t.astype(jnp.float32)
                                       for t in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))
  out = jax.nn.dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, is_causal=True,
                                     implementation=impl)
  return out.astype(dt)


def block_forward(cfg: ModelConfig, x_BxLxD, layer: dict[str, jax.Array], cos_LxK, sin_LxK,
                  attend=None):
  """One transformer block. `layer` holds one layer's weights (no `layers` axis).

  attend(q, k, v) -> o over [B, L, H, K] (after RoPE) replaces causal self-attention: cached
  decoding (forward with a KVCache) attends to past keys and values with it.
  """
  dt = cfg.compute_dtype
  B, L, D = x_BxLxD.shape
  H, K = cfg.n_heads, cfg.head_dim
  spec = cfg.spec
  w = {k: v.astype(dt) for k, v in layer.items() if not k.endswith("norm")}

  def norm(h, name):
    return _norm(spec, cfg.eps, h, layer, name).astype(dt)

  # On CPU one wide matmul beats several narrow ones, and the MLP runs with its written-out
  # backward pass (same values). Elsewhere keep the kernels apart: concatenating
  # tensor-sharded kernels along their sharded axis would reshard.
  fuse = cfg.on_cpu
  matmul = cpu_kernels.linear if fuse else jnp.matmul

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
    if spec.qk_norm:  # over the full projection, before heads and RoPE
      q, k = norm(q, "q_norm"), norm(k, "k_norm")
    q_BxLxHxK = constrain(apply_rope(q.reshape(B, L, H, K), cos_LxK, sin_LxK), HEADS)
    k_BxLxHxK = constrain(apply_rope(k.reshape(B, L, H, K), cos_LxK, sin_LxK), HEADS)
    v_BxLxHxK = constrain(v.reshape(B, L, H, K), HEADS)
    if attend is None:
      o_BxLxHxK = attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, cfg.attention, fuse)
    else:
      o_BxLxHxK = attend(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
    o_BxLxHxK = constrain(o_BxLxHxK, HEADS)
    return _tag(matmul(o_BxLxHxK.reshape(B, L, D), w["wo"]), "out_proj")

  def mlp(h_BxLxD):
    if fuse:
      return cpu_kernels.swiglu_mlp(h_BxLxD, w["w_up"], w["w_gate"], w["w_down"])
    up_BxLxF, gate_BxLxF = project(h_BxLxD, ("w_up", "w_gate"))
    up_BxLxF, gate_BxLxF = constrain(up_BxLxF, MLP), constrain(gate_BxLxF, MLP)
    return (jax.nn.silu(gate_BxLxF) * up_BxLxF) @ w["w_down"]

  if spec.norm_after:
    h = x_BxLxD + norm(attn(x_BxLxD), "post_attn_norm")
    return h + norm(mlp(h), "post_mlp_norm")
  h = x_BxLxD + attn(norm(x_BxLxD, "attn_norm"))
  return h + mlp(norm(h, "mlp_norm"))


class OLMo(nnx.Module):
  """The OLMo decoder: embedding, scanned blocks, final norm, untied head."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    # In table order, which fixes the order the parameters draw their init keys in.
    for p in cfg.spec.params:
      if not p.layered:
        setattr(self, p.name, _make_param(p, cfg, rngs))
      elif p is cfg.spec.block_params[0]:
        self.blocks = Blocks(cfg, rngs=rngs)

  def __call__(self, input_ids_BxL: jax.Array) -> jax.Array:
    """Logits float32 [B, L, V] for int token ids [B, L]."""
    params = nnx.to_pure_dict(nnx.state(self, nnx.Param))
    return forward(self.cfg, params, input_ids_BxL)


def final_norm(cfg: ModelConfig, params: dict[str, Any], x_BxLxD):
  """The norm after the last block, in the compute dtype."""
  return _norm(cfg.spec, cfg.eps, x_BxLxD, params, "final_norm").astype(cfg.compute_dtype)


def head_logits(cfg: ModelConfig, params: dict[str, Any], hidden_xD):
  """float32 logits [..., V] of final hidden states [..., D] through the untied head."""
  head_DxV = params["lm_head"].astype(cfg.compute_dtype)
  if cfg.compute_dtype == jnp.float16 and cfg.on_cpu:
    # XLA:CPU has no f16 x f16 -> f32 dot; the f32 product of the f16 values is the same.
    hidden_xD, head_DxV = hidden_xD.astype(jnp.float32), head_DxV.astype(jnp.float32)
  return jnp.einsum("...d,dv->...v", hidden_xD, head_DxV, preferred_element_type=jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Keys and values of earlier tokens, and which of them (and of each other) new tokens see.

  k, v: [N, B, P, H, K] after RoPE; positions [B, T] of the new tokens; past_mask [B, T, P]
  (the cache entries each new token attends to); self_mask [B, T, T] (which new tokens each
  attends to: causal within one continuation, several continuations may share a row).
  """

  k_NxBxPxHxK: jax.Array
  v_NxBxPxHxK: jax.Array
  positions_BxT: jax.Array
  past_mask_BxTxP: jax.Array
  self_mask_BxTxT: jax.Array


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


def forward(cfg: ModelConfig, params: dict[str, Any], input_ids_BxL: jax.Array,
            return_hidden: bool = False, *, cache: KVCache | None = None,
            return_kv: bool = False):
  """Pure forward over a nested param dict (as nnx.to_pure_dict gives).

  Training, scoring, prefill and decoding all run this function. Returns float32 logits
  [B, L, V] (or the final hidden states [B, L, D] in the compute dtype when return_hidden).
  cache: the new tokens sit at cache.positions and attend to the cached keys and values
  (and to each other) as its masks say; without it the tokens are positions 0..L-1 under
  causal attention. return_kv: also return this call's keys and values, each
  [N, B, L, H, K] after RoPE (a prefill fills a cache with them).
  """
  B, L = input_ids_BxL.shape
  if cache is None and L > cfg.max_seq_len:
    raise ValueError(f"sequence length {L} exceeds model.max_seq_len={cfg.max_seq_len}")
  dt = cfg.compute_dtype
  x_BxLxD = jnp.take(params["embed"], input_ids_BxL, axis=0).astype(dt)
  x_BxLxD = constrain(x_BxLxD, EMBED)
  if cache is None:
    cos_LxK, sin_LxK = rope_tables(L, cfg.head_dim, cfg.theta)
    past = None
  else:
    P = cache.k_NxBxPxHxK.shape[2]
    cos_LxK, sin_LxK = (t[cache.positions_BxT] for t in rope_tables(P + L, cfg.head_dim,
                                                                      cfg.theta))
    mask_BxLxS = jnp.concatenate([cache.past_mask_BxTxP, cache.self_mask_BxTxT], axis=-1)
    past = (cache.k_NxBxPxHxK, cache.v_NxBxPxHxK)

  def body(x, xs):
    layer, past_kv = xs if cache is not None else (xs, None)
    kv = {}

    def attend(q, k, v):
      kv["k"], kv["v"] = k, v
      if past_kv is None:
        return attention(q, k, v, cfg.attention, cfg.on_cpu)
      pk, pv = past_kv
      return _masked_attention(q, jnp.concatenate([pk, k], 1), jnp.concatenate([pv, v], 1),
                               mask_BxLxS)

    hook = attend if (return_kv or past_kv is not None) else None
    y = constrain(block_forward(cfg, x, layer, cos_LxK, sin_LxK, attend=hook), EMBED)
    return y, ((kv["k"], kv["v"]) if return_kv else None)

  if cfg.remat != "none":
    body = jax.checkpoint(body, policy=_remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
  blocks = params["blocks"] if past is None else (params["blocks"], past)
  if cfg.scan_layers:
    x_BxLxD, kv_N = jax.lax.scan(body, x_BxLxD, blocks)
  else:
    outs = []
    for i in range(cfg.n_layers):
      x_BxLxD, out = body(x_BxLxD, jax.tree.map(lambda a: a[i], blocks))
      outs.append(out)
    kv_N = jax.tree.map(lambda *a: jnp.stack(a), *outs) if return_kv else None
  x_BxLxD = final_norm(cfg, params, x_BxLxD)
  out = x_BxLxD if return_hidden else constrain(head_logits(cfg, params, x_BxLxD),
                                                ("batch", "length", "vocab"))
  return (out, *kv_N) if return_kv else out


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


def token_logprobs(logits_xV, targets_xK):
  """(log-probability, is-argmax) of target ids under logits: the one next-token
  log-likelihood of held-out losses (trainer.heldout_sums) and of eval's scorer.

  logits_xV: [..., V] (any float dtype; computed in float32); targets_xK: int [..., K] ids
  scored against the same row of logits. Returns float32 [..., K] = logit[target] -
  logsumexp(logits) (natural log) and bool [..., K] (the target is the row's argmax).
  """
  logits = logits_xV.astype(jnp.float32)
  lse_x1 = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  lp_xK = jnp.take_along_axis(logits, targets_xK, axis=-1) - lse_x1
  return lp_xK, jnp.argmax(logits, axis=-1)[..., None] == targets_xK
