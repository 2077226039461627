"""The index.json of a token directory, and the guard that keeps one tokenization per directory.

An output directory of `python -m data_pipeline.tokenize_files` holds shards `part-NNNNN.npy`
(with `part-NNNNN.json` sidecars while a run is under way) and an index.json that names what
they are made of: the inputs (path + SHA-256 of their bytes), the tokenizer and the curation
chain. `check_output` refuses a directory that holds another tokenization unless told to
overwrite it, and then removes only the files this tool writes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os

from data_pipeline import curation
from data_pipeline import tokenizer as tokenizer_lib
from data_pipeline.curation_step import CHAIN_VERSION

INDEX_FILE = "index.json"
FORMAT = "olmo-token-files: raw little-endian ids, EOS after every document, no header"


def shard_name(k: int) -> str:
  return f"part-{k:05d}.npy"


def file_sha256(path: str) -> str:
  """SHA-256 of a file's bytes: what identifies an input (an edit of the same size included)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      h.update(chunk)
  return h.hexdigest()


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


def remove_temporaries(output: str) -> None:
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
  remove_temporaries(output)  # left by a killed run; never visible under a shard name
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
    plan["chain_version"] = CHAIN_VERSION
  return plan


def make_index(plan: dict, shards: list[dict], dtype: str, complete: bool, **extra) -> dict:
  return {"format": FORMAT, "dtype": dtype, "eos_token_id": tokenizer_lib.EOS_TOKEN_ID,
          **plan, "complete": complete,
          "documents": sum(m["documents"] for m in shards),
          "tokens": sum(m["tokens"] for m in shards),
          "shards": [{k: m[k] for k in ("file", "source", "documents", "tokens")}
                     for m in shards], **extra}
