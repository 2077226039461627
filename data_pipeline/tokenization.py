"""Documents -> OLMo-format token files: one shard per input, optionally curated first.

Each input file becomes one shard `part-NNNNN.npy`: raw little-endian token ids (uint16 when
the vocabulary fits, else uint32), no header, every document followed by EOS, the layout
OLMo/Dolma token files use despite the `.npy` name. With a curation chain (a list of steps, see
data_pipeline/curation.py) the shard holds only the documents the chain keeps, and index.json
records documents and tokens in / kept / dropped per step.

Guarantees:
  * The output's index.json names the inputs (path + SHA-256 of their bytes), the tokenizer and
    the chain (data_pipeline/token_index.py). A non-empty output whose index does not match is
    refused unless `overwrite`, which first removes the old shards, sidecars and index (nothing
    else).
  * A shard is written under a temporary name and renamed when complete, with a
    `part-NNNNN.json` sidecar holding its input's SHA-256, so a rerun skips exactly the shards
    whose input bytes are unchanged; a failed run removes its temporary files.
  * Bad input (unknown step, threshold out of range, missing score field, unreadable classifier)
    is reported before anything is written.
"""

from __future__ import annotations

import glob
import json
import logging
import multiprocessing
import os
import time

import numpy as np
from tqdm import tqdm

from data_pipeline import atomic, curation
from data_pipeline import sources as sources_lib
from data_pipeline import tokenizer as tokenizer_lib
from data_pipeline.corpus import load_corpus
from data_pipeline.curation_step import CurationError
from data_pipeline.token_index import (
    INDEX_FILE,
    check_output,
    make_index,
    make_plan,
    read_index,
    remove_temporaries,
    shard_name,
)

_DOCS_PER_CALL = 512  # documents per encode_batch call: amortises the Rust call overhead


def token_dtype(vocab_size: int) -> str:
  """The smallest OLMo token dtype that holds ids < vocab_size."""
  return "uint16" if vocab_size <= 1 << 16 else "uint32"



def encode_texts(tok, texts: list[str], dtype) -> list[np.ndarray]:
  """Token ids of each text with EOS appended: list of dtype[n_i + 1]."""
  dtype = np.dtype(dtype)
  eos = dtype.type(tokenizer_lib.EOS_TOKEN_ID)
  out = []
  for k in range(0, len(texts), _DOCS_PER_CALL):
    for e in tok.encode_batch(texts[k:k + _DOCS_PER_CALL], add_special_tokens=False):
      out.append(np.append(np.asarray(e.ids, dtype=dtype), eos))
  return out


def _write_tokens(path: str, arrays) -> int:
  """Concatenate arrays into `path` atomically; returns the items (tokens) written."""
  n = 0

  def counted():
    nonlocal n
    for a in arrays:
      n += a.size
      yield a

  atomic.write_atomic(path, counted())
  return n


def tokenize_docs_to_file(docs, path: str, tokenizer_name: str = "olmo") -> tuple[int, int]:
  """Tokenise documents (iterable of str) into one token file at `path`, atomically.

  Returns (documents, tokens); EOS is appended to every document.
  """
  tok = tokenizer_lib.load_tokenizer(tokenizer_name)
  dtype = token_dtype(tok.get_vocab_size())
  n_docs = 0

  def arrays():
    nonlocal n_docs
    batch = []
    for doc in docs:
      batch.append(doc)
      if len(batch) == _DOCS_PER_CALL:
        yield np.concatenate(encode_texts(tok, batch, dtype))
        n_docs += len(batch)
        batch = []
    if batch:
      yield np.concatenate(encode_texts(tok, batch, dtype))
      n_docs += len(batch)

  n_tokens = _write_tokens(path, arrays())
  return n_docs, n_tokens


def _sidecar(output: str, k: int) -> str:
  return os.path.join(output, shard_name(k)[:-4] + ".json")


def _shard_done(output: str, k: int, inp: dict, tok_hash: str) -> dict | None:
  """The sidecar of shard k if the shard is complete and made from these input bytes."""
  try:
    with open(_sidecar(output, k)) as f:
      meta = json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None
  shard = os.path.join(output, shard_name(k))
  if (meta.get("source") != inp["path"] or meta.get("source_sha256") != inp["sha256"]
      or meta.get("tokenizer_hash") != tok_hash or not os.path.isfile(shard)
      or os.path.getsize(shard) != meta["tokens"] * np.dtype(meta["dtype"]).itemsize):
    return None
  return meta


def _worker_init(threads_per_worker: int) -> None:
  # The Rust tokenizer starts one thread per core in every worker; cap them so N workers
  # do not oversubscribe the machine.
  os.environ["RAYON_NUM_THREADS"] = str(threads_per_worker)


def _tokenize_shard(job) -> dict:
  inp, output, k, tokenizer_name, tok_hash = job
  t0 = time.time()
  n_docs, n_tokens = tokenize_docs_to_file(
      sources_lib.iter_documents(inp["path"]), os.path.join(output, shard_name(k)),
      tokenizer_name)
  tok = tokenizer_lib.load_tokenizer(tokenizer_name)
  meta = {"file": shard_name(k), "source": inp["path"], "source_sha256": inp["sha256"],
          "documents": n_docs, "tokens": n_tokens,
          "dtype": token_dtype(tok.get_vocab_size()), "tokenizer_hash": tok_hash,
          "seconds": round(time.time() - t0, 3)}
  atomic.write_json(_sidecar(output, k), meta)
  return meta


def resolve_inputs(patterns: list[str]) -> list[str]:
  """Input files for globs, sorted, deduplicated; raises naming a glob that matches nothing."""
  files = []
  for pattern in patterns:
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise FileNotFoundError(f"--inputs {pattern!r} matches no files")
    files.extend(matches)
  files = list(dict.fromkeys(files))
  for path in files:
    if not path.endswith(sources_lib.TEXT_SUFFIXES):
      raise ValueError(f"{path}: unknown document format; expected one of "
                       f"{sources_lib.TEXT_SUFFIXES}")
    if os.path.getsize(path) == 0:
      raise ValueError(f"input file is empty: {path}")
  return files



def run(inputs: list[str], output: str, tokenizer: str = "olmo", workers: int = 1,
        progress: bool = True, chain=None, overwrite: bool = False, base_dir: str = ".",
        field: str = "text") -> dict:
  """Tokenise input files into `output` (one shard per input); returns the index dict.

  `chain`: curation steps (list of dicts or JSON) applied to all inputs together first;
  relative paths inside it (classifier, attributes) are under `base_dir`.
  """
  for flag, value in [("--output", output), *(("--inputs", i) for i in inputs)]:
    if "://" in value:  # a bucket or other URL: os would make a local directory "gs:"
      raise ValueError(f"{flag} {value}: tokenize reads and writes local files; copy the "
                       "inputs here (gcloud storage cp) or mount the bucket (gcsfuse "
                       "--implicit-dirs), and copy the output up afterwards")
  files = resolve_inputs(inputs)
  steps = curation.parse_chain(chain) if chain is not None else None
  if steps is None and field != "text":
    raise ValueError("--field is only read with --chain")
  plan = make_plan(files, tokenizer, curation.chain_spec(steps) if steps is not None else None,
                   field)
  created = not os.path.exists(output)
  old = check_output(output, plan, overwrite)
  try:
    if steps is None:
      return _run_plain(files, output, plan, tokenizer, workers, progress)
    if old is not None and old.get("complete"):
      logging.info("tokenize: %s already holds this curation (%s), reused", output,
                   curation.describe_chain(plan["chain"]))
      return old
    return _run_curated(files, output, plan, steps, tokenizer, workers, base_dir, field)
  except BaseException:
    _remove_unfinished(output, created)
    raise
  finally:
    if os.path.isdir(output):
      remove_temporaries(output)  # a worker killed mid-shard leaves its temporary behind


def _remove_unfinished(output: str, created: bool) -> None:
  """After a failed run: an incomplete index with no finished shard goes (nothing of it is
  reusable), and so does the output directory when this run made it and it is empty now."""
  if not os.path.isdir(output):
    return
  remove_temporaries(output)
  if not any(n.startswith("part-") for n in os.listdir(output)):
    try:
      if not (read_index(output) or {}).get("complete", True):
        os.remove(os.path.join(output, INDEX_FILE))
    except (ValueError, OSError):
      pass
  if created and not os.listdir(output):
    os.rmdir(output)


def _run_plain(files, output, plan, tokenizer, workers, progress) -> dict:
  tok_hash = plan["tokenizer_hash"]
  dtype = token_dtype(tokenizer_lib.load_tokenizer(tokenizer).get_vocab_size())
  os.makedirs(output, exist_ok=True)
  index_path = os.path.join(output, INDEX_FILE)
  metas: dict[int, dict] = {}
  jobs = []
  for k, inp in enumerate(plan["inputs"]):
    done = _shard_done(output, k, inp, tok_hash)
    if done is not None:
      metas[k] = done
    else:
      jobs.append((inp, output, k, tokenizer, tok_hash))
  if metas:
    logging.info("tokenize: %d of %d shards already done in %s, skipped", len(metas),
                 len(files), output)
  # The plan goes first, so an interrupted run is recognised (and resumed) by the next one.
  atomic.write_json(index_path, make_index(plan, [], dtype, complete=False))
  sizes = {inp["path"]: os.path.getsize(inp["path"]) for inp in plan["inputs"]}
  bar = tqdm(total=sum(sizes[j[0]["path"]] for j in jobs), unit="B", unit_scale=True,
             desc=f"tokenize -> {output}", disable=not progress or not jobs)
  workers = max(1, min(workers, len(jobs)))
  if workers == 1:
    results = map(_tokenize_shard, jobs)
    pool = None
  else:
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe after tokenizer/JAX threads
    pool = ctx.Pool(workers, initializer=_worker_init,
                    initargs=(max(1, (os.cpu_count() or 1) // workers),))
    results = pool.imap_unordered(_tokenize_shard, jobs)
  try:
    for meta in results:
      k = int(meta["file"][5:10])
      metas[k] = meta
      bar.update(sizes[meta["source"]])
  finally:
    bar.close()
    if pool is not None:
      pool.terminate()
      pool.join()
  shards = [metas[k] for k in range(len(files))]
  index = make_index(plan, shards, dtype, complete=True)
  atomic.write_json(index_path, index)
  return index


def _run_curated(files, output, plan, steps, tokenizer, workers, base_dir, field) -> dict:
  t0 = time.time()
  corpus = load_corpus(files, field=field, base_dir=base_dir)
  for step in steps:
    step.check(corpus)  # score fields, attribute files, classifier: before the slow part
  tok = tokenizer_lib.load_tokenizer(tokenizer)
  dtype = token_dtype(tok.get_vocab_size())
  ids = encode_texts(tok, corpus.texts, dtype)
  corpus.tokens = np.array([a.size for a in ids], dtype=np.int64)
  kept, rows = curation.run_chain(steps, corpus, workers=workers, log=logging.info)
  if not kept.size:
    raise CurationError(f"curation chain {curation.describe_chain(plan['chain'])} "
                                 f"kept none of the {len(corpus)} documents of {files[0]}...")
  os.makedirs(output, exist_ok=True)
  index_path = os.path.join(output, INDEX_FILE)
  atomic.write_json(index_path, make_index(plan, [], dtype, complete=False))
  shards = []
  kept_file = corpus.file_index[kept]
  for k, inp in enumerate(plan["inputs"]):
    mine = kept[kept_file == k]
    if not mine.size:
      continue  # an empty token file is not a valid shard
    n = _write_tokens(os.path.join(output, shard_name(k)), (ids[i] for i in mine.tolist()))
    shards.append({"file": shard_name(k), "source": inp["path"], "documents": int(mine.size),
                   "tokens": n})
  accounting = {"description": curation.describe_chain(plan["chain"]),
                "key": curation.digest(plan), "documents_in": len(corpus),
                "tokens_in": int(corpus.tokens.sum()), "seconds": round(time.time() - t0, 3),
                "steps": rows}
  index = make_index(plan, shards, dtype, complete=True, curation=accounting)
  atomic.write_json(index_path, index)
  return index
