"""The documents of one source in memory, in input order, as the curation steps read them."""

from __future__ import annotations

import os

import numpy as np

from data_pipeline import sources as sources_lib


class Corpus:
  """The documents of one source, in input order, with what the steps need.

  texts: list[str]; metas: list[dict] (every field but `text`); origins: list[str] ("file#k");
  file_index: int64[N] (which input file); tokens: int64[N] (tokens written per document,
  EOS included; filled by the tokenizer before the chain runs).
  """

  def __init__(self, files: list[str], texts: list[str], metas: list[dict],
               file_index: np.ndarray, base_dir: str = "."):
    self.files, self.texts, self.metas = list(files), texts, metas
    self.file_index = np.asarray(file_index, dtype=np.int64)
    self.base_dir = base_dir
    self.tokens = np.zeros(len(texts), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(np.bincount(self.file_index,
                                                        minlength=len(files)))])
    self.file_starts = starts.astype(np.int64)

  def __len__(self) -> int:
    return len(self.texts)

  def origin(self, i: int) -> str:
    """'path#k': document k (0-based) of its input file."""
    f = int(self.file_index[i])
    return f"{self.files[f]}#{i - int(self.file_starts[f])}"


def read_records(path: str, field: str | None = "text") -> list[dict]:
  """Every document of a jsonl[.gz|.zst] or parquet file as a dict (text + metadata); with
  field=None any JSON object is a record (Dolma attribute files).

  Raises ValueError naming the file (and line) on anything malformed, like sources.iter_documents.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"document file not found: {path}")
  if os.path.getsize(path) == 0:
    raise ValueError(f"document file is empty: {path}")
  out = []
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq  # deferred: heavy import
    try:
      rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for bad files
      raise ValueError(f"{path}: cannot read parquet ({e})") from e
    for k, row in enumerate(rows):
      if field is not None and not isinstance(row.get(field), str):
        raise ValueError(f"{path}: row {k}: expected a string {field!r} column")
      out.append(row)
  elif path.endswith(sources_lib.TEXT_SUFFIXES):
    out.extend(sources_lib.iter_json_lines(path, field))
  else:
    raise ValueError(f"{path}: unknown document format; expected one of "
                     f"{sources_lib.TEXT_SUFFIXES}")
  if not out:
    raise ValueError(f"document file has no documents: {path}")
  return out


def load_corpus(files: list[str], field: str = "text", base_dir: str = ".") -> Corpus:
  """All documents of `files` (in order) as a Corpus."""
  texts, metas, file_index = [], [], []
  for f, path in enumerate(files):
    for rec in read_records(path, field):
      texts.append(rec.pop(field))
      metas.append(rec)
      file_index.append(f)
  return Corpus(files, texts, metas, np.asarray(file_index, dtype=np.int64), base_dir)
