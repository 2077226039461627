"""Shared fixtures: tiny configs and a fast CPU setup."""

import os

# Tests compare float32 numerics; keep XLA from using reduced-precision tricks.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_CONFIG = os.path.join(REPO, "configs", "train.py")


@pytest.fixture
def tiny_train_config():
  """The 4M config shrunk to a seconds-long run on the synthetic stream."""
  from olmo_jax.config import load_config_file

  c = load_config_file(TRAIN_CONFIG, "4M")
  c.data.mixture = "synthetic"
  c.train.steps = 20
  c.train.batch_size = 4
  c.train.seq_len = 32
  c.train.warmup_steps = 4
  c.train.log_every = 5
  c.train.progress_bar = False
  c.checkpoint.enabled = False
  return c
