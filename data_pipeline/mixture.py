"""Recipes -> deterministic, checkpointable batch iterators (minimal version: synthetic only)."""

from __future__ import annotations

import ml_collections
import numpy as np


def default_config() -> ml_collections.ConfigDict:
  """The `config.data` subtree."""
  c = ml_collections.ConfigDict()
  c.mixture = "synthetic"  # a recipe name, or 'synthetic' (a repetitive token stream, no files)
  c.data_dir = "data"
  c.seed = -1  # -1: use train.seed
  return c


def validate_config(cfg, vocab_size: int) -> None:
  """Raises ValueError naming the field on bad data config, before any expensive work."""
  if cfg.mixture != "synthetic":
    raise ValueError(f"data.mixture={cfg.mixture!r} is not a known recipe; known: synthetic")


class SyntheticIterator:
  """A repetitive token stream: each row is a random rotation of a fixed short pattern.

  Learnable (the pattern repeats), deterministic given the seed, checkpointable.
  """

  def __init__(self, *, seq_len, batch_size, seed, vocab_size, process_index=0,
               process_count=1, period=61):
    rng = np.random.default_rng(seed)
    self._pattern = rng.integers(2, min(vocab_size, 50000), size=period, dtype=np.int64)
    self._seq_len, self._batch_size = seq_len, batch_size
    self._seed, self._pi, self._pc = seed, process_index, process_count
    self._step = 0

  def __iter__(self):
    return self

  def __next__(self):
    rng = np.random.default_rng([self._seed, self._step, self._pi])
    offsets = rng.integers(0, len(self._pattern), size=self._batch_size)
    idx = (offsets[:, None] + np.arange(self._seq_len + 1)[None, :]) % len(self._pattern)
    self._step += 1
    return {"input_ids": self._pattern[idx].astype(np.int32)}

  def get_state(self) -> dict:
    return {"step": self._step}

  def set_state(self, state: dict) -> None:
    self._step = int(state["step"])


def build_train_iterator(cfg, *, seq_len: int, batch_size: int, seed: int, vocab_size: int,
                         process_index: int = 0, process_count: int = 1):
  """Iterator of {"input_ids": int32[batch_size, seq_len + 1]} for THIS process.

  `batch_size` is the per-process batch. The iterator has get_state()/set_state().
  """
  validate_config(cfg, vocab_size)
  return SyntheticIterator(seq_len=seq_len, batch_size=batch_size, seed=seed,
                           vocab_size=vocab_size, process_index=process_index,
                           process_count=process_count)
