"""Weighted, deterministic, checkpointable Grain iterators of token batches from a data plan.

A batch is {"input_ids": int32[B, L + 1]}: every source is cut into windows of L + 1 tokens.
The data config is resolved once into a plan (data_pipeline/data_plan.py); which row reads which
source and instance is the exact arithmetic of data_pipeline/mixing.py, the same for any
number of processes, so the iterator state is just the step. Text sources
(jsonl/parquet/ArrayRecord/TFDS documents) are packed on the fly by `document_sources.PackedStream`,
which shards documents by process and keeps a small per-process state (epoch, document,
offset). With data.heldout_fraction > 0 every source is first split (data_pipeline/heldout.py):
the numbering runs over the training side only.

An entry point resolves `config.data` into a plan (data_pipeline/data_plan.py), validates it,
builds its files (data_pipeline/materialize.py) and then calls `build_train_iterator` with the
plan; the held-out batches come from data_pipeline/heldout.py the same way.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import weakref

import grain
import numpy as np

from data_pipeline import heldout
from data_pipeline import sources as sources_lib
from data_pipeline.data_plan import DataPlan, document_source, require_plan, validate_config
from data_pipeline.document_sources import DocumentSubset, PackedStream
from data_pipeline.mixing import BLOCK, Mixer, is_stream
from data_pipeline.synthetic_stream import SyntheticIterator

STATE_VERSION = 1


class MixtureIterator(grain.DatasetIterator):
  """Grain iterator of {"input_ids": int32[B, L + 1]}; state = step (+ text stream positions)."""

  def __init__(self, mixer: Mixer, fingerprint: dict):
    super().__init__()
    self._mixer, self._fingerprint, self._step = mixer, fingerprint, 0

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self._mixer.batch(self._step)
    self._step += 1
    return {"input_ids": batch}

  def get_state(self) -> dict:
    # The fingerprint travels as one JSON string: the prefetch thread deep-copies the state
    # after every batch, and a string copies for free.
    return {"version": STATE_VERSION, "step": self._step,
            "streams": {n: s.get_state() for n, s in self._mixer.streams.items()},
            "fingerprint": self._fingerprint_json}

  @functools.cached_property
  def _fingerprint_json(self) -> str:
    return json.dumps(self._fingerprint, sort_keys=True)

  def set_state(self, state: dict) -> None:
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"data iterator state version {state.get('version')!r} != {STATE_VERSION}")
    saved = json.loads(state.get("fingerprint", "{}"))
    diff = {k: (saved.get(k), v) for k, v in
            json.loads(self._fingerprint_json).items() if saved.get(k) != v}
    if diff:
      raise ValueError(f"data iterator state was saved for another data setup; differing "
                       f"(saved, now): {diff}")
    for name, stream in self._mixer.streams.items():
      stream.set_state(state["streams"][name])
    self._step = int(state["step"])


class MixtureDataset(grain.IterDataset):
  """Grain IterDataset over a Mixer (compose with grain transformations, e.g. prefetch)."""

  def __init__(self, mixer: Mixer, fingerprint: dict):
    super().__init__()
    self._mixer, self._fingerprint = mixer, fingerprint

  def __iter__(self) -> MixtureIterator:
    return MixtureIterator(self._mixer, self._fingerprint)


def build_sources(plan: DataPlan, *, window: int, seed: int, vocab_size: int,
                  process_index: int, process_count: int) -> list:
  """Source objects (TokenFileSource or PackedStream) of the plan's used sources, in name
  order: the training side of the held-out split."""
  dc, out = plan.config, []
  for name, spec in plan.used.items():
    files = plan.files(name)
    if spec.kind == "tokens":
      out.append(sources_lib.TokenFileSource(
          files, window, plan.dtype(name), vocab_size=vocab_size, name=name,
          exclude=(heldout.plan_token_spans(plan, name, files) if plan.holds_out
                   else None)))
      continue
    docs = document_source(plan, name, files)
    if plan.holds_out:
      masks = heldout.plan_document_masks(plan, name, docs, files)
      docs = DocumentSubset(docs, [np.flatnonzero(~m) for m in masks])
    out.append(PackedStream(
        docs, window=window, seed=seed, shuffle=dc.shuffle, tokenizer=dc.tokenizer,
        vocab_size=vocab_size, process_index=process_index, process_count=process_count,
        name=name))
  return out


def _size(src) -> int:
  """Instances (token files) or documents (text sources) of a built source."""
  return len(src.docs) if is_stream(src) else src.num_instances


def build_train_iterator(plan: DataPlan, *, seq_len: int, batch_size: int, seed: int,
                         vocab_size: int, process_index: int = 0, process_count: int = 1):
  """Iterator of {"input_ids": int32[batch_size, seq_len + 1]} for THIS process.

  `plan`: a resolved DataPlan whose files are built (data_pipeline.materialize); this never
  builds anything. `batch_size` is the per-process batch; the global batch is
  batch_size * process_count. The iterator has get_state()/set_state() (a JSON-serialisable
  dict). For token-file mixtures the state is the same on every process; with text sources
  it is per process.
  """
  require_plan(plan, "build_train_iterator")
  validate_config(plan, vocab_size)
  if plan.synthetic:
    return SyntheticIterator(seq_len=seq_len, batch_size=batch_size, seed=seed,
                             vocab_size=vocab_size, process_index=process_index,
                             process_count=process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  dc, window, specs = plan.config, seq_len + 1, plan.used
  srcs = build_sources(plan, window=window, seed=seed, vocab_size=vocab_size,
                       process_index=process_index, process_count=process_count)
  weights = plan.weights([None if is_stream(s) else s.num_tokens for s in srcs])
  for n, w, s in zip(specs, weights, srcs):
    logging.info("data source %s: weight %.4f, %d %s of %d tokens", n, w / sum(weights),
                 _size(s), "documents" if is_stream(s) else "windows", window)
  mixer = Mixer(list(specs), weights, srcs, batch_size=batch_size, seed=seed,
                shuffle=dc.shuffle, process_index=process_index, process_count=process_count,
                vocab_size=vocab_size, max_epochs=dc.max_epochs)
  fingerprint = {
      "mixture": plan.name, "seed": seed, "window": window, "batch_size": batch_size,
      "process_count": process_count, "shuffle": mixer.shuffle, "block": BLOCK,
      "sources": {n: [round(float(w), 12), _size(s)] for n, w, s in zip(specs, weights, srcs)},
  }
  if mixer.streams:
    fingerprint["process_index"] = process_index  # text stream positions are per process
  if plan.holds_out:
    fingerprint["heldout"] = [dc.heldout_fraction, heldout.CHUNK_TOKENS]
  return _iterate(MixtureDataset(mixer, fingerprint), dc.prefetch)


def _iterate(ds: grain.IterDataset, prefetch: int):
  """iter(ds), with `prefetch` batches prepared ahead in a background thread."""
  if not prefetch:
    return iter(ds)
  it = iter(grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch))
  # Stop the prefetch thread before interpreter teardown, when its queue module is gone.
  atexit.register(_close_quietly, weakref.ref(it))
  return it


def _close_quietly(ref) -> None:
  it = ref()
  if it is not None:
    it.close()
    # Grain's __del__ closes again during teardown, when module globals are already None.
    it.close = lambda: None
