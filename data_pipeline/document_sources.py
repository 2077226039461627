"""Document sources: documents (text or token ids) by index, and the stream that packs them.

  * `DocumentSource`: documents of jsonl/parquet/ArrayRecord files, file by file;
    `TfdsDocumentSource`: those of a prepared TFDS dataset; `DocumentSubset`: one side of a
    held-out split of either.
  * `PackedStream`: documents -> tokens + EOS -> one concatenated stream -> rows of `window`
    tokens, sharded by process, with a small checkpointable state.
Token files (data_pipeline/sources.py) need no packing; the mixture reads both kinds.
"""

from __future__ import annotations

import json
import os

import numpy as np

from data_pipeline import index_shuffle
from data_pipeline import tokenizer as tokenizer_lib
from data_pipeline.sources import OpenFiles, read_documents

RECORD_FORMATS = ("text", "json", "tokens_uint16", "tokens_uint32")

def _decode_record(record, record_format: str, where: str):
  """A document from one ArrayRecord/TFDS value: str, or int64[n] token ids."""
  if record_format == "text":
    return record.decode("utf-8") if isinstance(record, bytes) else str(record)
  if record_format == "json":
    doc = json.loads(record)
    if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
      raise ValueError(f"{where}: expected a JSON object with a string 'text' field")
    return doc["text"]
  if record_format in ("tokens_uint16", "tokens_uint32"):
    dtype = np.dtype(record_format.split("_")[1])
    if isinstance(record, bytes):
      if len(record) % dtype.itemsize:
        raise ValueError(f"{where}: record of {len(record)} bytes is not a multiple of {dtype}")
      return np.frombuffer(record, dtype=dtype).astype(np.int64)
    return np.asarray(record).astype(np.int64)
  raise ValueError(f"record_format must be one of {RECORD_FORMATS}, got {record_format!r}")


def _is_array_record(path: str) -> bool:
  return path.endswith(".array_record") or ".array_record-" in path


def _array_record_reader(path: str):
  from array_record.python import array_record_module  # deferred: optional format
  if os.path.getsize(path) == 0:
    raise ValueError(f"array_record file is empty: {path}")
  try:
    return array_record_module.ArrayRecordReader(path)
  except Exception as e:  # the C++ reader raises RuntimeError/ValueError on bad files
    raise ValueError(f"{path}: cannot read array_record file ({e})") from e


class DocumentSource:
  """Documents by index over files (jsonl[.gz|.zst], parquet, array_record), file by file.

  Document files are read whole (one file cached at a time): text sources suit small and
  medium corpora; tokenise big ones once with `python -m data_pipeline.tokenize_files`.
  """

  def __init__(self, paths: list[str], name: str = "text", field: str = "text",
               record_format: str = "text"):
    self.name, self.paths, self.field, self.record_format = name, list(paths), field, record_format
    if record_format not in RECORD_FORMATS:
      raise ValueError(f"source {name!r}: record_format must be one of {RECORD_FORMATS}")
    self._file = OpenFiles(self._read_file, capacity=1)
    # Reading every text file once up front validates it (truncated gzip, bad JSON) before
    # training starts, and gives exact document counts for sharding.
    self.file_docs = np.array([self._count(f) for f in range(len(self.paths))], dtype=np.int64)
    self._starts = np.concatenate([[0], np.cumsum(self.file_docs)]).astype(np.int64)

  def _count(self, f: int) -> int:
    path = self.paths[f]
    if not _is_array_record(path):
      return len(self._file(f))
    reader = _array_record_reader(path)
    n = reader.num_records()
    reader.close()
    if n == 0:
      raise ValueError(f"array_record file has no records: {path}")
    return int(n)

  def _read_file(self, f: int) -> list:
    """All documents of file f: str, or int64[n] token ids (the one reading path)."""
    path = self.paths[f]
    if not _is_array_record(path):
      return read_documents(path, self.field)
    reader = _array_record_reader(path)
    docs = [_decode_record(r, self.record_format, f"{path}:{i}")
            for i, r in enumerate(reader.read_all())]
    reader.close()
    return docs

  def __len__(self) -> int:
    return int(self._starts[-1])

  def get(self, f: int, j: int):
    """Document j of file f: str or int64[n] token ids."""
    return self._file(f)[j]

  def __getitem__(self, index: int):
    f = int(np.searchsorted(self._starts, index, side="right") - 1)
    return self.get(f, index - int(self._starts[f]))


class DocumentSubset:
  """The documents keep[f] (int64 indices, per file) of a document source: one side of a split.

  Has the interface PackedStream reads (name, file_docs, get); document j of file f here is
  document keep[f][j] of the underlying source.
  """

  def __init__(self, docs, keep: list[np.ndarray]):
    self.docs, self.name, self._keep = docs, docs.name, keep
    self.file_docs = np.array([len(k) for k in keep], dtype=np.int64)

  def __len__(self) -> int:
    return int(self.file_docs.sum())

  def get(self, f: int, j: int):
    return self.docs.get(f, int(self._keep[f][j]))


class TfdsDocumentSource:
  """Documents of a prepared TFDS dataset (`tfds.data_source`, no TensorFlow, no download)."""

  def __init__(self, name: str, split: str, data_dir: str, feature: str = "text",
               record_format: str = "text", source_name: str = "tfds"):
    import tensorflow_datasets as tfds  # deferred: heavy import
    self.name = source_name
    try:
      self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types for unprepared/missing datasets
      raise FileNotFoundError(f"source {source_name!r}: TFDS dataset {name!r} split {split!r} "
                              f"is not prepared under {data_dir} ({e})") from e
    self.feature, self.record_format = feature, record_format
    if len(self._ds) == 0:
      raise ValueError(f"source {source_name!r}: TFDS {name}/{split} has no examples")
    self.file_docs = np.array([len(self._ds)], dtype=np.int64)

  def __len__(self) -> int:
    return int(self.file_docs[0])

  def get(self, f: int, j: int):
    example = self._ds[j]
    if self.feature not in example:
      raise ValueError(f"source {self.name!r}: TFDS example has no feature {self.feature!r} "
                       f"(has {sorted(example)})")
    return _decode_record(example[self.feature], self.record_format, f"{self.name}[{j}]")

  def __getitem__(self, index: int):
    return self.get(0, index)


class PackedStream:
  """Documents -> tokens + EOS -> one concatenated stream -> rows of `window` tokens.

  Per epoch, files are visited in a seeded permutation and documents within a file in a
  seeded permutation; this process takes every `process_count`-th document of that order, so
  processes read disjoint documents that together cover the source. State is three ints
  (epoch, document position, token offset), so a restore re-tokenises one document at most.
  """

  _LOOKAHEAD = 64  # documents tokenised per encode_batch call

  def __init__(self, docs, *, window: int, seed: int, shuffle: bool = True,
               tokenizer: str = "olmo", vocab_size: int | None = None,
               process_index: int = 0, process_count: int = 1, name: str = "text"):
    self.docs, self.window, self.name = docs, int(window), name
    self._seed, self._shuffle, self._tokenizer_name = seed, shuffle, tokenizer
    self._pi, self._pc, self.vocab_size = process_index, process_count, vocab_size
    self._file_docs = np.asarray(docs.file_docs, dtype=np.int64)
    self._total = int(self._file_docs.sum())
    self.docs_per_epoch = (self._total - process_index + process_count - 1) // process_count
    if self.docs_per_epoch <= 0:
      raise ValueError(f"source {name!r}: {self._total} documents, fewer than the "
                       f"{process_count} processes that share it")
    self._tok = None
    self._eos = tokenizer_lib.EOS_TOKEN_ID
    self._epoch, self._pos, self._offset = 0, 0, 0
    self._order: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, order, starts)
    self._lookahead: dict[tuple[int, int], np.ndarray] = {}  # tokenised, not yet packed

  def _tokenizer(self):
    if self._tok is None:
      self._tok = tokenizer_lib.load_tokenizer(self._tokenizer_name)
      n = self._tok.get_vocab_size()
      if self.vocab_size is not None and n > self.vocab_size:
        raise ValueError(f"source {self.name!r}: tokenizer {self._tokenizer_name!r} has "
                         f"{n} ids > vocab_size {self.vocab_size}")
    return self._tok

  def _epoch_order(self, epoch: int):
    """(file order int64[F], starts int64[F+1] of files in that order) for one epoch."""
    if self._order is None or self._order[0] != epoch:
      n_files = len(self._file_docs)
      order = (index_shuffle.permute(np.arange(n_files), n_files,
                                     index_shuffle.derive_seed(self._seed, self.name, epoch))
               if self._shuffle else np.arange(n_files))
      starts = np.concatenate([[0], np.cumsum(self._file_docs[order])])
      self._order = (epoch, order, starts)  # one epoch at a time; drops old token lookahead
      self._lookahead = {}
    return self._order[1:]

  def _doc_id(self, epoch: int, pos: int) -> tuple[int, int]:
    """(file, document in file) of this process's `pos`-th document of `epoch`."""
    order, starts = self._epoch_order(epoch)
    g = pos * self._pc + self._pi
    k = int(np.searchsorted(starts, g, side="right") - 1)
    f, j = int(order[k]), g - int(starts[k])
    if self._shuffle:
      j = int(index_shuffle.permute(np.array([j]), int(self._file_docs[f]),
                                    index_shuffle.derive_seed(self._seed, self.name, epoch, f))[0])
    return f, j

  def _tokens(self, epoch: int, pos: int) -> np.ndarray:
    """Token ids of this process's `pos`-th document of `epoch`, EOS appended: int64[n + 1]."""
    self._epoch_order(epoch)
    if (epoch, pos) not in self._lookahead:
      positions = range(pos, min(pos + self._LOOKAHEAD, self.docs_per_epoch))
      raw = [self.docs.get(*self._doc_id(epoch, p)) for p in positions]
      texts = [(i, d) for i, d in enumerate(raw) if isinstance(d, str)]
      if texts:
        enc = self._tokenizer().encode_batch([d for _, d in texts], add_special_tokens=False)
        for (i, _), e in zip(texts, enc):
          raw[i] = np.asarray(e.ids, dtype=np.int64)
      for p, ids in zip(positions, raw):
        if self.vocab_size is not None and ids.size and ids.max() >= self.vocab_size:
          raise ValueError(f"source {self.name!r}: token id {int(ids.max())} >= vocab_size "
                           f"{self.vocab_size} in document {self._doc_id(epoch, p)}")
        self._lookahead[(epoch, p)] = np.append(ids, self._eos)
    return self._lookahead[(epoch, pos)]

  def take(self, k: int) -> np.ndarray:
    """The next k rows of the packed stream: int32[k, window]."""
    need = k * self.window
    out = np.empty(need, dtype=np.int32)
    filled = 0
    while filled < need:
      toks = self._tokens(self._epoch, self._pos)
      n = min(len(toks) - self._offset, need - filled)
      out[filled:filled + n] = toks[self._offset:self._offset + n]
      filled += n
      self._offset += n
      if self._offset == len(toks):
        self._lookahead.pop((self._epoch, self._pos), None)
        self._pos, self._offset = self._pos + 1, 0
        if self._pos == self.docs_per_epoch:
          self._epoch, self._pos = self._epoch + 1, 0
    return out.reshape(k, self.window)

  def get_state(self) -> dict:
    return {"epoch": self._epoch, "pos": self._pos, "offset": self._offset}

  def set_state(self, state: dict) -> None:
    self._epoch, self._pos, self._offset = (int(state["epoch"]), int(state["pos"]),
                                            int(state["offset"]))
