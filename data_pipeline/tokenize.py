"""`python -m data_pipeline.tokenize`: documents -> OLMo-format token files + index.json.

  python -m data_pipeline.tokenize --inputs 'raw/*.jsonl.gz' --output data/mysource/ \
      [--chain CHAIN.json] [--tokenizer olmo] [--workers N] [--overwrite]
  python -m data_pipeline.tokenize --recipe NAME --data_dir data/ [--workers N] [--overwrite]

Each input file becomes one shard `part-NNNNN.npy`: raw little-endian token ids (uint16 when
the vocabulary fits, else uint32), no header, every document followed by EOS, the layout
OLMo/Dolma token files use despite the `.npy` name. With `--chain` (a JSON list of curation
steps, see data_pipeline/curation.py) the shard holds only the documents the chain keeps, and
index.json records documents and tokens in / kept / dropped per step; `--recipe` materialises
every curated source of a recipe once under <data_dir>/curated/<key>/.

Guarantees:
  * The output's index.json names the inputs (path + SHA-256 of their bytes), the tokenizer and
    the chain. A non-empty output whose index does not match is refused unless `--overwrite`,
    which first removes the old shards, sidecars and index (nothing else).
  * A shard is written under a temporary name and renamed when complete, with a
    `part-NNNNN.json` sidecar holding its input's SHA-256, so a rerun skips exactly the shards
    whose input bytes are unchanged; a failed run removes its temporary files.
  * Bad input (unknown step, threshold out of range, missing score field, unreadable classifier)
    is reported before anything is written; the CLI prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time

import numpy as np

from data_pipeline import atomic, curation
from data_pipeline import recipe_config as recipes_lib
from data_pipeline import sources as sources_lib
from data_pipeline import tokenizer as tokenizer_lib

INDEX_FILE = "index.json"
FORMAT = "olmo-token-files: raw little-endian ids, EOS after every document, no header"
_DOCS_PER_CALL = 512  # documents per encode_batch call: amortises the Rust call overhead


def shard_name(k: int) -> str:
  return f"part-{k:05d}.npy"


def token_dtype(vocab_size: int) -> str:
  """The smallest OLMo token dtype that holds ids < vocab_size."""
  return "uint16" if vocab_size <= 1 << 16 else "uint32"


def file_sha256(path: str) -> str:
  """SHA-256 of a file's bytes: what identifies an input (an edit of the same size included)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      h.update(chunk)
  return h.hexdigest()


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


# ------------------------------------------------------------------------------------------
# The output directory guard.


def read_index(output: str) -> dict | None:
  """The index.json of `output`, None if absent; raises ValueError naming a corrupt one."""
  path = os.path.join(output, INDEX_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      index = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is corrupt ({e}); remove it or pass --overwrite to "
                     "re-tokenise into this directory") from e
  if not isinstance(index, dict):
    raise ValueError(f"{path} is corrupt (not a JSON object); remove it or pass --overwrite")
  return index


def _owned(name: str) -> bool:
  """Files this tool writes into an output directory (all that --overwrite removes)."""
  return (name == INDEX_FILE or ".tmp-" in name
          or (name.startswith("part-") and name.endswith((".npy", ".json"))))


def _remove_temporaries(output: str) -> None:
  for path in glob.glob(os.path.join(glob.escape(output), "*.tmp-*")):
    try:
      os.remove(path)
    except FileNotFoundError:
      pass


def _mismatch(old: dict, plan: dict) -> str:
  """'' when an existing index was made from the planned inputs, else what differs."""
  if "inputs" not in old:
    return "its index.json predates input hashing"
  if old.get("tokenizer_hash") != plan["tokenizer_hash"]:
    return f"it was tokenised with another tokenizer ({old.get('tokenizer')})"
  if old.get("chain") != plan["chain"] or old.get("field", "text") != plan["field"]:
    return (f"it was curated with another chain "
            f"({curation.describe_chain(old.get('chain') or [])})")
  if old.get("chain_version") != plan.get("chain_version"):
    return (f"it was curated by version {old.get('chain_version', 1)} of the curation steps "
            f"(now {plan['chain_version']})")
  old_inputs = {i["path"]: i["sha256"] for i in old["inputs"]}
  new_inputs = {i["path"]: i["sha256"] for i in plan["inputs"]}
  if list(old_inputs) != list(new_inputs):
    added = [p for p in new_inputs if p not in old_inputs]
    gone = [p for p in old_inputs if p not in new_inputs]
    return (f"its inputs differ (new: {added[:3]}, no longer given: {gone[:3]})"
            if added or gone else "its inputs are in another order")
  changed = [p for p in new_inputs if new_inputs[p] != old_inputs[p]]
  if changed:
    return f"input {changed[0]} changed since (SHA-256 differs)"
  return ""


def check_output(output: str, plan: dict, overwrite: bool) -> dict | None:
  """Refuses an output that holds another tokenization; returns its index when it matches.

  With `overwrite`, a mismatching (or corrupt, or unindexed) output loses its shards, sidecars
  and index first; files this tool does not write are left alone.
  """
  if not os.path.isdir(output):
    if os.path.exists(output):
      raise ValueError(f"--output {output} is a file, not a directory")
    return None
  _remove_temporaries(output)  # left by a killed run; never visible under a shard name
  names = [n for n in os.listdir(output) if _owned(n) or n.endswith(".npy")]
  if not names:
    return None
  try:
    old = read_index(output)
    why = ("it holds token files but no index.json" if old is None else _mismatch(old, plan))
  except ValueError:
    if not overwrite:
      raise
    old, why = None, "its index.json is corrupt"
  if not why:
    return old
  if old is not None and not old.get("complete") and why.startswith("input "):
    # A run of these inputs that stopped (bad input, kill): not another tokenization. The
    # sidecars decide which of its shards are reused.
    logging.info("tokenize: %s: resuming a run that stopped (%s)", output, why)
    return None
  if not overwrite:
    raise ValueError(f"--output {output} holds another tokenization: {why}; use a new --output "
                     "or pass --overwrite to replace it")
  logging.warning("tokenize: --overwrite: removing the old shards of %s (%s)", output, why)
  for n in os.listdir(output):
    if _owned(n):
      os.remove(os.path.join(output, n))
  return None


def make_plan(files: list[str], tokenizer: str, chain_spec, field: str = "text") -> dict:
  """What an output is made of: inputs (path + SHA-256), tokenizer, chain (None: no curation)."""
  plan = {"inputs": [{"path": os.path.abspath(p), "sha256": file_sha256(p)} for p in files],
          "tokenizer": tokenizer, "tokenizer_hash": tokenizer_lib.tokenizer_hash(tokenizer),
          "chain": chain_spec, "field": field}
  if chain_spec is not None:  # the same chain may decide differently in another version
    plan["chain_version"] = curation.CHAIN_VERSION
  return plan


def _index(plan: dict, shards: list[dict], dtype: str, complete: bool, **extra) -> dict:
  return {"format": FORMAT, "dtype": dtype, "eos_token_id": tokenizer_lib.EOS_TOKEN_ID,
          **plan, "complete": complete,
          "documents": sum(m["documents"] for m in shards),
          "tokens": sum(m["tokens"] for m in shards),
          "shards": [{k: m[k] for k in ("file", "source", "documents", "tokens")}
                     for m in shards], **extra}


# ------------------------------------------------------------------------------------------
# Runs.


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
      _remove_temporaries(output)  # a worker killed mid-shard leaves its temporary behind


def _remove_unfinished(output: str, created: bool) -> None:
  """After a failed run: an incomplete index with no finished shard goes (nothing of it is
  reusable), and so does the output directory when this run made it and it is empty now."""
  if not os.path.isdir(output):
    return
  _remove_temporaries(output)
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
  atomic.write_json(index_path, _index(plan, [], dtype, complete=False))
  from tqdm import tqdm  # deferred: only the CLI path shows progress
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
  index = _index(plan, shards, dtype, complete=True)
  atomic.write_json(index_path, index)
  return index


def _run_curated(files, output, plan, steps, tokenizer, workers, base_dir, field) -> dict:
  t0 = time.time()
  corpus = curation.load_corpus(files, field=field, base_dir=base_dir)
  for step in steps:
    step.check(corpus)  # score fields, attribute files, classifier: before the slow part
  tok = tokenizer_lib.load_tokenizer(tokenizer)
  dtype = token_dtype(tok.get_vocab_size())
  ids = encode_texts(tok, corpus.texts, dtype)
  corpus.tokens = np.array([a.size for a in ids], dtype=np.int64)
  kept, rows = curation.run_chain(steps, corpus, workers=workers, log=logging.info)
  if not kept.size:
    raise curation.CurationError(f"curation chain {curation.describe_chain(plan['chain'])} "
                                 f"kept none of the {len(corpus)} documents of {files[0]}...")
  os.makedirs(output, exist_ok=True)
  index_path = os.path.join(output, INDEX_FILE)
  atomic.write_json(index_path, _index(plan, [], dtype, complete=False))
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
  index = _index(plan, shards, dtype, complete=True, curation=accounting)
  atomic.write_json(index_path, index)
  return index


def curated_specs(recipe: str, data_dir: str, recipes_dir: str = "") -> dict:
  """{source name: spec} of the curated sources of a recipe (those with a `curation` field)."""
  directory = recipes_dir or recipes_lib.recipes_dir(None)
  specs = recipes_lib.flatten_recipe(recipes_lib.load_recipe(recipe, directory), directory)
  return {n: s for n, s in sorted(specs.items()) if "curation" in s}


def materialize_recipe(recipe: str, data_dir: str, workers: int = 1, overwrite: bool = False,
                       recipes_dir: str = "", progress: bool = True) -> dict[str, tuple]:
  """Tokenise every curated source of a recipe under data_dir (reusing any already made).

  Returns {source name: (output directory, index)}.
  """
  directory = recipes_dir or recipes_lib.recipes_dir(None)
  rec = recipes_lib.load_recipe(recipe, directory)
  specs = curated_specs(recipe, data_dir, directory)
  if not specs:
    raise ValueError(f"recipe {recipe!r} has no curated sources (sources made with "
                     "data_pipeline.curation.curated_source); nothing to tokenise")
  if rec.get("builder", "") == "sample_corpus":
    from data_pipeline import sample_corpus  # its text files are the curated inputs
    sample_corpus.build(data_dir)
  out = {}
  for name, spec in specs.items():
    c = spec.curation
    files = sources_lib.resolve_paths(c.inputs, data_dir, f"curated source {name!r}")
    output = os.path.join(data_dir, c.output)
    out[name] = (output, run(files, output, tokenizer=c.tokenizer, workers=workers,
                             progress=progress, chain=json.loads(c.chain),
                             overwrite=overwrite, base_dir=data_dir, field=c.field))
  return out


def _chain_arg(value: str):
  """--chain: a JSON file or inline JSON."""
  if os.path.isfile(value):
    with open(value) as f:
      value = f.read()
  return value


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m data_pipeline.tokenize", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--inputs", nargs="+",
                 help="globs of .jsonl/.jsonl.gz/.jsonl.zst/.parquet files (quote them)")
  p.add_argument("--output", help="output directory of part-NNNNN.npy shards")
  p.add_argument("--chain", help="curation chain: a JSON file or inline JSON list of "
                 "{\"step\": NAME, ...}")
  p.add_argument("--field", default="text", help="the text field of the documents (--chain)")
  p.add_argument("--recipe", help="tokenise the curated sources of this data recipe")
  p.add_argument("--data_dir", default="data", help="root of the recipe's paths (--recipe)")
  p.add_argument("--recipes_dir", default="",
                 help="where recipe files live (--recipe); default configs/data_configs")
  p.add_argument("--tokenizer", default=None,
                 help="'olmo' (default) or a tokenizer.json path; a recipe names its own")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="parallel processes (one input file each; per-document rules with --chain)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an output that holds another tokenization (removes its shards)")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  if args.recipe and (args.inputs or args.output or args.chain or args.tokenizer):
    p.error("--recipe takes its inputs, outputs, chains and tokenizer from the recipe; drop "
            "--inputs/--output/--chain/--tokenizer")
  if not args.recipe and not (args.inputs and args.output):
    p.error("give --inputs and --output (or --recipe)")
  try:
    if args.recipe:
      indexes = materialize_recipe(args.recipe, args.data_dir, args.workers, args.overwrite,
                                   args.recipes_dir)
      for name, (output, index) in indexes.items():
        print(f"{name}: {index['documents']} documents, {index['tokens']} tokens "
              f"({index['curation']['description']}) -> {output}")
      return 0
    chain = _chain_arg(args.chain) if args.chain is not None else None
    index = run(args.inputs, args.output, args.tokenizer or "olmo", args.workers, chain=chain,
                overwrite=args.overwrite, field=args.field)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{index['documents']} documents, {index['tokens']} tokens in "
        f"{len(index['shards'])} shards ({index['dtype']}) -> {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
