"""The embedded default corpus: real text already on every machine with Python, built offline.

Two labelled sources, both read from this interpreter's standard library:
  * sample_prose: the help topics of `pydoc_data.topics` (the language reference prose shown
    by `help()`) and, per module, its docstrings (module, classes, functions), parsed with
    `ast` from the sources, never imported (importing some modules has side effects).
  * sample_code: the standard library's Python modules themselves, a deterministic
    selection of about `CODE_BYTES` bytes.
Both are tokenised into OLMo-format token files under `<data_dir>/sample/` (the recipe
`configs/data_configs/sample.py` reads them). The build is deterministic for a given Python
installation, atomic (built in a temporary directory, then renamed) and done once.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import logging
import os
import sys
import sysconfig
import time

from data_pipeline import atomic, tokenization
from data_pipeline.token_index import INDEX_FILE

CORPUS_DIR = "sample"
MANIFEST = "manifest.json"
SOURCES = ("sample_prose", "sample_code")
CODE_BYTES = 3_000_000
MIN_DOC_CHARS = 200
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo",
              "lib2to3", "__pycache__", "ensurepip", "pydoc_data"}


def corpus_dir(data_dir: str) -> str:
  return os.path.join(data_dir, CORPUS_DIR)


def is_built(data_dir: str) -> bool:
  """True once the corpus (its manifest, written last) exists under data_dir."""
  return os.path.isfile(os.path.join(corpus_dir(data_dir), MANIFEST))


def stdlib_modules() -> list[tuple[str, str]]:
  """(dotted module name, path) of the standard library's .py files, sorted by name."""
  root = sysconfig.get_paths()["stdlib"]
  out = []
  for dirpath, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
    for f in sorted(files):
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3]
        out.append((rel.replace(os.sep, ".").removesuffix(".__init__"), os.path.join(dirpath, f)))
  return sorted(out)


def _read_source(path: str) -> str | None:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except (UnicodeDecodeError, OSError):
    return None  # a few stdlib files are deliberately not UTF-8 (encoding tests)


def module_docstrings(name: str, text: str) -> str:
  """One prose document: a module's docstrings, module first, then classes and functions."""
  try:
    tree = ast.parse(text)
  except SyntaxError:
    return ""
  parts = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node)
      if doc:
        title = name if isinstance(node, ast.Module) else f"{name}.{node.name}"
        parts.append(f"{title}\n\n{doc.strip()}")
  return "\n\n".join(parts)


def prose_documents(modules) -> list[str]:
  """Help topics (sorted by topic) then module docstrings (by module), each >= MIN_DOC_CHARS."""
  import pydoc_data.topics  # the text behind help('TOPIC'); data only
  docs = [text.strip() for _, text in sorted(pydoc_data.topics.topics.items())]
  for name, path in modules:
    text = _read_source(path)
    if text is not None:
      docs.append(module_docstrings(name, text))
  return [d for d in docs if len(d) >= MIN_DOC_CHARS]


def code_documents(modules, budget: int = CODE_BYTES) -> list[str]:
  """Module sources in a hash-scrambled (deterministic) order until `budget` bytes."""
  ranked = sorted(modules, key=lambda m: hashlib.sha256(m[0].encode()).hexdigest())
  docs, total = [], 0
  for _, path in ranked:
    text = _read_source(path)
    if text is None or len(text) < MIN_DOC_CHARS:
      continue
    if total + len(text) > budget:
      continue
    docs.append(text)
    total += len(text)
  return docs


def _write_jsonl_gz(path: str, docs: list[str]) -> None:
  # mtime=0: identical bytes on every build.
  with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
    for d in docs:
      f.write((json.dumps({"text": d}) + "\n").encode())


def _build_source(tmp: str, name: str, docs: list[str], tokenizer: str) -> dict:
  """Writes text/<name>.jsonl.gz and <name>/ (token shard + index.json) under `tmp`;
  returns the source's manifest entry."""
  text_path = os.path.join(tmp, "text", f"{name}.jsonl.gz")
  _write_jsonl_gz(text_path, docs)
  index = tokenization.run([text_path], os.path.join(tmp, name), tokenizer=tokenizer,
                           workers=1, progress=sys.stderr.isatty())
  for shard in index["shards"]:  # paths inside the corpus, not the temporary directory
    shard["source"] = os.path.join("text", f"{name}.jsonl.gz")
  atomic.write_json(os.path.join(tmp, name, INDEX_FILE), index)
  for sidecar in os.listdir(os.path.join(tmp, name)):
    if sidecar.startswith("part-") and sidecar.endswith(".json"):
      os.remove(os.path.join(tmp, name, sidecar))
  sha = hashlib.sha256()
  for shard in index["shards"]:
    with open(os.path.join(tmp, name, shard["file"]), "rb") as f:
      sha.update(f.read())
  return {"documents": index["documents"], "tokens": index["tokens"], "sha256": sha.hexdigest()}


def build(data_dir: str, tokenizer: str = "olmo", force: bool = False) -> str:
  """Build the corpus under <data_dir>/sample unless already there; returns that directory.

  Layout: sample_{prose,code}/part-00000.npy (+ index.json), text/sample_*.jsonl.gz (the
  documents, for text-source use), manifest.json (written last).
  """
  final = corpus_dir(data_dir)
  if is_built(data_dir) and not force:
    return final
  t0 = time.time()
  logging.info("building the sample corpus from the Python %s standard library into %s ...",
               sys.version.split()[0], final)
  with atomic.replacing_directory(final) as tmp:
    os.makedirs(os.path.join(tmp, "text"))
    modules = stdlib_modules()
    docs = {"sample_prose": prose_documents(modules), "sample_code": code_documents(modules)}
    manifest = {"python": sys.version.split()[0], "tokenizer": tokenizer, "sources": {}}
    for name in SOURCES:
      manifest["sources"][name] = _build_source(tmp, name, docs[name], tokenizer)
    atomic.write_json(os.path.join(tmp, MANIFEST), manifest)
  logging.info("sample corpus built in %.1fs: %s", time.time() - t0,
               ", ".join(f"{k} {v['documents']} docs / {v['tokens']} tokens"
                         for k, v in manifest["sources"].items()))
  return final


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  print(build(sys.argv[1] if len(sys.argv) > 1 else "data"))
