"""Data files: OLMo token files by window, and the documents of jsonl/parquet files.

Two kinds of source feed the mixture:
  * `TokenFileSource`: OLMo/Dolma pre-tokenized files; instance i is the i-th window of
    `window` consecutive tokens, cut per file exactly as OLMo's MemMapDataset cuts them
    (file by file, a tail shorter than the window is dropped). Implements Grain's
    RandomAccessDataSource protocol (`len`, `[i]`) plus a vectorised `read(indices)`; every
    read goes through `copy_into`, which the mixture calls to fill a batch in place.
  * documents (text or token ids) by index, packed into windows by `PackedStream`
    (data_pipeline/document_sources.py) over the file readers here (`iter_documents`).
Open files (memmaps, decoded document files) are held by one cache type, `OpenFiles`.

The window length is a parameter: OLMo cuts windows of `max_sequence_length` tokens; the
trainer here wants rows of L + 1 tokens (inputs [:, :-1], targets [:, 1:]), so the mixture
asks sources for window = L + 1. Reproducing OLMo's exact instances means L = seq_len - 1.
Every error names the file or source; nothing is silently skipped.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib

import numpy as np

TOKEN_DTYPES = ("uint16", "uint32")
TEXT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json", ".json.zst", ".parquet")
_NPY_MAGIC = b"\x93NUMPY"
_MAX_OPEN_MEMMAPS = 256  # keeps file descriptors under the usual 1024 soft limit


def resolve_paths(patterns, base_dir: str, what: str) -> list[str]:
  """Files matching globs (relative ones under base_dir), sorted per pattern; raises if none match.

  `what` names the source in the error message.
  """
  if isinstance(patterns, str):
    patterns = [p for p in patterns.split("|") if p]
  if not patterns:
    raise ValueError(f"{what}: no paths given")
  files = []
  for pattern in patterns:
    full = pattern if os.path.isabs(pattern) else os.path.join(base_dir, pattern)
    if os.path.isdir(full):
      raise ValueError(f"{what}: {full} is a directory; give a glob such as {full}/*.npy")
    matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
    # The tokenizer's index/metadata JSON and in-flight temporaries sit next to the shards.
    matches = [m for m in matches if ".tmp" not in os.path.basename(m)
               and not (m.endswith(".json") and os.path.basename(m).startswith(("index", "part-")))]
    if not matches:
      raise FileNotFoundError(f"{what}: no files match {full}")
    for m in matches:
      if not os.path.isfile(m):
        raise FileNotFoundError(f"{what}: file not found: {m}")
    files.extend(matches)
  return files


# ------------------------------------------------------------------------------------------
# Token files.


def token_file_layout(path: str, dtype: str = "uint16") -> tuple[np.dtype, int, int]:
  """(dtype, header bytes, number of tokens) of a token file: raw memmap or `.npy` with header.

  OLMo's Dolma files are raw ids despite their `.npy` name; a real npy header is detected by
  its magic bytes and its dtype wins over `dtype`.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"token file not found: {path}")
  size = os.path.getsize(path)
  if size == 0:
    raise ValueError(f"token file is empty: {path}")
  with open(path, "rb") as f:
    if f.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
      f.seek(0)
      try:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, file_dtype = read_header(f)
      except ValueError as e:
        raise ValueError(f"token file {path}: bad .npy header: {e}") from e
      if len(shape) != 1 or file_dtype.name not in TOKEN_DTYPES:
        raise ValueError(f"token file {path}: .npy array must be 1-D uint16/uint32, got "
                         f"shape {shape} dtype {file_dtype}")
      offset = f.tell()
      if offset + shape[0] * file_dtype.itemsize != size:
        raise ValueError(f"token file {path}: size {size} disagrees with its .npy header "
                         f"({shape[0]} x {file_dtype})")
      return file_dtype, offset, int(shape[0])
  if dtype not in TOKEN_DTYPES:
    raise ValueError(f"token dtype must be one of {TOKEN_DTYPES}, got {dtype!r}")
  np_dtype = np.dtype(dtype)
  if size % np_dtype.itemsize:
    raise ValueError(f"token file {path}: size {size} bytes is not a multiple of {dtype} "
                     f"({np_dtype.itemsize} bytes); wrong dtype or a truncated file")
  return np_dtype, 0, size // np_dtype.itemsize


class OpenFiles:
  """At most `capacity` opened files by index; `open_fn(i)` opens a missing one.

  The one file cache of the sources. When full, the file opened first is closed: training
  reads are uniformly random over a shuffled corpus, where least-recently-opened evicts as
  well as least-recently-used and costs one dict lookup per read.
  """

  def __init__(self, open_fn, capacity: int):
    self._open_fn, self._capacity = open_fn, capacity
    self._files: dict = {}

  def __call__(self, i: int):
    f = self._files.get(i)
    if f is None:
      if len(self._files) >= self._capacity:
        del self._files[next(iter(self._files))]
      f = self._files[i] = self._open_fn(i)
    return f


class TokenFileSource:
  """OLMo token files as a random-access source of int32[window] instances.

  Instance order is file by file, window by window, as OLMo's MemMapDataset numbers them.
  `exclude` (per file, sorted disjoint token spans [start, end)) removes every window that
  overlaps a span from the numbering: the held-out split of the source.
  """

  def __init__(self, paths: list[str], window: int, dtype: str = "uint16",
               vocab_size: int | None = None, name: str = "tokens",
               exclude: list[list[tuple[int, int]]] | None = None):
    if window < 1:
      raise ValueError(f"{name}: window must be >= 1, got {window}")
    self.name, self.window, self.vocab_size = name, int(window), vocab_size
    self.paths = list(paths)
    layouts = [token_file_layout(p, dtype) for p in self.paths]
    self._dtypes = [l[0] for l in layouts]
    self._offsets = [l[1] for l in layouts]
    self.file_tokens = np.array([l[2] for l in layouts], dtype=np.int64)
    self._runs(exclude or [[] for _ in self.paths])
    if self.num_instances == 0:
      raise ValueError(f"source {name!r}: {int(self.file_tokens.sum())} tokens in "
                       f"{len(self.paths)} file(s), fewer than one window of {window}"
                       + (" outside the held-out split" if exclude else ""))
    self._memmap = OpenFiles(self._open, _MAX_OPEN_MEMMAPS)

  def _runs(self, exclude) -> None:
    """Instance numbering as runs of consecutive windows: run r holds instances
    [run_start[r], run_start[r + 1]) = windows run_window[r]... of file run_file[r]."""
    files, windows, counts = [], [], []
    for f, spans in enumerate(exclude):
      n_windows = int(self.file_tokens[f]) // self.window
      first = 0
      for a, b in list(spans) + [(n_windows * self.window, n_windows * self.window)]:
        last = min(a // self.window, n_windows)  # windows [first, last) end by token a
        files.append(f), windows.append(first), counts.append(max(last - first, 0))
        first = max(first, -(-b // self.window))  # the first window starting at or after b
    self._run_file = np.array(files, dtype=np.int64)
    self._run_window = np.array(windows, dtype=np.int64)
    self._run_start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    self.num_instances = int(np.sum(counts))

  @property
  def num_tokens(self) -> int:
    """Tokens in all files (tails and held-out spans included)."""
    return int(self.file_tokens.sum())

  def __len__(self) -> int:
    return self.num_instances

  def __getitem__(self, index: int) -> np.ndarray:
    """Instance `index`: int32[window]."""
    return self.read(np.array([index]))[0]

  def __getstate__(self):
    return {**self.__dict__, "_memmap": None}  # open files stay behind; reopened lazily

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._memmap = OpenFiles(self._open, _MAX_OPEN_MEMMAPS)

  def _open(self, f: int) -> np.ndarray:
    mm = np.memmap(self.paths[f], dtype=self._dtypes[f], mode="r", offset=self._offsets[f],
                   shape=(int(self.file_tokens[f]),))
    # A plain ndarray view of the mapping: slicing np.memmap runs Python-level hooks per
    # slice, which costs more than copying a window.
    return mm.view(np.ndarray)

  def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(file index, first token position) of each instance index. int64[k] -> int64[k] x 2."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_instances):
      raise IndexError(f"source {self.name!r}: index out of range [0, {self.num_instances})")
    r = np.searchsorted(self._run_start, indices, side="right") - 1
    return self._run_file[r], (self._run_window[r] + indices - self._run_start[r]) * self.window

  def copy_into(self, indices, out: np.ndarray, rows) -> None:
    """Writes instance indices[j] to out[rows[j]] (int32[window] rows); no checks.

    The one reading path: the mixture writes each source's rows straight into the batch.
    """
    files, positions = self.locate(indices)
    w, memmap = self.window, self._memmap
    for row, f, p in zip(rows, files.tolist(), positions.tolist()):
      out[row] = memmap(f)[p:p + w]

  def read(self, indices) -> np.ndarray:
    """Instances at `indices` (int[k]) -> int32[k, window]; ids >= vocab_size raise."""
    indices = np.asarray(indices, dtype=np.int64)
    out = np.empty((len(indices), self.window), dtype=np.int32)
    self.copy_into(indices, out, range(len(indices)))
    self.check_ids(out, indices)
    return out

  def check_ids(self, rows: np.ndarray, indices) -> None:
    """Raises naming the file and token range if rows (read from `indices`) hold an id
    >= vocab_size."""
    if self.vocab_size is None or not len(rows) or rows.max() < self.vocab_size:
      return
    j = int(np.argmax(rows.max(axis=1) >= self.vocab_size))
    files, positions = self.locate(np.asarray(indices)[j:j + 1])
    raise ValueError(
        f"source {self.name!r}: token id {int(rows[j].max())} >= vocab_size "
        f"{self.vocab_size} in {self.paths[files[0]]} within tokens [{positions[0]}, "
        f"{positions[0] + self.window}); wrong tokenizer or dtype?")


# ------------------------------------------------------------------------------------------
# Documents.


def _iter_lines(path: str, chunk_bytes: int = 1 << 22):
  """Lines (bytes) of a plain, .gz or .zst file, streamed; a truncated or corrupt archive
  raises ValueError naming the file."""
  with open(path, "rb") as raw:
    if path.endswith(".gz"):
      try:
        with gzip.open(raw) as f:
          yield from f
      except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: truncated or corrupt gzip file ({e})") from e
    elif path.endswith(".zst"):
      import zstandard  # deferred: only needed for .zst inputs
      obj, pending = zstandard.ZstdDecompressor().decompressobj(), b""
      try:
        while chunk := raw.read(chunk_bytes):
          data = obj.decompress(chunk)
          while obj.eof and obj.unused_data:  # concatenated frames
            rest = obj.unused_data
            obj = zstandard.ZstdDecompressor().decompressobj()
            data += obj.decompress(rest)
          lines = (pending + data).split(b"\n")
          pending = lines.pop()
          for line in lines:
            yield line + b"\n"
      except zstandard.ZstdError as e:
        raise ValueError(f"{path}: corrupt zstd file ({e})") from e
      if not obj.eof:
        raise ValueError(f"{path}: truncated zstd file (the data ends inside a frame)")
      if pending:
        yield pending
    else:
      yield from raw


def iter_json_lines(path: str, field: str | None = "text"):
  """The JSON objects of a jsonl[.gz|.zst] file, blank lines skipped; each must hold a string
  `field` (any object when field is None). Raises ValueError naming the file and line."""
  for lineno, line in enumerate(_iter_lines(path), start=1):
    if not line.strip():
      continue
    try:
      doc = json.loads(line)
    except UnicodeDecodeError as e:  # json.loads decodes bytes as UTF-8 first
      raise ValueError(
          f"{path}:{lineno}: not UTF-8 text (byte 0x{line[e.start]:02x} at byte {e.start + 1} "
          "of the line); re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{lineno}: not a JSON line ({e})") from e
    if not isinstance(doc, dict) or (field is not None and not isinstance(doc.get(field), str)):
      raise ValueError(f"{path}:{lineno}: expected an object with a string {field!r} field")
    yield doc


def iter_documents(path: str, field: str = "text"):
  """Documents (str) of a Dolma-style file, streamed: `{"text": ...}` per jsonl line
  (.jsonl[.gz|.zst]) or a `text` column (.parquet). Blank lines are not documents; anything
  else malformed, missing, empty or truncated raises naming the file (and line)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"document file not found: {path}")
  if os.path.getsize(path) == 0:
    raise ValueError(f"document file is empty: {path}")
  count = 0
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq  # deferred: heavy import
    try:
      pf = pq.ParquetFile(path)
      batches = pf.iter_batches(columns=[field], batch_size=4096)
      for batch in batches:
        for d in batch.column(0).to_pylist():
          if not isinstance(d, str):
            raise ValueError(f"{path}: row {count}: {field!r} is {type(d).__name__}, "
                             "expected a string")
          count += 1
          yield d
    except ValueError:
      raise
    except Exception as e:  # pyarrow raises several types for missing columns / bad files
      raise ValueError(f"{path}: cannot read column {field!r} from parquet ({e})") from e
  elif path.endswith(TEXT_SUFFIXES):
    for doc in iter_json_lines(path, field):
      count += 1
      yield doc[field]
  else:
    raise ValueError(f"{path}: unknown document format; expected one of {TEXT_SUFFIXES}")
  if not count:
    raise ValueError(f"document file has no documents: {path}")


def read_documents(path: str, field: str = "text") -> list[str]:
  """All documents of a file (see iter_documents)."""
  return list(iter_documents(path, field))
