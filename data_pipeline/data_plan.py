"""A data config resolved once into an immutable plan: recipe, sources, files and weights.

`resolve(config.data)` reads the data subtree, loads and flattens the recipe and applies
`drop_sources`; it is cheap (recipe files, a directory glob). An entry point then calls, in
order: `validate_config(plan, vocab_size)`, `data_pipeline.materialize.materialize(plan)` (builds
the embedded corpus and curated sources the plan reads, if not built yet), `describe(plan)`,
and the readers (`mixture.build_train_iterator`, `heldout.heldout_batches`,
`heldout.heldout_documents`), which take the plan, never the training config, and never build
anything: they refuse a plan whose files are not built.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from data_pipeline import sample_corpus
from data_pipeline import sources as sources_lib
from data_pipeline.document_sources import DocumentSource, TfdsDocumentSource
from data_pipeline.recipe_config import (
  DataConfig,
  Recipe,
  SourceSpec,
  _check_weight,
  _merge,
  data_config,
  directory_sources,
  flatten_recipe,
  load_recipe,
  mixture_name,
  parse_sources,
  recipes_dir,
)
from data_pipeline.token_index import INDEX_FILE


@dataclasses.dataclass(frozen=True)
class DataPlan:
  """What a data config trains on.

  config: the data subtree with every default; name: the mixture ('synthetic', 'all',
  'custom' or a recipe); recipe: the recipe's own fields (None for 'custom' and
  'synthetic'); specs: every source after drop_sources, in name order (empty when
  synthetic). `used` are the sources a run reads (weight > 0, or all of a natural-weights
  recipe); `files(name)` resolves one source's files (they may be built on first use, so
  they are looked up when asked for).
  """

  config: DataConfig
  name: str
  recipe: Recipe | None
  specs: dict[str, SourceSpec]

  @property
  def synthetic(self) -> bool:
    return self.name == "synthetic"

  @property
  def holds_out(self) -> bool:
    """True when a held-out split exists: data.heldout_fraction > 0 over a mixture of files
    (the synthetic stream has no documents to hold out)."""
    return self.config.heldout_fraction > 0 and not self.synthetic

  @property
  def natural(self) -> bool:
    """True when the weights are the sources' tokens on disk."""
    return self.recipe is not None and self.recipe.natural_weights

  @property
  def root(self) -> str:
    return self.config.root

  @property
  def used(self) -> dict[str, SourceSpec]:
    return {k: v for k, v in self.specs.items() if self.natural or v.weight > 0}

  def files(self, name: str) -> list[str]:
    """Resolved files of a source, each checked cheaply (exists, non-empty, dtype-aligned)."""
    spec, dc = self.specs[name], self.config
    if spec.kind == "tfds":
      return []
    files = sources_lib.resolve_paths(spec.paths, dc.root, f"data source {name!r}")
    for path in files:
      if spec.kind == "tokens":
        sources_lib.token_file_layout(path, self.dtype(name))
      elif os.path.getsize(path) == 0:
        raise ValueError(f"data source {name!r}: file is empty: {path}")
    return files

  def dtype(self, name: str) -> str:
    """The token dtype of a token-file source."""
    return self.specs[name].dtype or self.config.token_dtype

  def weights(self, tokens: list) -> list[float]:
    """Mixing weights of the used sources: the recipe's, or `tokens` on disk (None: a text
    source) for natural-weights recipes."""
    if not self.natural:
      return [v.weight for v in self.used.values()]
    if any(t is None for t in tokens):
      raise ValueError(f"recipe {self.recipe.name!r}: natural_weights needs token-file "
                       "sources only")
    return [float(t) for t in tokens]

  def disk_tokens(self) -> list:
    """Tokens in each used source's files (None for text sources), from headers and sizes."""
    return [sum(sources_lib.token_file_layout(f, self.dtype(k))[2] for f in self.files(k))
            if v.kind == "tokens" else None for k, v in self.used.items()]

  def corpus_pending(self) -> bool:
    """True when the recipe's files are built on first use and are not built yet."""
    if self.recipe is None or not self.recipe.builder:
      return False
    if self.recipe.builder != "sample_corpus":
      raise ValueError(f"recipe {self.recipe.name!r}: unknown builder {self.recipe.builder!r}")
    return not sample_corpus.is_built(self.root)

  def curation_pending(self, name: str) -> bool:
    """True for a curated source whose token files are not made yet."""
    spec = self.specs[name]
    if not spec.curation:
      return False
    return not os.path.isfile(os.path.join(self.root, spec.curation.output, INDEX_FILE))

  def unbuilt(self) -> list[str]:
    """What the plan reads and data_pipeline.materialize has not built yet (empty: ready)."""
    out = [f"the embedded corpus under {self.root}"] if self.corpus_pending() else []
    return out + [f"curated source {k!r}" for k in self.used if self.curation_pending(k)]

  def check_built(self, what: str) -> None:
    """Raises ValueError when files of the plan are still to be built: readers never build."""
    unbuilt = self.unbuilt()
    if not unbuilt:
      return
    command = (f"python -m data_pipeline.sample_corpus {self.root}" if self.corpus_pending()
               else f"python -m data_pipeline.tokenize_files --recipe {self.name} --data_dir "
                    f"{self.root}")
    raise ValueError(f"{what}: {', '.join(unbuilt)} of data.mixture={self.name!r} is not built "
                     "yet; training builds it first (data_pipeline.materialize.materialize(plan)"
                     f"), or build it with `{command}`")


BUCKET_SCHEMES = ("gs://", "s3://")


def refuse_bucket_paths(path: str, field: str) -> None:
  """Token files are read by memory mapping, which needs a file system: a bucket URL is
  refused with the way to mount it."""
  if str(path).startswith(BUCKET_SCHEMES):
    bucket = str(path).split("://", 1)[1].split("/", 1)[0]
    raise ValueError(f"{field}={path}: token files are read from a file system, not from a "
                     f"bucket URL; mount the bucket (e.g. `gcsfuse --implicit-dirs {bucket} "
                     f"/mnt/{bucket}`) and pass the mounted path")


def resolve(data) -> DataPlan:
  """The plan of `config.data` (a ConfigDict, dict, None or DataConfig), drop_sources
  applied. Raises ValueError naming the field on an unknown recipe or source."""
  dc = data_config(data)
  refuse_bucket_paths(dc.data_dir, "data.data_dir")
  name = mixture_name(dc)
  if name != "custom" and dc.sources:
    raise ValueError(f"data.sources is only read when data.mixture='custom' (mixture is "
                     f"{name!r}); clear one of them")
  if name == "synthetic":
    return DataPlan(dc, name, None, {})
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
  plan = DataPlan(dc, name, recipe, dict(sorted(specs.items())))
  if not plan.natural and sum(spec.weight for spec in specs.values()) <= 0:
    raise ValueError(f"data.mixture={name!r}: all source weights are zero "
                     f"({ {k: v.weight for k, v in specs.items()} })")
  return plan


def require_plan(data, what: str, built: bool = True) -> DataPlan:
  """`data` when it is a DataPlan (whose files are built, if `built`); raises
  TypeError/ValueError naming `what` and the steps an entry point takes first."""
  if not isinstance(data, DataPlan):
    raise TypeError(f"{what} takes a DataPlan, got {type(data).__name__}: resolve config.data "
                    "with data_pipeline.data_plan.resolve and build its files with "
                    "data_pipeline.materialize.materialize first")
  if built and not data.synthetic:
    data.check_built(what)
  return data


def validate_config(data, vocab_size: int) -> None:
  """Raises ValueError/FileNotFoundError naming the field or file on a bad data config or
  plan. Cheap (stats files, reads .npy headers); runs before any expensive work."""
  dc = data_config(data.config if isinstance(data, DataPlan) else data)
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
  plan = data if isinstance(data, DataPlan) else resolve(data)
  if plan.corpus_pending():
    return  # its files are written by data_pipeline.materialize
  for name, spec in plan.used.items():
    if plan.curation_pending(name):
      # Built by data_pipeline.materialize; its inputs must exist now.
      sources_lib.resolve_paths(spec.curation.inputs, dc.root, f"curated source {name!r}")
    else:
      plan.files(name)


def describe(data) -> str:
  """The start-up table of what a plan trains on: per source its kind, files, tokens on disk
  (token files) and realised weight. Cheap (file headers only)."""
  plan = require_plan(data, "describe", built=False)
  if plan.synthetic:
    return "data: the synthetic token stream (no files)"
  head = f"data: mixture {plan.name!r} under {plan.root}"
  if plan.corpus_pending():
    return f"{head}: built on first use"
  pending = [k for k in plan.used if plan.curation_pending(k)]
  if pending:  # made by data_pipeline.materialize; validate_config checked their inputs
    return f"{head}: curated source(s) {', '.join(pending)} built on first use"
  specs = plan.used
  files = {k: plan.files(k) for k in specs}
  tokens = plan.disk_tokens()
  weights = np.asarray(plan.weights(tokens))
  width = max(len(k) for k in ["source", *specs])
  lines = [f"{head} ({'weights by tokens' if plan.natural else 'recipe weights'})",
           f"  {'source':<{width}}  {'kind':<12} {'files':>6} {'tokens':>16} {'weight':>7}"]
  for (k, v), t, w in zip(specs.items(), tokens, weights / weights.sum()):
    t = "-" if t is None else f"{t:,}"
    lines.append(f"  {k:<{width}}  {v.kind:<12} {len(files[k]):>6} {t:>16} {w:>7.4f}")
  known = sum(t for t in tokens if t is not None)
  lines.append(f"  {'total':<{width}}  {'':<12} {sum(map(len, files.values())):>6} "
               f"{known:>16,} {1:>7.4f}")
  if plan.holds_out:
    lines.append(f"  held out of training for evaluation: {plan.config.heldout_fraction:g} of "
                 "each source's documents (data.heldout_fraction)")
  return "\n".join(lines)


def document_source(plan: DataPlan, name: str, files: list[str]):
  """The document reader of a text, ArrayRecord or TFDS source."""
  spec = plan.specs[name]
  if spec.kind == "tfds":
    return TfdsDocumentSource(
        spec.tfds_name, spec.split, plan.root, feature=spec.feature,
        record_format=spec.record_format, source_name=name)
  return DocumentSource(files, name=name, field=spec.field,
                                    record_format=spec.record_format)
