"""JAX -> HF: Llama (the ladder), OLMo (OLMo 1) and OLMo 2 directories that transformers loads.

Which tensor holds which parameter, in which orientation, comes from the per-variant tables
of olmo_jax/params.py; the way back (`import_hf`, which also reads AllenAI's `hf_olmo` layout)
is olmo_jax/hf_import.py, over the same tables.

`export_hf` writes a directory that `transformers.AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load offline. Neither direction needs torch, except to read a
`pytorch_model.bin`.

Our kernels are [in, out] and stacked on a leading layers axis N; HF nn.Linear weights are
[out, in], one tensor per layer. Shape suffixes as in model.py: D d_model, F MLP hidden,
V embedding rows, N layers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any, Iterator

import numpy as np

from data_pipeline import atomic
from data_pipeline.tokenizer import EOS_TOKEN, EOS_TOKEN_ID, PAD_TOKEN, PAD_TOKEN_ID
from olmo_jax import params as params_lib
from olmo_jax import sizes
from olmo_jax.model import ModelConfig
from olmo_jax.params import Dims, Param

# The built-in variants' (HF architecture class, HF model_type); the tables are the source.
HF_ARCHITECTURES = {v.name: (v.hf_architecture, v.hf_model_type)
                    for v in params_lib.VARIANTS.values()}
EXPORT_DTYPES = ("float32", "bfloat16", "float16")


class ConversionError(ValueError):
  """A checkpoint or config that cannot be converted; the message names the key or file."""


# ----------------------------------------------------------------------------------------
# Export


def hf_config_dict(cfg: ModelConfig, dtype: str = "float32", eos_token_id: int = EOS_TOKEN_ID,
                   pad_token_id: int = PAD_TOKEN_ID) -> dict:
  """The HF config.json contents for `cfg` (Llama / Olmo / Olmo2 by variant)."""
  cfg.validate()
  _check_exportable(cfg, dtype)
  spec = cfg.spec
  out = {
      "architectures": [spec.hf_architecture],
      "model_type": spec.hf_model_type,
      # HF's vocab_size is the number of embedding rows, padding rows included.
      "vocab_size": cfg.embedding_size,
      "hidden_size": cfg.d_model,
      "intermediate_size": cfg.hidden,
      "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_heads,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len,
      "initializer_range": cfg.init_std,
      "use_cache": True,
      "bos_token_id": None,
      "eos_token_id": eos_token_id,
      "pad_token_id": pad_token_id,
      "tie_word_embeddings": False,
      "attention_bias": False,
      "attention_dropout": 0.0,
      # transformers >= 5 reads rope_parameters; older releases read rope_theta.
      "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.theta)},
      "rope_theta": float(cfg.theta),
      "dtype": dtype,
      "torch_dtype": dtype,
  }
  if spec.hf_extra:
    out.update(spec.hf_extra(cfg))
  if spec.hf_clip_qkv:
    out["clip_qkv"] = float(cfg.clip_qkv) if cfg.clip_qkv else None
  if spec.hf_fixed_eps is None:
    out["rms_norm_eps"] = cfg.eps
  return out


def _check_exportable(cfg: ModelConfig, dtype: str) -> None:
  if dtype not in EXPORT_DTYPES:
    raise ConversionError(f"dtype={dtype!r} is unknown; choose one of {EXPORT_DTYPES}")
  spec = cfg.spec
  if cfg.clip_qkv and not spec.hf_clip_qkv:
    able = [v.hf_architecture for v in params_lib.VARIANTS.values() if v.hf_clip_qkv]
    raise ConversionError(f"model.clip_qkv={cfg.clip_qkv} has no equivalent in HF "
                          f"{spec.hf_architecture}; only {', '.join(able)} supports clip_qkv")
  if spec.hf_fixed_eps is not None and not math.isclose(cfg.eps, spec.hf_fixed_eps):
    raise ConversionError(f"model.norm_eps={cfg.eps} cannot be exported: HF "
                          f"{spec.hf_architecture} hard-codes the norm eps {spec.hf_fixed_eps}")


def _numpy_dtype(dtype: str):
  if dtype == "bfloat16":
    import ml_dtypes  # a jax dependency; numpy itself has no bfloat16
    return ml_dtypes.bfloat16
  return np.dtype(dtype)


def _to_numpy(x) -> np.ndarray:
  """Host float32 copy of a jax or numpy array."""
  return np.asarray(x, dtype=np.float32)


def hf_tensors(cfg: ModelConfig, template) -> Iterator[tuple[Param, int | None, str]]:
  """(param, layer or None, tensor name) in checkpoint order: the table's, layer by layer.

  template(param) is the param's tensor-name template in the format at hand.
  """
  spec = cfg.spec
  layered = spec.block_params
  first = spec.params.index(layered[0])
  for p in spec.params[:first]:
    yield p, None, template(p)
  for i in range(cfg.n_layers):
    for p in layered:
      yield p, i, template(p).format(i=i)
  for p in spec.params[first + len(layered):]:
    yield p, None, template(p)


def hf_state_dict(cfg: ModelConfig, params: dict[str, Any],
                  dtype: str = "float32") -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF tensor name, array in HF layout [out, in]) one tensor at a time."""
  np_dtype = _numpy_dtype(dtype)
  _check_param_shapes(cfg, params)
  for p, i, key in hf_tensors(cfg, lambda p: p.hf):
    a = _to_numpy(params_lib.get_path(params, p.path)[() if i is None else i])
    yield key, np.ascontiguousarray((a.T if p.transpose else a).astype(np_dtype))


def expected_param_shapes(cfg: ModelConfig) -> dict[str, Any]:
  """Nested dict (like the params) of the shape each parameter must have."""
  return params_lib.shapes(cfg.variant, Dims.of(cfg))


def _check_param_shapes(cfg: ModelConfig, params: dict[str, Any]) -> None:
  dims = Dims.of(cfg)
  for p in cfg.spec.params:
    if not params_lib.has_path(params, p.path):
      raise ConversionError(f"params has no '{p.name}' (variant {cfg.variant!r} needs it)")
    got = tuple(params_lib.get_path(params, p.path).shape)
    if got != p.shape(dims):
      raise ConversionError(f"params['{p.name}'] has shape {got}, the config implies "
                            f"{p.shape(dims)}")


def _write_safetensors(tensors: Iterator[tuple[str, np.ndarray]], out_dir: str,
                       max_shard_bytes: int) -> list[str]:
  """Writes model.safetensors, or numbered shards + index when over max_shard_bytes.

  Holds one shard in memory at a time. Returns the file names written.
  """
  from safetensors.numpy import save_file

  metadata = {"format": "pt"}  # transformers refuses safetensors files without it
  written: list[tuple[str, list[str]]] = []  # (temporary file, tensor names)
  shard: dict[str, np.ndarray] = {}
  total = shard_bytes = 0

  def flush():
    tmp = os.path.join(out_dir, f".shard-{len(written):05d}.tmp")
    save_file(shard, tmp, metadata=metadata)
    os.chmod(tmp, atomic.default_file_mode())  # safetensors creates its files private (0600)
    written.append((tmp, list(shard)))

  for name, arr in tensors:
    if shard and shard_bytes + arr.nbytes > max_shard_bytes:
      flush()
      shard, shard_bytes = {}, 0
    shard[name] = arr
    shard_bytes += arr.nbytes
    total += arr.nbytes
  flush()
  if len(written) == 1:
    os.replace(written[0][0], os.path.join(out_dir, "model.safetensors"))
    return ["model.safetensors"]
  # Shard names carry the shard count, known only now.
  names = [f"model-{i + 1:05d}-of-{len(written):05d}.safetensors" for i in range(len(written))]
  weight_map = {}
  for fname, (tmp, keys) in zip(names, written):
    os.replace(tmp, os.path.join(out_dir, fname))
    weight_map.update({k: fname for k in keys})
  _write_json(os.path.join(out_dir, "model.safetensors.index.json"),
              {"metadata": {"total_size": total}, "weight_map": weight_map})
  return names + ["model.safetensors.index.json"]


def _write_json(path: str, obj: dict) -> None:
  atomic.write_atomic(path, json.dumps(obj, indent=2) + "\n")


def _special_token_ids(tokenizer_file: str) -> tuple[int, int]:
  import tokenizers  # deferred: heavy import
  tok = tokenizers.Tokenizer.from_file(tokenizer_file)
  ids = [tok.token_to_id(t) for t in (EOS_TOKEN, PAD_TOKEN)]
  for token, i in zip((EOS_TOKEN, PAD_TOKEN), ids):
    if i is None:
      raise ConversionError(f"tokenizer {tokenizer_file} has no {token!r} token; the exported "
                            "tokenizer_config.json names it as a special token")
  return ids[0], ids[1]


def write_tokenizer_files(out_dir: str, tokenizer: str = "olmo", max_length: int =
                          sizes.SEQ_LEN) -> tuple[int, int]:
  """Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json; -> (eos id, pad id)."""
  from data_pipeline.tokenizer import tokenizer_path
  src = tokenizer_path(tokenizer)
  eos_id, pad_id = _special_token_ids(src)
  shutil.copyfile(src, os.path.join(out_dir, "tokenizer.json"))
  special = {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
  _write_json(os.path.join(out_dir, "tokenizer_config.json"), {
      # The generic fast class reads tokenizer.json as is, whatever the model type says.
      "tokenizer_class": "PreTrainedTokenizerFast",
      **special,
      "bos_token": None,
      "unk_token": None,
      "add_bos_token": False,
      "add_eos_token": False,
      "model_max_length": max_length,
      "clean_up_tokenization_spaces": False,
  })
  _write_json(os.path.join(out_dir, "special_tokens_map.json"), special)
  return eos_id, pad_id


def export_hf(cfg: ModelConfig, params: dict[str, Any], out_dir: str,
              tokenizer: str | None = "olmo", dtype: str = "float32",
              max_shard_bytes: int = 5 * 2**30) -> str:
  """Writes an HF directory (weights, config, generation config, tokenizer); returns out_dir.

  params: the nested param dict of model.py (jax or numpy arrays, float32 [in, out] kernels).
  tokenizer: 'olmo', a tokenizer.json path, or None to write no tokenizer files.
  """
  config = hf_config_dict(cfg, dtype)  # validates before anything is written
  _check_param_shapes(cfg, params)
  os.makedirs(out_dir, exist_ok=True)
  # Weights of an earlier export (e.g. shards where there is now one file) would be mixed in.
  for fname in os.listdir(out_dir):
    if fname.startswith("model") and (fname.endswith(".safetensors") or
                                      fname == "model.safetensors.index.json"):
      os.remove(os.path.join(out_dir, fname))
  if tokenizer is not None:
    eos_id, pad_id = write_tokenizer_files(out_dir, tokenizer, cfg.max_seq_len)
    config.update(eos_token_id=eos_id, pad_token_id=pad_id)
  _write_safetensors(hf_state_dict(cfg, params, dtype), out_dir, max_shard_bytes)
  _write_json(os.path.join(out_dir, "config.json"), config)
  _write_json(os.path.join(out_dir, "generation_config.json"), {
      "bos_token_id": None, "eos_token_id": config["eos_token_id"],
      "pad_token_id": config["pad_token_id"]})
  return out_dir
