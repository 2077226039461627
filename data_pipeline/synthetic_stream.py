"""The synthetic token stream (no files): used by trainer tests and smoke runs."""

from __future__ import annotations

import numpy as np


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
