"""`python -m data_pipeline.tokenize`: documents -> OLMo-format token files + index.json.

  python -m data_pipeline.tokenize --inputs 'raw/*.jsonl.gz' --output data/mysource/ \
      [--tokenizer olmo] [--workers N]

Each input file becomes one shard `part-NNNNN.npy`: raw little-endian token ids (uint16 when
the vocabulary fits, else uint32), no header, every document followed by EOS, the layout
OLMo/Dolma token files use despite the `.npy` name. A shard is written under a temporary name
and renamed when complete, with a `part-NNNNN.json` sidecar (source, documents, tokens), so a
rerun skips finished shards and no reader ever sees half a shard. `index.json` sums them up.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import multiprocessing
import os
import sys
import time

import numpy as np

from data_pipeline import sources as sources_lib
from data_pipeline import tokenizer as tokenizer_lib

INDEX_FILE = "index.json"
_DOCS_PER_CALL = 512  # documents per encode_batch call: amortises the Rust call overhead


def shard_name(k: int) -> str:
  return f"part-{k:05d}.npy"


def token_dtype(vocab_size: int) -> str:
  """The smallest OLMo token dtype that holds ids < vocab_size."""
  return "uint16" if vocab_size <= 1 << 16 else "uint32"


def atomic_write_json(path: str, obj) -> None:
  """Write JSON so that readers see the old file or the whole new one, never a part."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def tokenize_docs_to_file(docs, path: str, tokenizer_name: str = "olmo") -> tuple[int, int]:
  """Tokenise documents (iterable of str) into one token file at `path`, atomically.

  Returns (documents, tokens); EOS is appended to every document.
  """
  tok = tokenizer_lib.load_tokenizer(tokenizer_name)
  dtype = np.dtype(token_dtype(tok.get_vocab_size()))
  eos = tokenizer_lib.EOS_TOKEN_ID
  tmp = f"{path}.tmp-{os.getpid()}"
  n_docs = n_tokens = 0
  try:
    with open(tmp, "wb") as f:
      batch = []

      def flush():
        nonlocal n_tokens
        encs = tok.encode_batch(batch, add_special_tokens=False)
        ids = np.concatenate([np.append(np.asarray(e.ids, dtype=dtype), dtype.type(eos))
                              for e in encs])
        f.write(ids.tobytes())
        n_tokens += ids.size
        batch.clear()

      for doc in docs:
        batch.append(doc)
        n_docs += 1
        if len(batch) == _DOCS_PER_CALL:
          flush()
      if batch:
        flush()
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return n_docs, n_tokens


def _sidecar(output: str, k: int) -> str:
  return os.path.join(output, shard_name(k)[:-4] + ".json")


def _shard_done(output: str, k: int, src: str, tok_hash: str) -> dict | None:
  """The sidecar of shard k if the shard is complete and made from `src` with this tokenizer."""
  try:
    with open(_sidecar(output, k)) as f:
      meta = json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None
  shard = os.path.join(output, shard_name(k))
  if (meta.get("source") != os.path.abspath(src) or meta.get("source_bytes") != os.path.getsize(src)
      or meta.get("tokenizer_hash") != tok_hash or not os.path.isfile(shard)
      or os.path.getsize(shard) != meta["tokens"] * np.dtype(meta["dtype"]).itemsize):
    return None
  return meta


def _worker_init(threads_per_worker: int) -> None:
  # The Rust tokenizer starts one thread per core in every worker; cap them so N workers
  # do not oversubscribe the machine.
  os.environ["RAYON_NUM_THREADS"] = str(threads_per_worker)


def _tokenize_shard(job) -> dict:
  src, output, k, tokenizer_name, tok_hash = job
  t0 = time.time()
  n_docs, n_tokens = tokenize_docs_to_file(
      sources_lib.iter_documents(src), os.path.join(output, shard_name(k)), tokenizer_name)
  tok = tokenizer_lib.load_tokenizer(tokenizer_name)
  meta = {"file": shard_name(k), "source": os.path.abspath(src),
          "source_bytes": os.path.getsize(src), "documents": n_docs, "tokens": n_tokens,
          "dtype": token_dtype(tok.get_vocab_size()), "tokenizer_hash": tok_hash,
          "seconds": round(time.time() - t0, 3)}
  atomic_write_json(_sidecar(output, k), meta)
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
        progress: bool = True) -> dict:
  """Tokenise input files into `output` (one shard per input); returns the index dict."""
  files = resolve_inputs(inputs)
  tok_hash = tokenizer_lib.tokenizer_hash(tokenizer)
  os.makedirs(output, exist_ok=True)
  index_path = os.path.join(output, INDEX_FILE)
  if os.path.exists(index_path):
    with open(index_path) as f:
      old = json.load(f)
    if old.get("tokenizer_hash") != tok_hash:
      raise ValueError(f"{output} holds token files from another tokenizer "
                       f"({old.get('tokenizer')}); use a new --output directory")
  for stale in glob.glob(os.path.join(output, "*.tmp-*")):
    os.remove(stale)  # left by an interrupted run; never visible under a shard name
  metas: dict[int, dict] = {}
  jobs = []
  for k, src in enumerate(files):
    done = _shard_done(output, k, src, tok_hash)
    if done is not None:
      metas[k] = done
    else:
      jobs.append((src, output, k, tokenizer, tok_hash))
  if metas:
    logging.info("tokenize: %d of %d shards already done in %s, skipped", len(metas),
                 len(files), output)
  from tqdm import tqdm  # deferred: only the CLI path shows progress
  total_bytes = sum(os.path.getsize(j[0]) for j in jobs)
  bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenize -> {output}",
             disable=not progress or not jobs)
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
      bar.update(meta["source_bytes"])
  finally:
    bar.close()
    if pool is not None:
      pool.terminate()
  shards = [metas[k] for k in range(len(files))]
  index = {
      "format": "olmo-token-files: raw little-endian ids, EOS after every document, no header",
      "dtype": shards[0]["dtype"], "eos_token_id": tokenizer_lib.EOS_TOKEN_ID,
      "tokenizer": tokenizer, "tokenizer_hash": tok_hash,
      "documents": sum(m["documents"] for m in shards),
      "tokens": sum(m["tokens"] for m in shards),
      "shards": [{k: m[k] for k in ("file", "source", "documents", "tokens")} for m in shards],
  }
  atomic_write_json(index_path, index)
  return index


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m data_pipeline.tokenize", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--inputs", nargs="+", required=True,
                 help="globs of .jsonl/.jsonl.gz/.jsonl.zst/.parquet files (quote them)")
  p.add_argument("--output", required=True, help="output directory of part-NNNNN.npy shards")
  p.add_argument("--tokenizer", default="olmo", help="'olmo' or a tokenizer.json path")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="parallel processes (one input file each)")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  try:
    index = run(args.inputs, args.output, args.tokenizer, args.workers)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{index['documents']} documents, {index['tokens']} tokens in "
        f"{len(index['shards'])} shards ({index['dtype']}) -> {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
