"""The held-out document split of each training source, and readers of evaluation documents.

With `data.heldout_fraction = f > 0`, a fraction f of every source's documents is held out:
training never reads a token of them, evaluation reads only them.
  * Text sources (jsonl/parquet/ArrayRecord/TFDS): document j of a file is held out when a
    hash of (the file's key, j) falls below f.
  * Token files have no document index (documents are EOS-terminated runs of one flat
    stream), so each file is cut into chunks of CHUNK_TOKENS tokens and a chunk is held out
    when a hash of (the file's key, chunk) falls below f. Its span is widened to the EOS
    boundaries around it, so every document touching a held-out chunk is held out whole;
    training windows overlapping a held-out span are left out of the numbering.
A file's key is its path under data_dir, so the split depends on the files and f only: not on
the seed, sequence length, batch size, process count or recipe weights. Every run of a study
holds out (and evaluates on) the same documents.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Iterable, Iterator

import numpy as np

from data_pipeline import index_shuffle
from data_pipeline import sources as sources_lib
from data_pipeline import tokenizer as tokenizer_lib
from data_pipeline.data_plan import DataPlan, document_source, require_plan
from data_pipeline.mixing import largest_remainder
from data_pipeline.synthetic_stream import SyntheticIterator

CHUNK_TOKENS = 4096  # held-out unit of token files, before widening to whole documents
_SCAN = 4096  # tokens read per step when looking for a document boundary
EOS = tokenizer_lib.EOS_TOKEN_ID


def file_key(path: str, root: str) -> str:
  """The name a file is hashed under: its path under `root`, else its absolute path."""
  rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
  return os.path.abspath(path) if rel.startswith("..") else rel.replace(os.sep, "/")


def held_out(key: str, n: int, fraction: float) -> np.ndarray:
  """bool[n]: which of units 0..n-1 (documents or chunks) of file `key` are held out."""
  if fraction <= 0 or n == 0:
    return np.zeros(n, dtype=bool)
  u = index_shuffle.uniform(np.arange(n), index_shuffle.derive_seed("heldout", key))
  return u < fraction


def _doc_start(tokens: np.ndarray, a: int) -> int:
  """First token of the document holding token a (just after the previous EOS)."""
  while a > 0:
    lo = max(0, a - _SCAN)
    hits = np.flatnonzero(tokens[lo:a] == EOS)
    if hits.size:
      return lo + int(hits[-1]) + 1
    a = lo
  return 0


def _doc_end(tokens: np.ndarray, b: int) -> int:
  """One past the EOS that ends the document holding token b - 1 (or the file's end)."""
  p = b - 1
  while p < len(tokens):
    hi = min(len(tokens), p + _SCAN)
    hits = np.flatnonzero(tokens[p:hi] == EOS)
    if hits.size:
      return p + int(hits[0]) + 1
    p = hi
  return len(tokens)


def token_spans(tokens: np.ndarray, key: str, fraction: float) -> list[tuple[int, int]]:
  """Held-out token spans [start, end) of one token file: sorted, disjoint, whole documents.

  tokens: the file's ids (a memmap view; only the neighbourhood of held-out chunks is read).
  """
  n = len(tokens)
  spans: list[tuple[int, int]] = []
  for c in np.flatnonzero(held_out(key, -(-n // CHUNK_TOKENS), fraction)).tolist():
    a = _doc_start(tokens, c * CHUNK_TOKENS)
    b = _doc_end(tokens, min((c + 1) * CHUNK_TOKENS, n))
    if spans and a <= spans[-1][1]:
      spans[-1] = (spans[-1][0], max(b, spans[-1][1]))
    else:
      spans.append((a, b))
  return spans


def open_tokens(path: str, dtype: str = "uint16") -> np.ndarray:
  """A token file's ids as a read-only memmap view (raw or .npy with header)."""
  file_dtype, offset, n = sources_lib.token_file_layout(path, dtype)
  return np.memmap(path, dtype=file_dtype, mode="r", offset=offset, shape=(n,)).view(np.ndarray)


def split_documents(tokens: np.ndarray) -> list[np.ndarray]:
  """A run of whole documents -> one int32 array per document (each ends with its EOS, but
  a file's last document may lack one)."""
  ends = np.flatnonzero(tokens == EOS) + 1
  if not ends.size or ends[-1] != len(tokens):
    ends = np.append(ends, len(tokens))
  return [np.asarray(d, dtype=np.int32) for d in np.split(tokens, ends[:-1]) if len(d)]


@dataclasses.dataclass(frozen=True)
class EvalDocument:
  """One evaluation document: what bits-per-byte and perplexity are computed from.

  tokens: int32[n], the document's ids followed by EOS (the EOS is a prediction target too);
  text: the document's text, or None where it is read as tokens (decode it for byte counts).
  """
  source: str
  tokens: np.ndarray
  text: str | None = None

  def num_bytes(self, tokenizer=None) -> int:
    """UTF-8 bytes of the text (the bits-per-byte denominator); token documents are decoded
    with `tokenizer` (a tokenizers.Tokenizer)."""
    if self.text is not None:
      return len(self.text.encode("utf-8"))
    ids = self.tokens[:-1] if len(self.tokens) and self.tokens[-1] == EOS else self.tokens
    return len(tokenizer.decode(ids.tolist(), skip_special_tokens=False).encode("utf-8"))


def token_file_documents(path: str, source: str, spans=None,
                         dtype: str = "uint16") -> Iterator[EvalDocument]:
  """The documents of a token file, or only those inside `spans` (held-out token spans)."""
  tokens = open_tokens(path, dtype)
  for a, b in [(0, len(tokens))] if spans is None else spans:
    for doc in split_documents(tokens[a:b]):
      yield EvalDocument(source, doc)


def text_documents(docs: Iterable, source: str, tokenizer: str = "olmo",
                   batch: int = 64) -> Iterator[EvalDocument]:
  """EvalDocuments of documents given as str (tokenised here) or token ids, EOS appended."""
  tok = None
  pending: list = []

  def flush():
    nonlocal tok
    texts = [d for d in pending if isinstance(d, str)]
    if texts and tok is None:
      tok = tokenizer_lib.load_tokenizer(tokenizer)
    enc = iter(tok.encode_batch(texts, add_special_tokens=False) if texts else [])
    for d in pending:
      ids = next(enc).ids if isinstance(d, str) else d
      yield EvalDocument(source, np.append(np.asarray(ids, dtype=np.int32), np.int32(EOS)),
                         d if isinstance(d, str) else None)
    pending.clear()

  for d in docs:
    pending.append(d)
    if len(pending) == batch:
      yield from flush()
  yield from flush()


def eval_file_documents(paths: list[str], *, tokenizer: str = "olmo", field: str = "text",
                        token_dtype: str = "uint16") -> Iterator[EvalDocument]:
  """Documents of evaluation files a user names (Paloma-style validation sets), in order.

  Text files (.jsonl[.gz|.zst], .parquet) are tokenised; any other file is read as OLMo token
  files (EOS-separated). Each document's source is the file's name.
  """
  for path in paths:
    name = os.path.basename(path)
    if path.endswith(sources_lib.TEXT_SUFFIXES):
      yield from text_documents(sources_lib.iter_documents(path, field), name, tokenizer)
    else:
      yield from token_file_documents(path, name, dtype=token_dtype)


def pack(documents: Iterable[EvalDocument], window: int, n: int) -> np.ndarray:
  """The first n rows of `window` tokens of the documents concatenated: int32[k <= n, window].

  Reads documents only until n rows are full.
  """
  out = np.empty(n * window, dtype=np.int32)
  filled = 0
  for doc in documents:
    take = min(len(doc.tokens), len(out) - filled)
    out[filled:filled + take] = doc.tokens[:take]
    filled += take
    if filled == len(out):
      break
  return out[:filled // window * window].reshape(-1, window)


# ------------------------------------------------------------------------------------------
# The held-out side of a data plan: what the in-loop loss and `eval.run --lm_heldout` read.


def plan_token_spans(plan, name: str, files: list[str]) -> list:
  """Held-out token spans of each token file of a plan's source."""
  fraction = plan.config.heldout_fraction
  return [token_spans(open_tokens(p, plan.dtype(name)), file_key(p, plan.root), fraction)
          for p in files]


def plan_document_masks(plan, name: str, docs, files: list[str]) -> list:
  """bool[documents] per file of a plan's document source: held out or not."""
  spec = plan.specs[name]
  keys = ([f"tfds:{spec.tfds_name}:{spec.split}"] if spec.kind == "tfds"
          else [file_key(p, plan.root) for p in files])
  return [held_out(k, int(n), plan.config.heldout_fraction)
          for k, n in zip(keys, docs.file_docs)]


def _source_documents(plan, name: str) -> Iterator[EvalDocument]:
  """The held-out documents of one source, file by file, in file order."""
  files = plan.files(name)
  if plan.specs[name].kind == "tokens":
    for path, spans in zip(files, plan_token_spans(plan, name, files)):
      yield from token_file_documents(path, name, spans, plan.dtype(name))
    return
  docs = document_source(plan, name, files)
  held = [np.flatnonzero(m) for m in plan_document_masks(plan, name, docs, files)]
  yield from text_documents(
      (docs.get(f, j) for f, idx in enumerate(held) for j in idx.tolist()), name,
      plan.config.tokenizer)


def heldout_documents(plan: DataPlan, start: int = 0):
  """The held-out documents of every source a run reads (EvalDocument), source by source in
  name order, file by file; the same on every call. `start` skips that many (resume).
  `plan`: a resolved DataPlan whose files are built."""
  require_plan(plan, "heldout_documents")
  if not plan.holds_out:
    raise ValueError("there is no held-out split: set data.heldout_fraction > 0 (e.g. 0.01) "
                     "over a mixture of files")
  docs = (d for name in plan.used for d in _source_documents(plan, name))
  return itertools.islice(docs, start, None)


def heldout_batches(plan: DataPlan, num_batches: int, *, seq_len: int, batch_size: int,
                    seed: int, vocab_size: int, process_index: int = 0,
                    process_count: int = 1) -> list:
  """`num_batches` batches {"input_ids": int32[batch_size, seq_len + 1]} of held-out documents
  for THIS process (the in-loop evaluation loss). `plan`: a resolved DataPlan whose files are
  built.

  Each global batch holds the sources in the mixture's proportions (largest remainder over
  all rows); a source's rows are its held-out documents packed in order, so the batches are
  the same for every seed, and for any split of the batch over processes. The synthetic
  stream has no documents: it gives batches of another seed (`seed` is read only there).
  """
  require_plan(plan, "heldout_batches")
  if plan.synthetic:
    it = SyntheticIterator(seq_len=seq_len, batch_size=batch_size, seed=seed + 1_000_003,
                           vocab_size=vocab_size, process_index=process_index,
                           process_count=process_count)
    return [next(it) for _ in range(num_batches)]
  if not plan.holds_out:
    raise ValueError("the held-out loss reads the held-out split of each source, and "
                     "data.heldout_fraction is 0; set it (e.g. 0.01) or set eval.every=0")
  weights = np.asarray(plan.weights(plan.disk_tokens()))
  window, total = seq_len + 1, num_batches * batch_size * process_count
  rows = []
  for name, n in zip(plan.used, largest_remainder(weights, total).tolist()):
    got = pack(_source_documents(plan, name), window, n)
    if len(got) < n:
      raise ValueError(f"source {name!r}: its held-out split holds {len(got)} windows of "
                       f"{window} tokens, the held-out loss needs {n}; raise "
                       "data.heldout_fraction or lower eval.batches")
    rows.append(got)
  rows = np.concatenate(rows)
  if rows.max() >= vocab_size:
    raise ValueError(f"held-out split: token id {int(rows.max())} >= vocab_size {vocab_size}")
  rows = rows[np.random.default_rng(0).permutation(total)]  # every batch mixes the sources
  rows = rows.reshape(num_batches, process_count, batch_size, window)[:, process_index]
  return [{"input_ids": r} for r in rows]
