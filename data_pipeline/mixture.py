"""Recipes -> weighted, deterministic, checkpointable Grain iterators of token batches.

A batch is {"input_ids": int32[B, L + 1]}: every source is cut into windows of L + 1 tokens.

How rows are drawn (the same for any number of processes):
  * Global row r (step t, process i, row j: r = (t * n + i) * B + j) gets a source label from
    blocks of `BLOCK` rows: each block holds exactly round(w_s * BLOCK) rows of source s
    (largest remainder), in a seeded random order. So realised proportions match the weights
    (by rows = by tokens, as every row has L + 1 tokens) in every block.
  * The k-th row labelled s is the k-th draw from s: epoch e = k // N_s, instance
    pi_{s,e}(k mod N_s), where pi is a seeded permutation of the whole source (a global
    shuffle, not a buffer) that changes every epoch. Draw counts follow from the labels in
    closed form, so process i reads only its own rows and the state is just the step.
  * Text sources (jsonl/parquet/ArrayRecord/TFDS documents) are packed on the fly by
    `sources.PackedStream`, which shards documents by process and keeps a small per-process
    state (epoch, document, offset).
  * With data.heldout_fraction > 0, every source is first split (data_pipeline/heldout.py):
    the numbering above runs over the training side only; `heldout_documents` and
    `heldout_batches` read the other side.
The data config is read once through `data_config` (DataConfig: every field and default);
`validate_config`, `describe` and `build_train_iterator` are what an entry point calls.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import glob
import importlib.util
import itertools
import json
import logging
import math
import os
import weakref
from typing import Any

import grain
import ml_collections
import numpy as np

from data_pipeline import heldout, index_shuffle
from data_pipeline import sources as sources_lib

BLOCK = 8192  # rows per exact-proportion block
PLAN_STEPS = 64  # steps whose row -> instance plan is computed in one vectorised pass
STATE_VERSION = 1
SOURCE_KINDS = ("tokens", "text", "array_record", "tfds")
_REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The `config.data` subtree: its fields and defaults, written once.

  `default_config()` is this as a ConfigDict; `data_config(cfg)` merges a user's subtree
  over it (unknown keys are an error) and is what every function here reads.

  Fields:
    mixture: 'auto' (the default: 'all' when a data_dir is given, else 'synthetic'), 'all'
      (every token file under data_dir, one source per directory, weighted by its tokens),
      'synthetic' (a repetitive token stream, no files; an error with a data_dir), a recipe
      name from `recipes_dir` (e.g. 'sample', 'dolma17', 'dolma17-75p-DCLM-baseline-25p'),
      a path to a recipe .py file, or 'custom' (the sources in `sources`).
    data_dir: root of all relative source paths ('' : none given; recipes then read under
      ./data); the sample corpus is built under it.
    seed: mixing/shuffling seed; -1 means train.seed. The caller resolves it and passes
      `seed` to build_train_iterator, which uses that argument.
    sources: only for mixture='custom': comma-separated `name=glob[|glob][@weight]`; the kind
      follows the extension (.jsonl[.gz|.zst]/.parquet: text, .array_record: documents,
      else token files), 'tfds:NAME:SPLIT' names a prepared TFDS dataset under data_dir.
    drop_sources: comma-separated source names removed from the recipe (ablations).
    tokenizer: tokenizer for text sources ('olmo' or a tokenizer.json path).
    token_dtype: dtype of raw token files without an .npy header ('uint16' or 'uint32').
    shuffle: global per-epoch permutation of each source; False keeps file order.
    prefetch: batches prepared ahead in a background thread (0: none).
    max_epochs: stop (StopIteration) before any source starts this epoch; 0: never stop.
    recipes_dir: where recipe files live; '' means <repo>/configs/data_configs.
    heldout_fraction: the fraction of each source's documents held out of training for
      evaluation (data_pipeline/heldout.py; the in-loop loss reads them). 0 (the default)
      reads every document, as OLMo's trainer does, and keeps earlier runs' batches.
  """
  mixture: str = "auto"
  data_dir: str = ""
  seed: int = -1
  sources: str = ""
  drop_sources: str = ""
  tokenizer: str = "olmo"
  token_dtype: str = "uint16"
  shuffle: bool = True
  prefetch: int = 2
  max_epochs: int = 0
  recipes_dir: str = ""
  heldout_fraction: float = 0.0

  @property
  def root(self) -> str:
    """The directory relative source paths start from."""
    return self.data_dir or "data"


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One source of a recipe, with its defaults (recipe files give only what differs).

  kind: one of SOURCE_KINDS; paths: globs relative to data_dir, '|'-separated; weight: share
  of rows (by tokens). dtype (tokens; '' means data.token_dtype), field / record_format (text,
  array_record), tfds_name / split / feature (tfds), recipe (a nested recipe weighted as a
  whole), curation (how data_pipeline.curation made the files; not read here).
  """
  kind: str = "tokens"
  paths: str = ""
  weight: float = 1.0
  dtype: str = ""
  field: str = "text"
  record_format: str = "text"
  tfds_name: str = ""
  split: str = "train"
  feature: str = "text"
  recipe: str = ""
  curation: Any = None


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A recipe file's fields with their defaults: `base` recipe, minus `drop`, plus `sources`;
  `natural_weights` weights token-file sources by their tokens on disk; `builder` names what
  writes the files on first use ('sample_corpus')."""
  name: str = "?"
  description: str = ""
  base: str = ""
  drop: Any = ()
  sources: Any = None
  natural_weights: bool = False
  builder: str = ""


def _merge(cls, given, where: str):
  """`cls` with the fields of `given` (a mapping or None) over its defaults; an unknown key
  raises naming it."""
  given = {} if given is None else dict(given.items())
  known = [f.name for f in dataclasses.fields(cls)]
  for key in given:
    if key not in known:
      raise ValueError(f"{where}.{key} is not a known field; known: {', '.join(known)}")
  return cls(**given)


_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def data_config(cfg) -> DataConfig:
  """`config.data` (a ConfigDict, a dict, None or a DataConfig) merged over the defaults.

  Raises ValueError naming an unknown key or a value of the wrong type.
  """
  if isinstance(cfg, DataConfig):
    return cfg
  dc = _merge(DataConfig, cfg, "data")
  for f in dataclasses.fields(DataConfig):
    v = getattr(dc, f.name)
    if not isinstance(v, _TYPES[f.type]) or (f.type != "bool" and isinstance(v, bool)):
      raise ValueError(f"data.{f.name}={v!r} must be a {f.type}")
  return dc


def default_config() -> ml_collections.ConfigDict:
  """The `config.data` subtree with every field at its default (see DataConfig)."""
  return ml_collections.ConfigDict(dataclasses.asdict(DataConfig()))


def mixture_name(cfg) -> str:
  """What a data config trains on: data.mixture with 'auto' resolved ('all' or 'synthetic')."""
  dc = data_config(cfg)
  if dc.mixture == "auto":
    return "all" if dc.data_dir else "synthetic"
  return dc.mixture


# ------------------------------------------------------------------------------------------
# Recipes.


def recipes_dir(cfg) -> str:
  """Where recipe files live for a data config (or None: the repository's)."""
  return data_config(cfg).recipes_dir or os.path.join(_REPO_DIR, "configs", "data_configs")


def _load_module(path: str):
  spec = importlib.util.spec_from_file_location(
      "data_recipe_" + os.path.basename(path)[:-3].replace("-", "_"), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def known_recipes(directory: str) -> list[str]:
  """Recipe names in `directory`: files `<name>.py` with get_config(), plus each file's
  recipe_names() for files that hold a table of recipes."""
  names = []
  for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
    if os.path.basename(path).startswith("_"):
      continue
    module = _load_module(path)
    if hasattr(module, "recipe_names"):
      names.extend(module.recipe_names())
    elif hasattr(module, "get_config"):
      names.append(os.path.basename(path)[:-3])
  return names


def load_recipe(name: str, directory: str) -> ml_collections.ConfigDict:
  """The recipe ConfigDict for a name (or a .py path); raises ValueError listing known names."""
  if name.endswith(".py"):
    if not os.path.isfile(name):
      raise FileNotFoundError(f"data.mixture: recipe file not found: {name}")
    return _load_module(name).get_config()
  path = os.path.join(directory, f"{name}.py")
  if os.path.isfile(path):
    return _load_module(path).get_config()
  for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
    module = _load_module(path)
    if hasattr(module, "recipe_names") and name in module.recipe_names():
      return module.get_config(name)
  raise ValueError(f"data.mixture={name!r} is not a known recipe; known: auto, all, synthetic, "
                   f"custom, "
                   f"{', '.join(known_recipes(directory))} (recipes live in {directory})")


def source_spec(kind: str = "tokens", paths: str = "", weight: float = 1.0,
                **extra) -> ml_collections.ConfigDict:
  """One source of a recipe: kind, paths (globs relative to data_dir, '|'-separated), weight.

  Extra fields: dtype (tokens), field / record_format (text, array_record), tfds_name, split,
  feature (tfds), recipe (a nested recipe weighted as a whole).
  """
  c = ml_collections.ConfigDict({"kind": kind, "paths": paths, "weight": float(weight), **extra})
  _merge(SourceSpec, c, "source")  # an unknown extra field fails here, naming it
  return c


def parse_sources(spec: str) -> dict[str, ml_collections.ConfigDict]:
  """'name=glob[|glob][@weight],...' -> {name: source spec} (data.sources for mixture=custom)."""
  out = {}
  for item in [s.strip() for s in spec.split(",") if s.strip()]:
    if "=" not in item:
      raise ValueError(f"data.sources: {item!r} is not 'name=glob[@weight]'")
    name, rest = item.split("=", 1)
    name = name.strip()
    weight = 1.0
    if "@" in rest:
      rest, w = rest.rsplit("@", 1)
      try:
        weight = float(w)
      except ValueError as e:
        raise ValueError(f"data.sources: weight {w!r} of source {name!r} is not a number") from e
    if name in out:
      raise ValueError(f"data.sources: source {name!r} appears twice")
    if rest.startswith("tfds:"):
      parts = rest.split(":")
      if len(parts) != 3:
        raise ValueError(f"data.sources: {rest!r} is not 'tfds:NAME:SPLIT'")
      out[name] = source_spec("tfds", "", weight, tfds_name=parts[1], split=parts[2])
    elif rest.endswith(sources_lib.TEXT_SUFFIXES):
      out[name] = source_spec("text", rest, weight)
    elif ".array_record" in rest:
      out[name] = source_spec("array_record", rest, weight)
    else:
      out[name] = source_spec("tokens", rest, weight)
  if not out:
    raise ValueError("data.sources is empty; give 'name=glob[@weight],...' for mixture='custom'")
  return out


def flatten_recipe(recipe, directory: str, _seen=()) -> dict[str, ml_collections.ConfigDict]:
  """{source name: spec with its absolute weight} of a recipe: `base` recipe, minus `drop`,
  plus `sources` (a source with `recipe` expands to that recipe's sources scaled by its weight).
  """
  r = _merge(Recipe, recipe, "recipe")
  name = r.name
  if name in _seen:
    raise ValueError(f"recipe {name!r} includes itself via {' -> '.join(_seen)}")
  out: dict[str, Any] = {}
  if r.base:
    out.update(flatten_recipe(load_recipe(r.base, directory), directory, _seen + (name,)))
  for dropped in r.drop:
    if dropped not in out:
      raise ValueError(f"recipe {name!r} drops unknown source {dropped!r}; "
                       f"its base {r.base!r} has {sorted(out)}")
    del out[dropped]
  for src_name, spec in (r.sources or {}).items():
    nested = _merge(SourceSpec, spec, f"recipe {name!r} source {src_name!r}").recipe
    _check_weight(spec.weight, f"recipe {name!r} source {src_name!r}")
    if nested:
      sub = flatten_recipe(load_recipe(nested, directory), directory, _seen + (name,))
      total = sum(s.weight for s in sub.values())
      for sub_name, sub_spec in sub.items():
        sub_spec = ml_collections.ConfigDict(sub_spec.to_dict())
        sub_spec.weight = spec.weight * sub_spec.weight / total
        _add(out, sub_name, sub_spec, name)
    else:
      _add(out, src_name, spec, name)
  return out


def _add(out, name, spec, recipe_name):
  if name in out:
    raise ValueError(f"recipe {recipe_name!r}: source {name!r} is defined twice")
  if spec.kind not in SOURCE_KINDS:
    raise ValueError(f"recipe {recipe_name!r} source {name!r}: kind must be one of "
                     f"{SOURCE_KINDS}, got {spec.kind!r}")
  out[name] = spec


def _check_weight(w, where: str) -> None:
  if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
    raise ValueError(f"{where}: weight must be a finite number >= 0, got {w!r}")


def resolve_sources(cfg) -> tuple[str, Recipe | None, dict[str, SourceSpec]]:
  """(recipe name, recipe or None, {source: spec}) with data.drop_sources applied; cheap."""
  dc = data_config(cfg)
  name = mixture_name(dc)
  if name != "custom" and dc.sources:
    raise ValueError(f"data.sources is only read when data.mixture='custom' (mixture is "
                     f"{name!r}); clear one of them")
  if name == "custom":
    recipe, raw = None, parse_sources(dc.sources)
  elif name == "all":
    recipe, raw = Recipe(name="all", natural_weights=True), directory_sources(dc.data_dir)
  else:
    loaded = load_recipe(name, recipes_dir(dc))
    recipe, raw = _merge(Recipe, loaded, "recipe"), flatten_recipe(loaded, recipes_dir(dc))
  specs = {k: _merge(SourceSpec, v, f"data source {k!r}") for k, v in raw.items()}
  for dropped in [d.strip() for d in dc.drop_sources.split(",") if d.strip()]:
    if dropped not in specs:
      raise ValueError(f"data.drop_sources: unknown source {dropped!r}; {name!r} has "
                       f"{sorted(specs)}")
    del specs[dropped]
  for src_name, spec in specs.items():
    _check_weight(spec.weight, f"data source {src_name!r}")
  if not specs:
    raise ValueError(f"data.mixture={name!r} has no sources left")
  if not _natural(recipe) and sum(spec.weight for spec in specs.values()) <= 0:
    raise ValueError(f"data.mixture={name!r}: all source weights are zero "
                     f"({ {k: v.weight for k, v in specs.items()} })")
  return name, recipe, dict(sorted(specs.items()))


def directory_sources(data_dir: str) -> dict[str, ml_collections.ConfigDict]:
  """{source: spec} of every token file (*.npy) under data_dir: one source per directory,
  named by its path under data_dir. Raises naming data_dir if it is missing or holds none."""
  if not data_dir:
    raise ValueError("data.mixture='all' reads every token file under data.data_dir; "
                     "give data.data_dir")
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"data.data_dir={data_dir}: no such directory")
  files = [f for f in glob.glob(os.path.join(glob.escape(data_dir), "**", "*.npy"),
                                recursive=True) if ".tmp" not in os.path.basename(f)]
  if not files:
    raise ValueError(f"data.data_dir={data_dir} holds no token files (*.npy, searched "
                     "recursively); tokenize text into it with `python -m "
                     "data_pipeline.tokenize`, or name a recipe with data.mixture")
  out = {}
  for directory in sorted({os.path.dirname(f) for f in files}):
    rel = os.path.relpath(directory, data_dir)
    name = os.path.basename(os.path.abspath(data_dir)) if rel == "." else rel
    out[name] = source_spec("tokens", os.path.join(glob.escape(rel), "*.npy"), 1.0)
  return out


def _natural(recipe: Recipe | None) -> bool:
  return recipe is not None and recipe.natural_weights


def _corpus_pending(dc: DataConfig, recipe: Recipe | None) -> bool:
  """True when the recipe's files are built on first use and are not built yet."""
  if recipe is None or not recipe.builder:
    return False
  if recipe.builder != "sample_corpus":
    raise ValueError(f"recipe {recipe.name!r}: unknown builder {recipe.builder!r}")
  from data_pipeline import sample_corpus  # deferred: only for the embedded corpus
  return not sample_corpus.is_built(dc.root)


def _check_files(name: str, spec: SourceSpec, dc: DataConfig) -> list[str]:
  """Resolved files of a source, each checked cheaply (exists, non-empty, dtype-aligned)."""
  if spec.kind == "tfds":
    return []
  files = sources_lib.resolve_paths(spec.paths, dc.root, f"data source {name!r}")
  for path in files:
    if spec.kind == "tokens":
      sources_lib.token_file_layout(path, spec.dtype or dc.token_dtype)
    elif os.path.getsize(path) == 0:
      raise ValueError(f"data source {name!r}: file is empty: {path}")
  return files


BUCKET_SCHEMES = ("gs://", "s3://")


def refuse_bucket_paths(path: str, field: str) -> None:
  """Token files are read by memory mapping, which needs a file system: a bucket URL is
  refused with the way to mount it."""
  if str(path).startswith(BUCKET_SCHEMES):
    bucket = str(path).split("://", 1)[1].split("/", 1)[0]
    raise ValueError(f"{field}={path}: token files are read from a file system, not from a "
                     f"bucket URL; mount the bucket (e.g. `gcsfuse --implicit-dirs {bucket} "
                     f"/mnt/{bucket}`) and pass the mounted path")


def validate_config(cfg, vocab_size: int) -> None:
  """Raises ValueError/FileNotFoundError naming the field or file on a bad data config.

  Cheap (stats files, reads .npy headers); runs before any expensive work.
  """
  dc = data_config(cfg)
  refuse_bucket_paths(dc.data_dir, "data.data_dir")
  if not 0 <= dc.heldout_fraction < 1:
    raise ValueError(f"data.heldout_fraction={dc.heldout_fraction} must be in [0, 1)")
  if mixture_name(dc) == "synthetic":
    if dc.data_dir:
      raise ValueError(f"data.mixture='synthetic' reads no files, but data.data_dir="
                       f"{dc.data_dir} is given; leave data.mixture unset to train on every "
                       "token file under it, name a recipe, or drop the data directory")
    return
  if not isinstance(vocab_size, int) or vocab_size <= 0:
    raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
  if dc.token_dtype not in sources_lib.TOKEN_DTYPES:
    raise ValueError(f"data.token_dtype must be one of {sources_lib.TOKEN_DTYPES}")
  if dc.prefetch < 0 or dc.max_epochs < 0:
    raise ValueError("data.prefetch and data.max_epochs must be >= 0")
  _, recipe, specs = resolve_sources(dc)
  if _corpus_pending(dc, recipe):
    return  # its files are written by build_train_iterator
  for name, spec in specs.items():
    if spec.weight > 0 or _natural(recipe):
      if _curation_pending(spec, dc):
        # Built by build_train_iterator; its inputs must exist now.
        sources_lib.resolve_paths(spec.curation.inputs, dc.root, f"curated source {name!r}")
      else:
        _check_files(name, spec, dc)


def _curation_pending(spec: SourceSpec, dc: DataConfig) -> bool:
  """True for a curated source whose token files are not made yet."""
  if not spec.curation:
    return False
  index = os.path.join(dc.root, spec.curation.output, "index.json")
  return not os.path.isfile(index)


def _materialize_curated(name: str, specs: dict, dc: DataConfig) -> None:
  """Curates and tokenises the recipe's curated sources that are not on disk yet (cached by
  the key of their inputs, chain and tokenizer; see data_pipeline.curation)."""
  if not any(_curation_pending(s, dc) for s in specs.values()):
    return
  from data_pipeline import tokenize  # deferred: only for curated recipes
  logging.info("building the curated sources of recipe %s under %s", name, dc.root)
  tokenize.materialize_recipe(name, dc.root, recipes_dir=recipes_dir(dc), progress=False)


# ------------------------------------------------------------------------------------------
# The mixture.


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
  """Integer counts summing to `total`, as close to weights * total as integers allow."""
  exact = weights / weights.sum() * total
  counts = np.floor(exact).astype(np.int64)
  short = total - int(counts.sum())
  order = np.argsort(-(exact - counts), kind="stable")
  counts[order[:short]] += 1
  return counts


class Mixer:
  """Computes batch `step` of one process from its sources; stateless except text streams."""

  def __init__(self, names, weights, srcs, *, batch_size: int, seed: int, shuffle: bool,
               process_index: int, process_count: int, vocab_size: int, max_epochs: int = 0):
    self.names, self.srcs = list(names), list(srcs)
    self.weights = np.asarray(weights, dtype=np.float64)
    self.block_counts = largest_remainder(self.weights, BLOCK)
    if not (self.block_counts > 0).any():
      raise ValueError("mixture: all weights are zero")
    self.window = srcs[0].window
    self.B, self.seed, self.shuffle = batch_size, seed, shuffle
    self.pi, self.pc, self.vocab_size, self.max_epochs = (process_index, process_count,
                                                         vocab_size, max_epochs)
    self.streams = {n: s for n, s in zip(self.names, self.srcs)
                    if isinstance(s, sources_lib.PackedStream)}
    self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._plan: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None

  def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(label int64[BLOCK], rank of each row among its label's rows in the block) of block b."""
    if b not in self._blocks:
      labels = np.repeat(np.arange(len(self.names)), self.block_counts)
      rng = np.random.default_rng(index_shuffle.derive_seed(self.seed, "mixture-block", b))
      labels = labels[rng.permutation(BLOCK)] if len(self.names) > 1 else labels
      order = np.argsort(labels, kind="stable")
      starts = np.concatenate([[0], np.cumsum(self.block_counts)])
      rank = np.empty(BLOCK, dtype=np.int64)
      rank[order] = np.arange(BLOCK) - starts[labels[order]]
      if len(self._blocks) > 4:
        self._blocks.clear()
      self._blocks[b] = (labels, rank)
    return self._blocks[b]

  def _plan_steps(self, first: int):
    """Labels, draw epochs and instance indices of this process's rows for PLAN_STEPS steps."""
    steps = np.arange(first, first + PLAN_STEPS, dtype=np.int64)
    rows = ((steps[:, None] * self.pc + self.pi) * self.B + np.arange(self.B)[None, :]).ravel()
    block, pos = rows // BLOCK, rows % BLOCK
    labels = np.empty_like(rows)
    draws = np.empty_like(rows)
    for b in np.unique(block).tolist():
      lab, rank = self._block(b)
      m = block == b
      labels[m] = lab[pos[m]]
      draws[m] = b * self.block_counts[labels[m]] + rank[pos[m]]
    epochs = np.zeros_like(rows)
    instances = np.full_like(rows, -1)
    for s, src in enumerate(self.srcs):
      m = labels == s
      if not m.any() or _is_stream(src):
        continue
      n = src.num_instances
      epochs[m], within = draws[m] // n, draws[m] % n
      if self.shuffle:
        inst = np.empty_like(within)
        for e in np.unique(epochs[m]).tolist():
          em = epochs[m] == e
          inst[em] = index_shuffle.permute(
              within[em], n, index_shuffle.derive_seed(self.seed, self.names[s], e))
        instances[m] = inst
      else:
        instances[m] = within
    shape = (PLAN_STEPS, self.B)
    self._plan = (first, labels.reshape(shape), epochs.reshape(shape), instances.reshape(shape))

  def batch(self, step: int) -> np.ndarray:
    """Rows of `step` for this process: int32[B, window]."""
    if self._plan is None or not self._plan[0] <= step < self._plan[0] + PLAN_STEPS:
      self._plan_steps(step - step % PLAN_STEPS)
    first, labels, epochs, instances = self._plan
    labels, epochs, instances = labels[step - first], epochs[step - first], instances[step - first]
    if self.max_epochs and epochs.max() >= self.max_epochs:
      raise StopIteration
    out = np.empty((self.B, self.window), dtype=np.int32)
    for s, src in enumerate(self.srcs):
      rows = np.flatnonzero(labels == s)
      if not rows.size:
        continue
      if _is_stream(src):
        out[rows] = src.take(rows.size)
        if self.max_epochs and src.get_state()["epoch"] >= self.max_epochs:
          raise StopIteration
      else:
        src.copy_into(instances[rows], out, rows.tolist())
    if out.max() >= self.vocab_size:  # one check for the whole batch
      row = int(np.argmax(out.max(axis=1) >= self.vocab_size))
      src = self.srcs[labels[row]]
      if not _is_stream(src):
        src.check_ids(out[row:row + 1], instances[row:row + 1])  # names the file and range
      raise ValueError(f"source {self.names[labels[row]]!r}: token id {int(out[row].max())} "
                       f">= vocab_size {self.vocab_size}")
    return out


def _is_stream(src) -> bool:
  return isinstance(src, sources_lib.PackedStream)


class MixtureIterator(grain.DatasetIterator):
  """Grain iterator of {"input_ids": int32[B, L + 1]}; state = step (+ text stream positions)."""

  def __init__(self, mixer: Mixer, fingerprint: dict):
    super().__init__()
    self._mixer, self._fingerprint, self._step = mixer, fingerprint, 0

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self._mixer.batch(self._step)
    self._step += 1
    return {"input_ids": batch}

  def get_state(self) -> dict:
    # The fingerprint travels as one JSON string: the prefetch thread deep-copies the state
    # after every batch, and a string copies for free.
    return {"version": STATE_VERSION, "step": self._step,
            "streams": {n: s.get_state() for n, s in self._mixer.streams.items()},
            "fingerprint": self._fingerprint_json}

  @functools.cached_property
  def _fingerprint_json(self) -> str:
    return json.dumps(self._fingerprint, sort_keys=True)

  def set_state(self, state: dict) -> None:
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"data iterator state version {state.get('version')!r} != {STATE_VERSION}")
    saved = json.loads(state.get("fingerprint", "{}"))
    diff = {k: (saved.get(k), v) for k, v in
            json.loads(self._fingerprint_json).items() if saved.get(k) != v}
    if diff:
      raise ValueError(f"data iterator state was saved for another data setup; differing "
                       f"(saved, now): {diff}")
    for name, stream in self._mixer.streams.items():
      stream.set_state(state["streams"][name])
    self._step = int(state["step"])


class MixtureDataset(grain.IterDataset):
  """Grain IterDataset over a Mixer (compose with grain transformations, e.g. prefetch)."""

  def __init__(self, mixer: Mixer, fingerprint: dict):
    super().__init__()
    self._mixer, self._fingerprint = mixer, fingerprint

  def __iter__(self) -> MixtureIterator:
    return MixtureIterator(self._mixer, self._fingerprint)


def build_sources(cfg, specs: dict, *, window: int, seed: int, vocab_size: int,
                  process_index: int, process_count: int) -> list:
  """Source objects (TokenFileSource or PackedStream) in the order of `specs`: the training
  side of the held-out split."""
  dc = data_config(cfg)
  out = []
  for name, spec in specs.items():
    files = _check_files(name, spec, dc)
    if spec.kind == "tokens":
      out.append(sources_lib.TokenFileSource(
          files, window, spec.dtype or dc.token_dtype, vocab_size=vocab_size, name=name,
          exclude=_heldout_spans(spec, files, dc) if dc.heldout_fraction > 0 else None))
      continue
    docs = _document_source(name, spec, files, dc)
    if dc.heldout_fraction > 0:
      keep = [np.flatnonzero(~m) for m in _heldout_masks(docs, spec, files, dc)]
      docs = sources_lib.DocumentSubset(docs, keep)
    out.append(sources_lib.PackedStream(
        docs, window=window, seed=seed, shuffle=dc.shuffle, tokenizer=dc.tokenizer,
        vocab_size=vocab_size, process_index=process_index, process_count=process_count,
        name=name))
  return out


def _document_source(name: str, spec: SourceSpec, files: list[str], dc: DataConfig):
  if spec.kind == "tfds":
    return sources_lib.TfdsDocumentSource(
        spec.tfds_name, spec.split, dc.root, feature=spec.feature,
        record_format=spec.record_format, source_name=name)
  return sources_lib.DocumentSource(files, name=name, field=spec.field,
                                    record_format=spec.record_format)


def _heldout_spans(spec: SourceSpec, files: list[str], dc: DataConfig) -> list:
  """Held-out token spans of each token file of a source."""
  return [heldout.token_spans(heldout.open_tokens(p, spec.dtype or dc.token_dtype),
                              heldout.file_key(p, dc.root), dc.heldout_fraction) for p in files]


def _heldout_masks(docs, spec: SourceSpec, files: list[str], dc: DataConfig) -> list:
  """bool[documents] per file of a document source: held out or not."""
  keys = ([f"tfds:{spec.tfds_name}:{spec.split}"] if spec.kind == "tfds"
          else [heldout.file_key(p, dc.root) for p in files])
  return [heldout.held_out(k, int(n), dc.heldout_fraction) for k, n in zip(keys, docs.file_docs)]


def _source_heldout(name: str, spec: SourceSpec, dc: DataConfig):
  """The held-out documents of one source (EvalDocuments), file by file, in file order."""
  files = _check_files(name, spec, dc)
  if spec.kind == "tokens":
    dtype = spec.dtype or dc.token_dtype
    for path, spans in zip(files, _heldout_spans(spec, files, dc)):
      yield from heldout.token_file_documents(path, name, spans, dtype)
    return
  docs = _document_source(name, spec, files, dc)
  held = [np.flatnonzero(m) for m in _heldout_masks(docs, spec, files, dc)]
  yield from heldout.text_documents(
      (docs.get(f, j) for f, idx in enumerate(held) for j in idx.tolist()), name, dc.tokenizer)


def _used_sources(cfg) -> tuple[DataConfig, str, Recipe | None, dict, dict]:
  """(data config, mixture name, recipe, {source: spec}, {source: files}) of the sources a
  run reads (weight > 0, or all of a natural_weights recipe)."""
  dc = data_config(cfg)
  name, recipe, specs = resolve_sources(dc)
  specs = {k: v for k, v in specs.items() if _natural(recipe) or v.weight > 0}
  return dc, name, recipe, specs, {k: _check_files(k, v, dc) for k, v in specs.items()}


def _disk_tokens(specs: dict, files: dict, dc: DataConfig) -> list:
  """Tokens in each source's files (None for text sources), from file headers and sizes."""
  return [sum(sources_lib.token_file_layout(f, v.dtype or dc.token_dtype)[2] for f in files[k])
          if v.kind == "tokens" else None for k, v in specs.items()]


def _weights(recipe: Recipe | None, specs: dict, tokens: list) -> list[float]:
  """Mixing weights: the recipe's, or `tokens` on disk (None: a text source) for
  natural_weights recipes."""
  if not _natural(recipe):
    return [v.weight for v in specs.values()]
  if any(t is None for t in tokens):
    raise ValueError(f"recipe {recipe.name!r}: natural_weights needs token-file sources only")
  return [float(t) for t in tokens]


def describe(cfg) -> str:
  """The start-up table of what a data config trains on: per source its kind, files, tokens
  on disk (token files) and realised weight. Cheap (file headers only)."""
  dc = data_config(cfg)
  name = mixture_name(dc)
  if name == "synthetic":
    return "data: the synthetic token stream (no files)"
  head = f"data: mixture {name!r} under {dc.root}"
  _, recipe, specs = resolve_sources(dc)
  if _corpus_pending(dc, recipe):
    return f"{head}: built on first use"
  pending = [k for k, v in specs.items()
             if (_natural(recipe) or v.weight > 0) and _curation_pending(v, dc)]
  if pending:  # made by build_train_iterator; validate_config checked their inputs
    return f"{head}: curated source(s) {', '.join(pending)} built on first use"
  _, _, recipe, specs, files = _used_sources(dc)
  tokens = _disk_tokens(specs, files, dc)
  weights = np.asarray(_weights(recipe, specs, tokens))
  width = max(len(k) for k in ["source", *specs])
  lines = [f"{head} ({'weights by tokens' if _natural(recipe) else 'recipe weights'})",
           f"  {'source':<{width}}  {'kind':<12} {'files':>6} {'tokens':>16} {'weight':>7}"]
  for (k, v), t, w in zip(specs.items(), tokens, weights / weights.sum()):
    t = "-" if t is None else f"{t:,}"
    lines.append(f"  {k:<{width}}  {v.kind:<12} {len(files[k]):>6} {t:>16} {w:>7.4f}")
  known = sum(t for t in tokens if t is not None)
  lines.append(f"  {'total':<{width}}  {'':<12} {sum(map(len, files.values())):>6} "
               f"{known:>16,} {1:>7.4f}")
  if dc.heldout_fraction > 0:
    lines.append(f"  held out of training for evaluation: {dc.heldout_fraction:g} of each "
                 "source's documents (data.heldout_fraction)")
  return "\n".join(lines)


def _size(src) -> int:
  """Instances (token files) or documents (text sources) of a built source."""
  return len(src.docs) if _is_stream(src) else src.num_instances


def build_train_iterator(cfg, *, seq_len: int, batch_size: int, seed: int, vocab_size: int,
                         process_index: int = 0, process_count: int = 1):
  """Iterator of {"input_ids": int32[batch_size, seq_len + 1]} for THIS process.

  `batch_size` is the per-process batch; the global batch is batch_size * process_count.
  The iterator has get_state()/set_state() (a JSON-serialisable dict). For token-file
  mixtures the state is the same on every process; with text sources it is per process.
  """
  dc = data_config(cfg)
  validate_config(dc, vocab_size)
  if mixture_name(dc) == "synthetic":
    return SyntheticIterator(seq_len=seq_len, batch_size=batch_size, seed=seed,
                             vocab_size=vocab_size, process_index=process_index,
                             process_count=process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  name, recipe, specs = resolve_sources(dc)
  if _corpus_pending(dc, recipe):
    from data_pipeline import sample_corpus
    sample_corpus.build(dc.root, tokenizer=dc.tokenizer)
  _materialize_curated(name, specs, dc)
  window = seq_len + 1
  specs = {k: v for k, v in specs.items() if _natural(recipe) or v.weight > 0}
  srcs = build_sources(dc, specs, window=window, seed=seed, vocab_size=vocab_size,
                       process_index=process_index, process_count=process_count)
  weights = _weights(recipe, specs, [None if _is_stream(s) else s.num_tokens for s in srcs])
  for n, w, s in zip(specs, weights, srcs):
    logging.info("data source %s: weight %.4f, %d %s of %d tokens", n, w / sum(weights),
                 _size(s), "documents" if _is_stream(s) else "windows", window)
  mixer = Mixer(list(specs), weights, srcs, batch_size=batch_size, seed=seed,
                shuffle=dc.shuffle, process_index=process_index, process_count=process_count,
                vocab_size=vocab_size, max_epochs=dc.max_epochs)
  fingerprint = {
      "mixture": name, "seed": seed, "window": window, "batch_size": batch_size,
      "process_count": process_count, "shuffle": mixer.shuffle, "block": BLOCK,
      "sources": {n: [round(float(w), 12), _size(s)] for n, w, s in zip(specs, weights, srcs)},
  }
  if mixer.streams:
    fingerprint["process_index"] = process_index  # text stream positions are per process
  if dc.heldout_fraction > 0:
    fingerprint["heldout"] = [dc.heldout_fraction, heldout.CHUNK_TOKENS]
  return _iterate(MixtureDataset(mixer, fingerprint), dc.prefetch)


def heldout_documents(cfg, start: int = 0):
  """The held-out documents of every source a run reads (heldout.EvalDocument), source by
  source in name order, file by file; the same on every call. `start` skips that many (resume).
  """
  dc = data_config(cfg)
  if dc.heldout_fraction <= 0 or mixture_name(dc) == "synthetic":
    raise ValueError("there is no held-out split: set data.heldout_fraction > 0 (e.g. 0.01) "
                     "over a mixture of files")
  _, _, _, specs, _ = _used_sources(dc)
  docs = (d for name, spec in specs.items() for d in _source_heldout(name, spec, dc))
  return itertools.islice(docs, start, None)


def heldout_batches(cfg, num_batches: int, *, seq_len: int, batch_size: int, seed: int,
                    vocab_size: int, process_index: int = 0, process_count: int = 1) -> list:
  """`num_batches` batches {"input_ids": int32[batch_size, seq_len + 1]} of held-out documents
  for THIS process (the in-loop evaluation loss).

  Each global batch holds the sources in the mixture's proportions (largest remainder over
  all rows); a source's rows are its held-out documents packed in order, so the batches are
  the same for every seed, and for any split of the batch over processes. The synthetic
  stream has no documents: it gives batches of another seed (`seed` is read only there).
  """
  dc = data_config(cfg)
  if mixture_name(dc) == "synthetic":
    it = SyntheticIterator(seq_len=seq_len, batch_size=batch_size, seed=seed + 1_000_003,
                           vocab_size=vocab_size, process_index=process_index,
                           process_count=process_count)
    return [next(it) for _ in range(num_batches)]
  if dc.heldout_fraction <= 0:
    raise ValueError("the held-out loss reads the held-out split of each source, and "
                     "data.heldout_fraction is 0; set it (e.g. 0.01) or set eval.every=0")
  _, _, recipe, specs, files = _used_sources(dc)
  weights = np.asarray(_weights(recipe, specs, _disk_tokens(specs, files, dc)))
  window, total = seq_len + 1, num_batches * batch_size * process_count
  rows = []
  for (name, spec), n in zip(specs.items(), largest_remainder(weights, total).tolist()):
    got = heldout.pack(_source_heldout(name, spec, dc), window, n)
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


def _iterate(ds: grain.IterDataset, prefetch: int):
  """iter(ds), with `prefetch` batches prepared ahead in a background thread."""
  if not prefetch:
    return iter(ds)
  it = iter(grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch))
  # Stop the prefetch thread before interpreter teardown, when its queue module is gone.
  atexit.register(_close_quietly, weakref.ref(it))
  return it


def _close_quietly(ref) -> None:
  it = ref()
  if it is not None:
    it.close()
    # Grain's __del__ closes again during teardown, when module globals are already None.
    it.close = lambda: None


# ------------------------------------------------------------------------------------------
# The synthetic stream (no files): used by trainer tests and smoke runs.


class SyntheticIterator:
  """A repetitive token stream: each row is a random rotation of a fixed short pattern.

  Learnable (the pattern repeats), deterministic given the seed, checkpointable.
  """

  def __init__(self, *, seq_len, batch_size, seed, vocab_size, process_index=0,
               process_count=1, period=61):
    rng = np.random.default_rng(seed)
    self._pattern = rng.integers(2, min(vocab_size, 50000), size=period, dtype=np.int64)
    self._seq_len, self._batch_size = seq_len, batch_size
    self._seed, self._pi, self._pc = seed, process_index, process_count
    self._step = 0

  def __iter__(self):
    return self

  def __next__(self):
    rng = np.random.default_rng([self._seed, self._step, self._pi])
    offsets = rng.integers(0, len(self._pattern), size=self._batch_size)
    idx = (offsets[:, None] + np.arange(self._seq_len + 1)[None, :]) % len(self._pattern)
    self._step += 1
    return {"input_ids": self._pattern[idx].astype(np.int32)}

  def get_state(self) -> dict:
    return {"step": self._step}

  def set_state(self, state: dict) -> None:
    self._step = int(state["step"])
