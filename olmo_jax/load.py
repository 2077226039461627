"""A checkpoint -> (ModelConfig, params), for running the model here: evaluation, the
DataDecide study's scorers and the HF export all load through `load_model`.

A checkpoint is a run directory (its newest checkpoint), its checkpoints dir, one step
dir, or an HF directory (imported through olmo_jax/hf_import.py). The ModelConfig it returns runs
on this host's devices (platform 'auto', whatever the run was trained on), without
rematerialisation (no gradients are taken), in float32 on a CPU and in the trained compute
dtype elsewhere unless a dtype is asked for. Its context window is the model's own maximum
length (max_seq_len / max_position_embeddings), so a run directory and its HF export score
the same weights with the same window.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from data_pipeline.tokenizer import EOS_TOKEN_ID, VOCAB_SIZE
from olmo_jax import paths
from olmo_jax.runtime import resolve_platform


@dataclasses.dataclass
class LoadedModel:
  cfg: Any  # olmo_jax.model.ModelConfig
  params: dict
  step: int | None
  config: dict  # the training config (ours) or the HF config.json
  tokenizer: str  # 'olmo' or a tokenizer.json path
  max_length: int
  eos_id: int = EOS_TOKEN_ID  # the context of a request with an empty one; ends generation


def is_hf_dir(path: str) -> bool:
  """Whether `path` is an HF model directory (a config.json naming a model type)."""
  cfg = os.path.join(path, "config.json")
  if not paths.isfile(cfg):
    return False
  try:
    c = json.loads(paths.read_text(cfg))
  except (OSError, json.JSONDecodeError):
    return False
  return isinstance(c, dict) and ("model_type" in c or "architectures" in c)


def hf_tokenizer_problem(path: str) -> str | None:
  """Why the OLMo tokenizer does not fit an HF directory without tokenizer.json, else None.

  Without tokenizer.json the OLMo tokenizer is used, which fits only a model whose
  embedding has OLMo's VOCAB_SIZE rows (or that padded to a multiple of 128).
  """
  if paths.isfile(os.path.join(path, "tokenizer.json")):
    return None
  rows = json.loads(paths.read_text(os.path.join(path, "config.json"))).get("vocab_size")
  padded = -(-VOCAB_SIZE // 128) * 128
  if isinstance(rows, int) and VOCAB_SIZE <= rows <= padded:
    return None
  return (f"{path} has no tokenizer.json and its vocabulary ({rows} rows) is not OLMo's "
          f"({VOCAB_SIZE}), so the OLMo tokenizer does not fit it; save the model's tokenizer "
          f"there (tokenizer.save_pretrained('{path}') writes tokenizer.json)")


def tokenizer_of(path: str) -> str:
  """The tokenizer a checkpoint is scored with: an HF directory's tokenizer.json, else OLMo's."""
  tok = os.path.join(path, "tokenizer.json")
  return tok if is_hf_dir(path) and paths.isfile(tok) else "olmo"


def eos_id_of(hf_config: dict) -> int:
  """An HF config's end-of-text id (the first of a list), else OLMo's."""
  eos = hf_config.get("eos_token_id")
  if isinstance(eos, list):
    eos = eos[0] if eos else None
  return int(eos) if isinstance(eos, int) else EOS_TOKEN_ID


def load_model(checkpoint: str, *, step: int | None = None, dtype: str | None = None,
               max_length: int | None = None) -> LoadedModel:
  """Params and ModelConfig of our checkpoint (at `step`, default the newest) or an HF
  directory. CheckpointError / ConversionError / FileNotFoundError name the problem."""
  # Deferred: Orbax, the model and the HF mapping load JAX; `--help` and the one-line
  # input errors of the entry points that import this module do not need them.
  from olmo_jax import checkpoint as checkpoint_lib
  from olmo_jax import config as config_lib
  from olmo_jax import hf, hf_import
  if not paths.exists(checkpoint):
    raise FileNotFoundError(f"checkpoint path {checkpoint} does not exist; pass a run directory, "
                            "a checkpoint step directory or an HF directory")
  if is_hf_dir(checkpoint):
    problem = hf_tokenizer_problem(checkpoint)
    if problem:
      raise hf.ConversionError(problem)
    cfg, params = hf_import.import_hf(checkpoint)
    config = json.loads(paths.read_text(os.path.join(checkpoint, "config.json")))
    step, tokenizer, eos = None, tokenizer_of(checkpoint), eos_id_of(config)
  else:
    import ml_collections
    params, meta = checkpoint_lib.restore_params(checkpoint, step)
    config = meta.get("config") or {}
    if not config.get("model"):
      raise checkpoint_lib.CheckpointError(
          f"{checkpoint}: the checkpoint records no model config (config.model): it was not "
          "written by olmo_jax.train or scripts/convert_from_hf.py")
    cfg = config_lib.model_config(ml_collections.ConfigDict(config))
    step, tokenizer, eos = meta.get("step"), "olmo", EOS_TOKEN_ID
  if dtype is None:  # exact float32 on CPU; the trained compute dtype on accelerators
    dtype = "float32" if resolve_platform() == "cpu" else cfg.dtype
  cfg = dataclasses.replace(cfg, dtype=dtype, remat="none", platform="auto")
  return LoadedModel(cfg, params, step, config, tokenizer,
                     min(max_length or cfg.max_seq_len, cfg.max_seq_len), eos)
