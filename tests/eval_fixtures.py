"""Shared helpers for the evaluation tests: a tiny checkpoint of ours and its HF export."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from hf_fixtures import random_params  # noqa: E402

from olmo_jax import checkpoint  # noqa: E402
from olmo_jax import config as config_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_eval_config(seq_len: int = 1024, variant: str = "ladder"):
  """A resolved training config of a d=64, 2-layer model with the real vocabulary."""
  c = config_lib.load_config_file(os.path.join(ROOT, "configs", "train.py"), "4M")
  c.model.size = "custom"
  c.model.variant = variant
  c.model.d_model, c.model.n_heads, c.model.n_layers = 64, 4, 2
  c.model.max_seq_len = seq_len
  c.model.init_std = 0.1
  c.train.seq_len = seq_len
  c.train.steps, c.train.batch_size, c.train.warmup_steps = 10, 4, 2
  return config_lib.resolve(c)


def write_tiny_checkpoint(workdir: str, seq_len: int = 1024, variant: str = "ladder"):
  """A params-only checkpoint of a random tiny model in workdir; returns (mcfg, params)."""
  cfg = tiny_eval_config(seq_len, variant)
  mcfg = config_lib.model_config(cfg)
  params = random_params(mcfg)
  checkpoint.write_params_checkpoint(workdir, params, {"config": config_lib.to_dict(cfg)})
  return mcfg, params


def export_hf(mcfg, params, out_dir: str) -> str:
  from olmo_jax import hf
  hf.export_hf(mcfg, params, out_dir, tokenizer="olmo", dtype="float32")
  return out_dir
