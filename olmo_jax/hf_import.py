"""HF -> JAX: read an HF directory (Llama, OLMo, OLMo 2, or AllenAI's own `hf_olmo` layout, as
the released DataDecide checkpoints use) into a ModelConfig and our nested param dict.

Which tensor holds which parameter, in which orientation, comes from the per-variant tables of
olmo_jax/params.py (the same tables the export in olmo_jax/hf.py reads); one pipeline serves
both formats. Tensors are read one at a time (`TensorFiles`: safetensors, sharded or not, or a
`pytorch_model.bin`, which alone needs torch); a file that is truncated, damaged or an unsafe
pickle is named with what to do, never loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import pickle
import re
from typing import Any, Callable

import numpy as np

from data_pipeline.tokenizer import VOCAB_SIZE
from olmo_jax import params as params_lib
from olmo_jax import sizes
from olmo_jax.hf import ConversionError, hf_tensors
from olmo_jax.model import ModelConfig
from olmo_jax.params import Dims, Param

# A checkpoint that records no init std gets the model's own default.
_DEFAULT_INIT_STD = ModelConfig.init_std
# Written by transformers' default RoPE and by old checkpoints; it is recomputed, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# ----------------------------------------------------------------------------------------
# Reading checkpoint files without loading every tensor


@dataclasses.dataclass
class _Entry:
  file: str
  shape: tuple[int, ...]


# How to turn a pickle torch will not load safely into safetensors, where its source is trusted.
_TO_SAFETENSORS = ("python -c \"import torch; from safetensors.torch import save_file; "
                   "sd = torch.load('{path}', weights_only=False); save_file({{k: v.contiguous()"
                   ".clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}}, "
                   "'{dir}/model.safetensors')\"")


def _importable(dotted: str) -> bool:
  """Whether `module.name` (as a pickle names a global) resolves in this environment."""
  module, _, name = dotted.rpartition(".")
  try:
    obj = importlib.import_module(module)
  except Exception:  # not installed, or a module that fails to import
    return False
  return hasattr(obj, name)


def _unsafe_pickle_error(path: str, torch_message: str) -> ConversionError:
  """The refusal of torch's weights_only unpickler, said as what it is: no tensors-only file."""
  found = re.search(r"Unsupported global: GLOBAL (\S+)", torch_message)
  what = f" ({found.group(1)})" if found else ""
  if found and not _importable(found.group(1)):  # e.g. 'collections.Ordered' of a cut file
    what = f" ({found.group(1)}, which does not exist here: the file may also be truncated)"
  return ConversionError(
      f"weights file {path} is a pickle holding objects other than tensors{what}: unsafe to "
      f"load, since unpickling it can run arbitrary code, so it is not read. Convert it to "
      f"safetensors where you trust its source, e.g. "
      + _TO_SAFETENSORS.format(path=path, dir=os.path.dirname(path) or "."))


@contextlib.contextmanager
def _damaged_file_error(path: str):
  """Turns a reader's failure on a truncated or corrupt weights file into one that names it."""
  try:
    yield
  except ConversionError:
    raise
  except pickle.UnpicklingError as e:
    if "weights only load failed" in str(e).lower():
      raise _unsafe_pickle_error(path, str(e)) from None
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ConversionError(f"weights file {path} cannot be read ({reason}): it is truncated or "
                          "damaged; download or export it again") from None
  except Exception as e:  # SafetensorError, torch's unpickling / zip errors, OSError ...
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ConversionError(f"weights file {path} cannot be read ({reason}): it is truncated or "
                          "damaged; download or export it again") from None


class TensorFiles:
  """Names and shapes of every tensor in an HF directory; loads one tensor on demand.

  Reads model.safetensors, sharded safetensors (model.safetensors.index.json),
  pytorch_model.bin or its sharded index, in that order of preference.
  """

  def __init__(self, directory: str):
    self.directory = directory
    self.entries: dict[str, _Entry] = {}
    self._torch_cache: dict[str, dict] = {}
    files = self._weight_files(directory)
    for fname in files:
      path = os.path.join(directory, fname)
      if not os.path.isfile(path):
        raise ConversionError(f"weights file {path} is named in the index but does not exist")
      for key, shape in self._shapes(path).items():
        self.entries[key] = _Entry(path, tuple(shape))

  @staticmethod
  def _weight_files(directory: str) -> list[str]:
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
      if os.path.isfile(os.path.join(directory, single)):
        return [single]
      index_path = os.path.join(directory, index)
      if os.path.isfile(index_path):
        with open(index_path) as f:
          weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
          raise ConversionError(f"{index_path} has no 'weight_map'")
        return sorted(set(weight_map.values()))
    raise ConversionError(
        f"no weights in {directory}: expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json")

  def _torch_state(self, path: str) -> dict:
    if path not in self._torch_cache:
      import torch  # only .bin checkpoints need torch
      # mmap: shapes are known without reading the tensors into memory. torch's legacy
      # (pre-1.6, non-zip) format cannot be mapped and is read whole; weights_only=True
      # unpickles tensors and plain containers only, in either format.
      with open(path, "rb") as f:
        legacy = f.read(4) != b"PK\x03\x04"
      with _damaged_file_error(path):
        self._torch_cache[path] = torch.load(path, map_location="cpu", weights_only=True,
                                             mmap=not legacy)
    return self._torch_cache[path]

  def _shapes(self, path: str) -> dict[str, list[int]]:
    if path.endswith(".safetensors"):
      from safetensors import safe_open
      with _damaged_file_error(path), safe_open(path, framework="numpy") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}
    return {k: list(v.shape) for k, v in self._torch_state(path).items()}

  def __contains__(self, key: str) -> bool:
    return key in self.entries

  def shape(self, key: str) -> tuple[int, ...]:
    return self.entries[key].shape

  def get(self, key: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The tensor (or its rows [start, stop) only, read alone) as float32 numpy."""
    if key not in self.entries:
      raise ConversionError(f"tensor {key!r} is missing from the checkpoint in {self.directory}")
    path = self.entries[key].file
    if path.endswith(".safetensors"):
      from safetensors import safe_open
      with _damaged_file_error(path), safe_open(path, framework="numpy") as f:
        t = f.get_slice(key)[rows[0]:rows[1]] if rows else f.get_tensor(key)
        return np.asarray(t, dtype=np.float32)
    t = self._torch_state(path)[key]
    return (t[rows[0]:rows[1]] if rows else t).float().numpy()


# ----------------------------------------------------------------------------------------
# Import


def _read_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise ConversionError(f"{path} not found: an HF checkpoint directory needs a config.json")
  with open(path) as f:
    return json.load(f)


def _tokenizer_vocab_size(directory: str) -> int | None:
  path = os.path.join(directory, "tokenizer.json")
  if not os.path.isfile(path):
    return None
  import tokenizers  # deferred: heavy import
  return tokenizers.Tokenizer.from_file(path).get_vocab_size()


def _vocab_size(directory: str, embedding_size: int) -> int:
  # HF stores only the padded embedding size; the real vocabulary is the tokenizer's.
  vocab = _tokenizer_vocab_size(directory)
  return min(vocab, embedding_size) if vocab else embedding_size


def _rope_theta(hf: dict, where: str) -> float:
  rope = hf.get("rope_parameters") or {}
  if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
    raise ConversionError(f"{where}: RoPE scaling {hf.get('rope_scaling') or rope} is not "
                          "supported (only the default rotary embedding)")
  return float(rope.get("rope_theta") or hf.get("rope_theta") or 10_000.0)


def _with_defaults_as_zero(cfg: ModelConfig) -> ModelConfig:
  """Writes variant-default theta / eps as 0, so a default config round-trips exactly."""
  default = dataclasses.replace(cfg, rope_theta=0.0, norm_eps=0.0)
  return dataclasses.replace(
      cfg, rope_theta=0.0 if math.isclose(cfg.rope_theta, default.theta) else cfg.rope_theta,
      norm_eps=0.0 if math.isclose(cfg.norm_eps, default.eps) else cfg.norm_eps)


def _require(cond: bool, where: str, message: str) -> None:
  if not cond:
    raise ConversionError(f"{where}: {message}")


def _field(hf: dict, key: str, where: str) -> int:
  if not isinstance(hf.get(key), int) or hf[key] <= 0:
    raise ConversionError(f"{where}: '{key}' is missing or not a positive integer "
                          f"(got {hf.get(key)!r})")
  return hf[key]


def config_from_hf(hf: dict, directory: str = "") -> ModelConfig:
  """ModelConfig of an HF Llama / Olmo / Olmo2 config.json dict."""
  where = os.path.join(directory, "config.json") if directory else "config.json"
  variant = _hf_variant(hf, where)
  d, h = _field(hf, "hidden_size", where), _field(hf, "num_attention_heads", where)
  _require(hf.get("num_key_value_heads") in (None, h), where,
           f"num_key_value_heads={hf.get('num_key_value_heads')} != num_attention_heads={h}; "
           "grouped-query attention is not supported")
  _require(hf.get("head_dim") in (None, d // h), where,
           f"head_dim={hf.get('head_dim')} != hidden_size/num_attention_heads={d // h}")
  _require(hf.get("hidden_act", "silu") == "silu", where,
           f"hidden_act={hf.get('hidden_act')!r}; only 'silu' (SwiGLU) is supported")
  for flag in ("attention_bias", "mlp_bias"):
    _require(not hf.get(flag), where, f"{flag}=true; the model has no biases")
  embedding_size = _field(hf, "vocab_size", where)
  spec = params_lib.get(variant)
  eps = spec.hf_fixed_eps or float(hf.get("rms_norm_eps") or spec.hf_default_eps)
  intermediate = _field(hf, "intermediate_size", where)
  return _with_defaults_as_zero(ModelConfig(
      variant=variant, d_model=d, n_heads=h, n_layers=_field(hf, "num_hidden_layers", where),
      vocab_size=_vocab_size(directory, embedding_size) if directory else embedding_size,
      embedding_size=embedding_size,
      mlp_hidden=0 if intermediate == params_lib.mlp_hidden(d) else intermediate,
      max_seq_len=hf.get("max_position_embeddings") or sizes.SEQ_LEN,
      rope_theta=_rope_theta(hf, where), norm_eps=eps,
      clip_qkv=float(hf.get("clip_qkv") or 0.0) if spec.hf_clip_qkv else 0.0,
      init_std=float(hf.get("initializer_range") or _DEFAULT_INIT_STD)))


def _hf_variant(hf: dict, where: str) -> str:
  archs = hf.get("architectures") or []
  by_arch = {v.hf_architecture: v.name for v in params_lib.VARIANTS.values()}
  by_type = {v.hf_model_type: v.name for v in params_lib.VARIANTS.values()}
  for arch in archs:
    if arch in by_arch:
      return by_arch[arch]
  if not archs and hf.get("model_type") in by_type:
    return by_type[hf["model_type"]]
  known = sorted(by_arch) + ["hf_olmo (AllenAI OLMo)"]
  raise ConversionError(f"{where}: architectures={archs} model_type={hf.get('model_type')!r} "
                        f"is not supported; known: {known}")


def _is_hf_olmo(hf: dict) -> bool:
  # AllenAI's own format keeps OLMo-native names (d_model ...); HF's OlmoConfig does not.
  return hf.get("model_type") in ("hf_olmo", "olmo") and "d_model" in hf


def _check_tensors(files: TensorFiles, expected: dict[str, tuple[int, ...]]) -> None:
  """Every expected tensor present with its shape, and nothing else that would be dropped."""
  missing = [k for k in expected if k not in files]
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise ConversionError(f"tensor {missing[0]!r}{more} is missing from the checkpoint in "
                          f"{files.directory}")
  for key, shape in expected.items():
    if files.shape(key) != tuple(shape):
      raise ConversionError(f"tensor {key!r} in {files.entries[key].file} has shape "
                            f"{list(files.shape(key))}, the config implies {list(shape)}")
  extra = [k for k in files.entries if k not in expected and not k.endswith(_IGNORED_SUFFIXES)]
  if extra:
    raise ConversionError(f"unexpected tensor {extra[0]!r} in {files.entries[extra[0]].file} "
                          f"({len(extra)} in all): biases and other extra weights are not "
                          "supported, and dropping them would change the model")


def _stack(n: int, load: Callable[[int], np.ndarray]) -> np.ndarray:
  """[N, ...] float32 from per-layer arrays, filled in place (no second full copy)."""
  first = load(0)
  out = np.empty((n, *first.shape), np.float32)
  out[0] = first
  for i in range(1, n):
    out[i] = load(i)
  return out


def _read_params(files: TensorFiles, cfg: ModelConfig, where: Callable[[Param], str],
                 part: Callable[[Param], tuple[int, int]], tied: bool) -> dict[str, Any]:
  """Checks every tensor's name and shape (reading no data), then reads our nested params.

  where(p): p's tensor-name template in this format; part(p) = (k, n): p is the k-th of n
  equal row blocks of that tensor; tied: the checkpoint has no head (params with `tied_to`).
  """
  dims = Dims.of(cfg)
  expected = {}
  for p, _, key in hf_tensors(cfg, where):
    if not (tied and p.tied_to):
      rows, *rest = p.hf_shape(dims)
      expected[key] = (part(p)[1] * rows, *rest)
  _check_tensors(files, expected)

  out: dict[str, Any] = {}
  for p in cfg.spec.params:
    if tied and p.tied_to:
      value = np.ascontiguousarray(params_lib.get_path(out, (p.tied_to,)).T)
    else:
      value = _read_param(files, p, dims, where(p), part(p))
    params_lib.set_path(out, p.path, value)
  return out


def _read_param(files: TensorFiles, p: Param, dims: Dims, template: str,
                part: tuple[int, int]) -> np.ndarray:
  """One parameter in our layout: per-layer tensors stacked, transposed to [in, out]."""
  k, n = part
  rows = p.hf_shape(dims)[0]

  def load(key: str) -> np.ndarray:
    t = files.get(key, rows=(k * rows, (k + 1) * rows) if n > 1 else None)
    return t.T if p.transpose else t

  if p.layered:
    return _stack(dims.N, lambda i: load(template.format(i=i)))
  return np.ascontiguousarray(load(template)) if p.transpose else load(template)


# hf_olmo: norm settings -> our variant. OLMo's `norm_after` puts the norms on the branch
# outputs and `attention_layer_norm` adds QK-norm: together that is OLMo 2.
_HF_OLMO_NORM_TYPES = {"rms": ("rms",), "layer": ("default", "low_precision", "amd_compatible")}


def _hf_olmo_variant(hf: dict, where: str) -> str:
  norm_type = hf.get("layer_norm_type", "default")
  affine = bool(hf.get("layer_norm_with_affine", True))
  norm_after = bool(hf.get("norm_after", False))
  qk_norm = bool(hf.get("attention_layer_norm", False))
  qk_affine = bool(hf.get("attention_layer_norm_with_affine", True))
  layouts = []
  for v in params_lib.VARIANTS.values():
    if not v.has_hf_olmo:
      continue
    if (norm_type in _HF_OLMO_NORM_TYPES[v.norm] and affine == (v.norm == "rms")
        and norm_after == v.norm_after and qk_norm == v.qk_norm and (qk_affine or not qk_norm)):
      return v.name
    norms = "rms+affine" if v.norm == "rms" else "weightless LayerNorm"
    placement = " norm_after" if v.norm_after else " pre-norm"
    layouts.append(f"{norms}{placement}{'+attention_layer_norm' if v.qk_norm else ''} = {v.name}")
  raise ConversionError(
      f"{where}: layer_norm_type={norm_type!r}, layer_norm_with_affine={affine}, "
      f"norm_after={norm_after}, attention_layer_norm={qk_norm} matches none of the supported "
      f"layouts ({'; '.join(layouts)})")


def config_from_hf_olmo(hf: dict, directory: str = "") -> ModelConfig:
  """ModelConfig of an AllenAI hf_olmo config.json dict (OLMo-native field names)."""
  where = os.path.join(directory, "config.json") if directory else "config.json"
  variant = _hf_olmo_variant(hf, where)
  d, h = _field(hf, "d_model", where), _field(hf, "n_heads", where)
  _require(hf.get("activation_type", "swiglu") == "swiglu", where,
           f"activation_type={hf.get('activation_type')!r}; only 'swiglu' is supported")
  _require(hf.get("block_type", "sequential") in ("sequential", "llama"), where,
           f"block_type={hf.get('block_type')!r}; only 'sequential' and 'llama' are supported")
  _require(bool(hf.get("rope", True)) and not hf.get("alibi"), where,
           "only rotary position embeddings (rope=true, alibi=false) are supported")
  _require(not hf.get("multi_query_attention") and hf.get("n_kv_heads") in (None, h), where,
           f"n_kv_heads={hf.get('n_kv_heads')} / multi_query_attention: grouped-query "
           "attention is not supported")
  _require(not hf.get("scale_logits"), where, "scale_logits=true is not supported")
  fused_hidden = hf.get("mlp_hidden_size") or hf.get("mlp_ratio", 4) * d
  _require(fused_hidden % 2 == 0, where,
           f"SwiGLU input width {fused_hidden} (mlp_hidden_size or mlp_ratio*d_model) is odd")
  hidden = fused_hidden // 2  # the fused projection holds the up and gate halves
  vocab = hf.get("vocab_size") or VOCAB_SIZE
  return _with_defaults_as_zero(ModelConfig(
      variant=variant, d_model=d, n_heads=h, n_layers=_field(hf, "n_layers", where),
      vocab_size=vocab,
      embedding_size=hf.get("embedding_size") or vocab,
      mlp_hidden=0 if hidden == params_lib.mlp_hidden(d) else hidden,
      max_seq_len=hf.get("max_sequence_length") or sizes.SEQ_LEN,
      rope_theta=float(hf.get("rope_theta") or 10_000.0),
      norm_eps=float(hf.get("layer_norm_eps") or 1e-5),
      clip_qkv=float(hf.get("clip_qkv") or 0.0),
      init_std=float(hf.get("init_std") or _DEFAULT_INIT_STD)))


def import_hf(path: str) -> tuple[ModelConfig, dict[str, Any]]:
  """(ModelConfig, nested numpy float32 params) of an HF or hf_olmo checkpoint directory.

  path: the directory, or any file inside it. Config and tensor names/shapes are checked
  before any large tensor is read.
  """
  if not os.path.exists(path):
    raise ConversionError(f"checkpoint {path} does not exist")
  directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  hf = _read_config(directory)
  hf_olmo = _is_hf_olmo(hf)
  cfg = (config_from_hf_olmo if hf_olmo else config_from_hf)(hf, directory)
  cfg.validate()
  files = TensorFiles(directory)
  if hf_olmo:
    # Checkpoints saved through the HF wrapper carry a "model." prefix; raw OLMo ones do not.
    prefix = "model.transformer." if "model.transformer.wte.weight" in files else "transformer."
    # block_type 'sequential' fuses q, k, v into att_proj; 'llama' keeps them apart.
    fused = hf.get("block_type", "sequential") == "sequential"
    where = lambda p: prefix + (p.hf_olmo if fused or not p.hf_olmo_unfused
                                else p.hf_olmo_unfused)
    part = lambda p: p.hf_olmo_part if fused or not p.hf_olmo_unfused else (0, 1)
    tied = bool(hf.get("weight_tying", False))
  else:
    where, part = (lambda p: p.hf), (lambda p: (0, 1))
    tied = bool(hf.get("tie_word_embeddings")) and not any(
        p.hf in files for p in cfg.spec.params if p.tied_to)
  return cfg, _read_params(files, cfg, where, part, tied)
