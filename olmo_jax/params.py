"""One declarative parameter table per model variant: what each weight is and where it lives.

Everything that knows the parameter layout reads these tables: the model's parameter creation
and logical axes (model.py), the HF export, both HF imports and the shape checks (hf.py), the
parameter counts (sizes.py) and the weight-decay mask (optim.py). A new variant is one
`Variant` here plus, if its block computes differently, the few lines of
`model.block_forward` that read its flags (`norm`, `norm_after`, `qk_norm`).

Shapes are written in symbols: N layers, D d_model, F MLP hidden width, V embedding rows.
Our kernels are [in, out] and per-layer weights are stacked on a leading N axis; HF
nn.Linear weights are [out, in] (`transpose`), one tensor per layer ('{i}' in the key).
Pure Python (no JAX), so sizes.py and the configs import it cheaply.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator

MLP_RATIO = 8  # OLMo's fused SwiGLU input projection d -> 8d, i.e. hidden width 4d
NORM_TYPES = ("rms", "layer")  # RMSNorm with a weight; LayerNorm without weight or bias
DECAY_GROUPS = ("weight", "norm", "embedding")
INPUT_EMBEDDING = "embed"  # the parameter N leaves out (DataDecide's count)


def mlp_hidden(d_model: int, mlp_hidden: int = 0) -> int:
  """The SwiGLU hidden width F: `mlp_hidden`, or OLMo's default 4 * d_model when it is 0."""
  return mlp_hidden or MLP_RATIO // 2 * d_model


@dataclasses.dataclass(frozen=True)
class Dims:
  """The sizes the shape symbols stand for."""

  N: int  # layers
  D: int  # d_model
  F: int  # MLP hidden width
  V: int  # embedding rows (vocabulary padded)

  @classmethod
  def of(cls, cfg) -> Dims:
    """Of a ModelConfig (or anything with n_layers, d_model, hidden, embedding_size)."""
    return cls(cfg.n_layers, cfg.d_model, cfg.hidden, cfg.embedding_size)


@dataclasses.dataclass(frozen=True)
class Param:
  """One parameter: our name, shape and axes, and its tensors in the HF and hf_olmo formats."""

  name: str  # path in the nested param dict, '.'-separated: 'blocks.wq' is params['blocks']['wq']
  dims: tuple[str, ...]  # shape in symbols of Dims; a leading 'N' stacks one tensor per layer
  axes: tuple[str, ...]  # logical axis names (keys of sharding.RULES)
  hf: str  # HF tensor name; '{i}' is the layer index
  hf_olmo: str | None = None  # AllenAI hf_olmo tensor name, after its 'transformer.' prefix
  # (k, n): this parameter is the k-th of n equal row blocks of a fused hf_olmo tensor.
  hf_olmo_part: tuple[int, int] = (0, 1)
  hf_olmo_unfused: str | None = None  # its own tensor when hf_olmo block_type='llama'
  transpose: bool = False  # the HF / hf_olmo tensor is the transpose of ours (per layer)
  init: str = "normal"  # 'normal': truncated normal(0, init_std); 'ones'
  decay: str = "weight"  # weight-decay group (optim.WEIGHT_DECAY_MASKS): weight | norm | embedding
  tied_to: str | None = None  # checkpoints with tied embeddings omit it: use this param, transposed

  def __post_init__(self):
    if len(self.dims) != len(self.axes):
      raise ValueError(f"param {self.name}: dims {self.dims} and axes {self.axes} differ in rank")
    if self.layered != ("{i}" in self.hf):
      raise ValueError(f"param {self.name}: a per-layer param ('N' first) needs '{{i}}' in its "
                       f"HF key and only it may have one (got {self.hf!r})")
    if self.init not in ("normal", "ones") or self.decay not in DECAY_GROUPS:
      raise ValueError(f"param {self.name}: init={self.init!r} / decay={self.decay!r} unknown")

  @property
  def layered(self) -> bool:
    return self.dims[:1] == ("N",)

  @property
  def path(self) -> tuple[str, ...]:
    return tuple(self.name.split("."))

  def shape(self, dims: Dims) -> tuple[int, ...]:
    """Our shape (layers stacked)."""
    return tuple(getattr(dims, s) for s in self.dims)

  def hf_shape(self, dims: Dims) -> tuple[int, ...]:
    """Shape of one HF tensor (one layer's, transposed where HF transposes)."""
    shape = self.shape(dims)[1 if self.layered else 0:]
    return shape[::-1] if self.transpose else shape

  def keys(self, template: str, n_layers: int) -> list[str]:
    """The tensor names of `template` ('{i}' filled in for each layer)."""
    return [template.format(i=i) for i in range(n_layers)] if self.layered else [template]


@dataclasses.dataclass(frozen=True)
class Variant:
  """A model variant: its parameter table, the block's numerics flags and its HF identity."""

  name: str
  params: tuple[Param, ...]  # in creation order: the init RNG stream is drawn in this order
  norm: str  # NORM_TYPES: 'rms' (weights named in the table) or 'layer' (weightless)
  norm_after: bool  # norms on the attention / MLP outputs (OLMo 2) instead of their inputs
  qk_norm: bool  # norms over the full q and k projections, before heads and RoPE
  rope_theta: float  # the default of model.rope_theta (0)
  norm_eps: float  # the default of model.norm_eps (0)
  hf_architecture: str  # transformers class
  hf_model_type: str
  hf_default_eps: float = 1e-6  # eps of the HF config class when config.json names none
  hf_fixed_eps: float | None = None  # HF hard-codes the norm eps (no config field)
  hf_clip_qkv: bool = False  # the HF class supports clip_qkv
  hf_extra: Callable[[Any], dict] | None = None  # more config.json fields of the HF class
  has_hf_olmo: bool = True  # AllenAI's hf_olmo format can hold it (every param has hf_olmo)

  def __post_init__(self):
    names = [p.name for p in self.params]
    if len(set(names)) != len(names) or self.norm not in NORM_TYPES:
      raise ValueError(f"variant {self.name}: duplicate param names or unknown norm {self.norm}")
    layered = [p.layered for p in self.params]
    first, last = layered.index(True), len(layered) - layered[::-1].index(True)
    if not all(layered[first:last]):
      raise ValueError(f"variant {self.name}: per-layer params must be contiguous in the table")
    if self.has_hf_olmo and any(p.hf_olmo is None for p in self.params):
      raise ValueError(f"variant {self.name}: has_hf_olmo needs an hf_olmo key for every param")

  def __getitem__(self, name: str) -> Param:
    for p in self.params:
      if p.name == name:
        return p
    raise KeyError(f"variant {self.name} has no parameter {name!r}")

  def __contains__(self, name: str) -> bool:
    return any(p.name == name for p in self.params)

  @property
  def block_params(self) -> tuple[Param, ...]:
    return tuple(p for p in self.params if p.layered)


# ----------------------------------------------------------------------------------------
# The tables


def _layer(leaf, dims, axes, hf, hf_olmo, **kw) -> Param:
  """A per-layer parameter blocks.<leaf> (HF: model.layers.{i}.<hf>)."""
  return Param(f"blocks.{leaf}", ("N", *dims), ("layers", *axes), f"model.layers.{{i}}.{hf}",
               f"blocks.{{i}}.{hf_olmo}", **kw)


def _kernel(leaf, dims, axes, hf, hf_olmo, **kw) -> Param:
  return _layer(leaf, dims, axes, hf, hf_olmo, transpose=True, **kw)


def _norm(leaf, hf, hf_olmo) -> Param:
  return _layer(leaf, ("D",), ("norm",), hf, hf_olmo, init="ones", decay="norm")


EMBED = Param(INPUT_EMBEDDING, ("V", "D"), ("vocab", "embed"), "model.embed_tokens.weight",
              "wte.weight", decay="embedding")
# hf_olmo's att_proj stacks q, k, v along its output rows; block_type 'llama' keeps them apart.
ATTENTION = (
    _kernel("wq", ("D", "D"), ("embed", "q_heads"), "self_attn.q_proj.weight", "att_proj.weight",
            hf_olmo_part=(0, 3), hf_olmo_unfused="blocks.{i}.q_proj.weight"),
    _kernel("wk", ("D", "D"), ("embed", "kv_heads"), "self_attn.k_proj.weight", "att_proj.weight",
            hf_olmo_part=(1, 3), hf_olmo_unfused="blocks.{i}.k_proj.weight"),
    _kernel("wv", ("D", "D"), ("embed", "kv_heads"), "self_attn.v_proj.weight", "att_proj.weight",
            hf_olmo_part=(2, 3), hf_olmo_unfused="blocks.{i}.v_proj.weight"),
    _kernel("wo", ("D", "D"), ("q_heads", "embed"), "self_attn.o_proj.weight", "attn_out.weight"),
)
# SwiGLU: silu(h @ w_gate) * (h @ w_up) @ w_down. hf_olmo's ff_proj is [up; gate]: the FIRST
# half of its output rows is the up projection, the SECOND half the gate.
MLP = (
    _kernel("w_up", ("D", "F"), ("embed", "mlp"), "mlp.up_proj.weight", "ff_proj.weight",
            hf_olmo_part=(0, 2)),
    _kernel("w_gate", ("D", "F"), ("embed", "mlp"), "mlp.gate_proj.weight", "ff_proj.weight",
            hf_olmo_part=(1, 2)),
    _kernel("w_down", ("F", "D"), ("mlp", "embed"), "mlp.down_proj.weight", "ff_out.weight"),
)
FINAL_NORM = Param("final_norm", ("D",), ("norm",), "model.norm.weight", "ln_f.weight",
                   init="ones", decay="norm")
LM_HEAD = Param("lm_head", ("D", "V"), ("embed", "vocab"), "lm_head.weight", "ff_out.weight",
                transpose=True, tied_to=INPUT_EMBEDDING)


def _llama_extra(cfg) -> dict:
  return {"head_dim": cfg.head_dim, "mlp_bias": False, "pretraining_tp": 1}


LADDER = Variant(
    "ladder",
    (EMBED, *ATTENTION, *MLP,
     _norm("attn_norm", "input_layernorm.weight", "attn_norm.weight"),
     _norm("mlp_norm", "post_attention_layernorm.weight", "ff_norm.weight"),
     FINAL_NORM, LM_HEAD),
    norm="rms", norm_after=False, qk_norm=False, rope_theta=10_000.0, norm_eps=1e-6,
    hf_architecture="LlamaForCausalLM", hf_model_type="llama", hf_default_eps=1e-6,
    hf_extra=_llama_extra)

OLMO1 = Variant(
    "olmo1", (EMBED, *ATTENTION, *MLP, LM_HEAD),
    norm="layer", norm_after=False, qk_norm=False, rope_theta=10_000.0, norm_eps=1e-5,
    # HF's OlmoLayerNorm hard-codes eps 1e-5: an OLMo 1 model with another eps cannot be exported.
    hf_architecture="OlmoForCausalLM", hf_model_type="olmo", hf_fixed_eps=1e-5,
    hf_clip_qkv=True)

OLMO2 = Variant(
    "olmo2",
    (EMBED, *ATTENTION, *MLP,
     _norm("q_norm", "self_attn.q_norm.weight", "q_norm.weight"),
     _norm("k_norm", "self_attn.k_norm.weight", "k_norm.weight"),
     _norm("post_attn_norm", "post_attention_layernorm.weight", "attn_norm.weight"),
     _norm("post_mlp_norm", "post_feedforward_layernorm.weight", "ff_norm.weight"),
     FINAL_NORM, LM_HEAD),
    norm="rms", norm_after=True, qk_norm=True, rope_theta=500_000.0, norm_eps=1e-6,
    hf_architecture="Olmo2ForCausalLM", hf_model_type="olmo2", hf_default_eps=1e-5)

# The registry every module looks variants up in (model.VARIANTS lists the built-in ones).
VARIANTS: dict[str, Variant] = {v.name: v for v in (LADDER, OLMO1, OLMO2)}


def get(name: str) -> Variant:
  """The variant called `name`, or a ValueError naming model.variant and the choices."""
  if name not in VARIANTS:
    raise ValueError(f"model.variant={name!r} is unknown; choose one of {tuple(VARIANTS)}")
  return VARIANTS[name]


# ----------------------------------------------------------------------------------------
# Questions the tables answer


def shapes(variant: str, dims: Dims) -> dict[str, Any]:
  """Nested dict (like the params) of every parameter's shape."""
  out: dict[str, Any] = {}
  for p in get(variant).params:
    set_path(out, p.path, p.shape(dims))
  return out


def axes(variant: str) -> dict[str, Any]:
  """Nested dict (like the params) of every parameter's logical axis names."""
  out: dict[str, Any] = {}
  for p in get(variant).params:
    set_path(out, p.path, p.axes)
  return out


def count(variant: str, dims: Dims, exclude_input_embedding: bool = False) -> int:
  """Number of scalar parameters (N, as DataDecide counts, without the input embedding)."""
  return sum(math.prod(p.shape(dims)) for p in get(variant).params
             if not (exclude_input_embedding and p.name == INPUT_EMBEDDING))


def decay_group(path: tuple[str, ...] | str) -> str:
  """Weight-decay group of a parameter path, from the tables (the same in every variant)."""
  name = path if isinstance(path, str) else ".".join(path)
  groups = {p.decay for v in VARIANTS.values() for p in v.params if p.name == name}
  if len(groups) != 1:
    raise ValueError(f"parameter {name!r} is in no variant's table (or in two groups: {groups})")
  return groups.pop()


def get_path(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def has_path(tree: dict, path: tuple[str, ...]) -> bool:
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return False
    tree = tree[key]
  return True


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def items(variant: str, tree: dict) -> Iterator[tuple[Param, Any]]:
  """(Param, leaf of `tree`) in table order."""
  for p in get(variant).params:
    yield p, get_path(tree, p.path)
