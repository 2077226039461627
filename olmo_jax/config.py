"""Config loading, resolution of the ladder defaults, and start-up validation.

A config as written holds sentinels (-1, 0, 'auto') meaning "from the ladder formulas";
`resolve` turns it into concrete numbers and `validate` rejects bad values with a message
naming the field, before any expensive work.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any

import ml_collections

from olmo_jax import params as params_lib
from olmo_jax import sizes
from olmo_jax.model import ModelConfig
from olmo_jax.runtime import resolve_platform


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Runs `get_config(arg)` of a config file given by path."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  name = "_olmo_cfg_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def load_sibling(this_file: str, relpath: str, arg: str | None = None):
  """Loads a config file relative to the directory of `this_file`."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(this_file)), relpath),
                          arg)


def model_config_dict(size: str = "4M") -> ml_collections.ConfigDict:
  """The `model` config subtree: `size` plus every ModelConfig field at its default.

  size: a ladder size ('4M' ... '1B'), or 'custom' with d_model/n_heads/n_layers set.
  d_model, n_heads and n_layers are 0 ("from model.size"), dtype is 'auto' (bfloat16 on
  GPU/TPU, float32 on CPU) and platform 'auto' (the devices in use) until `resolve`.
  """
  c = ml_collections.ConfigDict({"size": size})
  for f in dataclasses.fields(ModelConfig):
    c[f.name] = f.default
  c.d_model = c.n_heads = c.n_layers = 0
  c.dtype = "auto"
  return c


def _model_shape(m) -> tuple[int, int, int, float]:
  """(d_model, n_heads, n_layers, formula N) of the config's model."""
  if m.size == "custom":
    for f in ("d_model", "n_heads", "n_layers"):
      if getattr(m, f) <= 0:
        raise ValueError(f"model.size='custom' needs model.{f} > 0")
    d, h, l = m.d_model, m.n_heads, m.n_layers
    return d, h, l, float(sizes.non_embedding_params(d, l, "ladder", m.embedding_size,
                                                     m.get("mlp_hidden", 0)))
  s = sizes.get_size(m.size)
  return (m.d_model or s.d_model, m.n_heads or s.n_heads, m.n_layers or s.n_layers,
          s.formula_params)


def default_dtype(platform: str = "auto") -> str:
  """The compute dtype 'auto' stands for on a platform: float32 on CPU, bfloat16 elsewhere."""
  return "float32" if resolve_platform(platform) == "cpu" else "bfloat16"


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy with every ladder sentinel replaced by its value, plus a `derived` subtree."""
  c = ml_collections.ConfigDict(config.to_dict())
  m, t = c.model, c.train
  params_lib.get(m.variant)  # names model.variant and the choices
  d, h, l, n_formula = _model_shape(m)
  m.d_model, m.n_heads, m.n_layers = d, h, l
  # The kernels and the default dtype are chosen once, here, from the platform.
  if m.get("platform", "auto") == "auto":
    m.platform = resolve_platform("auto")
  if m.dtype == "auto":
    m.dtype = default_dtype(m.platform)
  ladder = sizes.LADDER.get(m.size)
  _check_formula_inputs(t)
  if t.batch_size == -1:
    t.batch_size = ladder.batch_seqs if ladder else sizes.batch_size_formula(n_formula)
  if t.microbatch_size == -1:
    t.microbatch_size = t.batch_size
  if t.lr == -1.0:
    t.lr = sizes.peak_lr_formula(n_formula)
  if t.warmup_steps == -1:
    t.warmup_steps = sizes.warmup_steps_formula(n_formula, t.batch_size, t.seq_len)
  if t.steps == -1:
    t.steps = (ladder.final_step if ladder and t.batch_size == ladder.batch_seqs
               and t.seq_len == sizes.SEQ_LEN
               else sizes.length_steps_formula(n_formula, t.batch_size, t.seq_len))
  if c.checkpoint.every == -1:
    c.checkpoint.every = sizes.checkpoint_every(ladder.name if ladder else None)
  n = sizes.non_embedding_params(d, l, m.variant, m.embedding_size, m.get("mlp_hidden", 0))
  tokens = t.steps * t.batch_size * t.seq_len
  c.derived = ml_collections.ConfigDict({
      "non_embedding_params": n,
      "total_params": n + m.embedding_size * d,
      "tokens_per_step": t.batch_size * t.seq_len,
      "total_tokens": tokens,
      "compute_flops": float(sizes.training_flops(n, tokens)),
  })
  return c


def _check_formula_inputs(t) -> None:
  """The fields the ladder formulas divide by: positive, or -1 (from the ladder) where allowed.

  Checked before the formulas run, so that 0 is a named error, not a division by zero."""
  for f, auto in (("seq_len", False), ("batch_size", True), ("microbatch_size", True)):
    if t[f] <= 0 and not (auto and t[f] == -1):
      hint = " or -1 (from the ladder)" if auto else ""
      raise ValueError(f"train.{f}={t[f]} must be positive{hint}; set "
                       f"--config.train.{f}=N with N >= 1")


def model_config(c: ml_collections.ConfigDict) -> ModelConfig:
  """The ModelConfig of a resolved config (a field missing from an older saved config keeps
  its default)."""
  m = c.model
  return ModelConfig(**{f.name: m[f.name] for f in dataclasses.fields(ModelConfig)
                        if f.name in m})


def validate(c: ml_collections.ConfigDict, num_processes: int = 1) -> None:
  """Rejects a resolved config's bad values with a ValueError naming the field."""
  model_config(c).validate()
  t = c.train
  positive = ("steps", "batch_size", "microbatch_size", "seq_len", "log_every")
  for f in positive:
    if t[f] <= 0:
      raise ValueError(f"train.{f}={t[f]} must be positive")
  if t.lr <= 0:
    raise ValueError(f"train.lr={t.lr} must be positive")
  if t.warmup_steps < 0:
    raise ValueError(f"train.warmup_steps={t.warmup_steps} must be >= 0")
  if not 0 <= t.min_lr_ratio <= 1:
    raise ValueError(f"train.min_lr_ratio={t.min_lr_ratio} must be in [0, 1]")
  for f in ("weight_decay", "grad_clip", "z_loss", "eps"):
    if t[f] < 0:
      raise ValueError(f"train.{f}={t[f]} must be >= 0")
  for f in ("b1", "b2"):
    if not 0 <= t[f] < 1:
      raise ValueError(f"train.{f}={t[f]} must be in [0, 1)")
  if t.seq_len > c.model.max_seq_len:
    raise ValueError(f"train.seq_len={t.seq_len} exceeds the RoPE table "
                     f"model.max_seq_len={c.model.max_seq_len}")
  if t.batch_size % t.microbatch_size:
    raise ValueError(f"train.microbatch_size={t.microbatch_size} must divide "
                     f"train.batch_size={t.batch_size}")
  if t.batch_size % num_processes:
    raise ValueError(f"train.batch_size={t.batch_size} must be divisible by the "
                     f"{num_processes} processes")
  if t.loss_impl not in ("fused", "dense"):
    raise ValueError(f"train.loss_impl={t.loss_impl!r} must be 'fused' or 'dense'")
  if t.loss_chunk_tokens < 0:
    raise ValueError(f"train.loss_chunk_tokens={t.loss_chunk_tokens} must be >= 0")
  if t.nan_policy not in ("stop", "skip"):
    raise ValueError(f"train.nan_policy={t.nan_policy!r} must be 'stop' or 'skip'")
  if c.checkpoint.every <= 0 or c.checkpoint.keep <= 0 or c.checkpoint.keep_period < 0:
    raise ValueError("checkpoint.every and checkpoint.keep must be positive, "
                     "checkpoint.keep_period >= 0")
  if c.eval.every < 0 or c.eval.batches <= 0:
    raise ValueError("eval.every must be >= 0 and eval.batches positive")


def save_json(c: ml_collections.ConfigDict, path: str) -> None:
  """Writes the resolved config as JSON (atomically)."""
  from olmo_jax import paths
  paths.write_atomic(path, json.dumps(c.to_dict(), indent=2, sort_keys=True, default=str))


def load_json(path: str) -> ml_collections.ConfigDict:
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def to_dict(c: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(json.dumps(c.to_dict(), default=str))
