"""The exact mixing arithmetic: which source and which instance each global row reads.

Global row r (step t, process i, row j: r = (t * n + i) * B + j) gets a source label from
blocks of `BLOCK` rows, each holding exactly round(w_s * BLOCK) rows of source s (largest
remainder) in a seeded random order. The k-th row labelled s is the k-th draw from s: epoch
e = k // N_s, instance pi_{s,e}(k mod N_s), with pi a seeded permutation of the whole source
that changes every epoch. Draw counts follow from the labels in closed form, so a process
reads only its own rows and the state is just the step.
"""

from __future__ import annotations

import numpy as np

from data_pipeline import index_shuffle
from data_pipeline.document_sources import PackedStream

BLOCK = 8192  # rows per exact-proportion block
PLAN_STEPS = 64  # steps whose row -> instance plan is computed in one vectorised pass


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
  """Integer counts summing to `total`, as close to weights * total as integers allow."""
  exact = weights / weights.sum() * total
  counts = np.floor(exact).astype(np.int64)
  short = total - int(counts.sum())
  order = np.argsort(-(exact - counts), kind="stable")
  counts[order[:short]] += 1
  return counts


class Mixer:
  """Computes batch `step` of one process from its sources; stateless except text streams."""

  def __init__(self, names, weights, srcs, *, batch_size: int, seed: int, shuffle: bool,
               process_index: int, process_count: int, vocab_size: int, max_epochs: int = 0):
    self.names, self.srcs = list(names), list(srcs)
    self.weights = np.asarray(weights, dtype=np.float64)
    self.block_counts = largest_remainder(self.weights, BLOCK)
    if not (self.block_counts > 0).any():
      raise ValueError("mixture: all weights are zero")
    self.window = srcs[0].window
    self.B, self.seed, self.shuffle = batch_size, seed, shuffle
    self.pi, self.pc, self.vocab_size, self.max_epochs = (process_index, process_count,
                                                         vocab_size, max_epochs)
    self.streams = {n: s for n, s in zip(self.names, self.srcs)
                    if isinstance(s, PackedStream)}
    self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._plan: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None

  def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(label int64[BLOCK], rank of each row among its label's rows in the block) of block b."""
    if b not in self._blocks:
      labels = np.repeat(np.arange(len(self.names)), self.block_counts)
      rng = np.random.default_rng(index_shuffle.derive_seed(self.seed, "mixture-block", b))
      labels = labels[rng.permutation(BLOCK)] if len(self.names) > 1 else labels
      order = np.argsort(labels, kind="stable")
      starts = np.concatenate([[0], np.cumsum(self.block_counts)])
      rank = np.empty(BLOCK, dtype=np.int64)
      rank[order] = np.arange(BLOCK) - starts[labels[order]]
      if len(self._blocks) > 4:
        self._blocks.clear()
      self._blocks[b] = (labels, rank)
    return self._blocks[b]

  def _plan_steps(self, first: int):
    """Labels, draw epochs and instance indices of this process's rows for PLAN_STEPS steps."""
    steps = np.arange(first, first + PLAN_STEPS, dtype=np.int64)
    rows = ((steps[:, None] * self.pc + self.pi) * self.B + np.arange(self.B)[None, :]).ravel()
    block, pos = rows // BLOCK, rows % BLOCK
    labels = np.empty_like(rows)
    draws = np.empty_like(rows)
    for b in np.unique(block).tolist():
      lab, rank = self._block(b)
      m = block == b
      labels[m] = lab[pos[m]]
      draws[m] = b * self.block_counts[labels[m]] + rank[pos[m]]
    epochs = np.zeros_like(rows)
    instances = np.full_like(rows, -1)
    for s, src in enumerate(self.srcs):
      m = labels == s
      if not m.any() or is_stream(src):
        continue
      n = src.num_instances
      epochs[m], within = draws[m] // n, draws[m] % n
      if self.shuffle:
        inst = np.empty_like(within)
        for e in np.unique(epochs[m]).tolist():
          em = epochs[m] == e
          inst[em] = index_shuffle.permute(
              within[em], n, index_shuffle.derive_seed(self.seed, self.names[s], e))
        instances[m] = inst
      else:
        instances[m] = within
    shape = (PLAN_STEPS, self.B)
    self._plan = (first, labels.reshape(shape), epochs.reshape(shape), instances.reshape(shape))

  def batch(self, step: int) -> np.ndarray:
    """Rows of `step` for this process: int32[B, window]."""
    if self._plan is None or not self._plan[0] <= step < self._plan[0] + PLAN_STEPS:
      self._plan_steps(step - step % PLAN_STEPS)
    first, labels, epochs, instances = self._plan
    labels, epochs, instances = labels[step - first], epochs[step - first], instances[step - first]
    if self.max_epochs and epochs.max() >= self.max_epochs:
      raise StopIteration
    out = np.empty((self.B, self.window), dtype=np.int32)
    for s, src in enumerate(self.srcs):
      rows = np.flatnonzero(labels == s)
      if not rows.size:
        continue
      if is_stream(src):
        out[rows] = src.take(rows.size)
        if self.max_epochs and src.get_state()["epoch"] >= self.max_epochs:
          raise StopIteration
      else:
        src.copy_into(instances[rows], out, rows.tolist())
    if out.max() >= self.vocab_size:  # one check for the whole batch
      row = int(np.argmax(out.max(axis=1) >= self.vocab_size))
      src = self.srcs[labels[row]]
      if not is_stream(src):
        src.check_ids(out[row:row + 1], instances[row:row + 1])  # names the file and range
      raise ValueError(f"source {self.names[labels[row]]!r}: token id {int(out[row].max())} "
                       f">= vocab_size {self.vocab_size}")
    return out


def is_stream(src) -> bool:
  return isinstance(src, PackedStream)
