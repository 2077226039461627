"""HF <-> JAX weight mapping: Llama (the ladder), OLMo (OLMo 1), OLMo 2, and AllenAI's hf_olmo.

Which tensor holds which parameter, in which orientation, comes from the per-variant tables
of olmo_jax/params.py; one import pipeline serves both formats.

`export_hf` writes a directory that `transformers.AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load offline; `import_hf` reads such a directory (or one in
AllenAI's own `hf_olmo` layout, as the released DataDecide checkpoints use) back into our
nested param dict. Neither direction needs torch, except to read a `pytorch_model.bin`.

Our kernels are [in, out] and stacked on a leading layers axis N; HF nn.Linear weights are
[out, in], one tensor per layer. Shape suffixes as in model.py: D d_model, F MLP hidden,
V embedding rows, N layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
from typing import Any, Callable, Iterator

import numpy as np

from data_pipeline import atomic
from data_pipeline.tokenizer import EOS_TOKEN, EOS_TOKEN_ID, PAD_TOKEN, PAD_TOKEN_ID, VOCAB_SIZE
from olmo_jax import params as params_lib
from olmo_jax import sizes
from olmo_jax.model import ModelConfig
from olmo_jax.params import Dims, Param

# A checkpoint that records no init std gets the model's own default.
_DEFAULT_INIT_STD = ModelConfig.init_std

# The built-in variants' (HF architecture class, HF model_type); the tables are the source.
HF_ARCHITECTURES = {v.name: (v.hf_architecture, v.hf_model_type)
                    for v in params_lib.VARIANTS.values()}
EXPORT_DTYPES = ("float32", "bfloat16", "float16")
# Written by transformers' default RoPE and by old checkpoints; it is recomputed, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


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


def _tensors(cfg: ModelConfig, template) -> Iterator[tuple[Param, int | None, str]]:
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
  for p, i, key in _tensors(cfg, lambda p: p.hf):
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
  import importlib
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
  import pickle
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
  for p, _, key in _tensors(cfg, where):
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
