"""The `config.data` subtree and recipe files: their fields, defaults, loading and flattening.

A recipe names weighted sources (token files, text, ArrayRecord, TFDS); recipes may build on
a `base` recipe, drop sources and nest other recipes. `data_pipeline.data_plan.resolve` turns a
data config into the immutable plan the rest of the pipeline reads.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import math
import os
from typing import Any

import ml_collections

from data_pipeline import sources as sources_lib

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
                     "data_pipeline.tokenize_files`, or name a recipe with data.mixture")
  out = {}
  for directory in sorted({os.path.dirname(f) for f in files}):
    rel = os.path.relpath(directory, data_dir)
    name = os.path.basename(os.path.abspath(data_dir)) if rel == "." else rel
    out[name] = source_spec("tokens", os.path.join(glob.escape(rel), "*.npy"), 1.0)
  return out
