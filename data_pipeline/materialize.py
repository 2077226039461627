"""Materialising the corpora a data plan reads: the explicit step between resolving a plan and
reading it.

Some recipes name token files that are made, once, from something else: the embedded sample
corpus (recipe field builder='sample_corpus', data_pipeline/sample_corpus.py) and curated
sources (data_pipeline/curation.py's `curated_source`: documents curated and tokenised once
into <data_dir>/curated/<key>/). An entry point resolves the data config into a plan, validates
it, calls `materialize(plan)`, and only then builds the training iterator or the held-out
batches; those read files only and refuse a plan whose files are not built
(DataPlan.check_built). `python -m data_pipeline.tokenize_files --recipe NAME` runs
`materialize_recipe` by hand.
"""

from __future__ import annotations

import json
import logging
import os

from data_pipeline import recipe_config as recipes_lib
from data_pipeline import sample_corpus, tokenization
from data_pipeline import sources as sources_lib
from data_pipeline.data_plan import DataPlan


def materialize(plan: DataPlan) -> None:
  """Builds the files of `plan` that are made on first use and not made yet: the embedded
  corpus, then the curated sources (cached by the key of their inputs, chain and tokenizer).
  Cheap when everything is built (a manifest and index lookups)."""
  if plan.corpus_pending():
    sample_corpus.build(plan.root, tokenizer=plan.config.tokenizer)
  if not any(plan.curation_pending(k) for k in plan.specs):
    return
  logging.info("building the curated sources of recipe %s under %s", plan.name, plan.root)
  materialize_recipe(plan.name, plan.root, recipes_dir=recipes_lib.recipes_dir(plan.config),
                     progress=False)


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
  if rec.get("builder", "") == "sample_corpus":  # its text files are the curated inputs
    sample_corpus.build(data_dir)
  out = {}
  for name, spec in specs.items():
    c = spec.curation
    files = sources_lib.resolve_paths(c.inputs, data_dir, f"curated source {name!r}")
    output = os.path.join(data_dir, c.output)
    out[name] = (output, tokenization.run(
        files, output, tokenizer=c.tokenizer, workers=workers, progress=progress,
        chain=json.loads(c.chain), overwrite=overwrite, base_dir=data_dir, field=c.field))
  return out
