"""A small study of curation strategies: the same documents, raw vs deduplicated vs filtered.

Four recipes of configs/data_configs/curation.py, which differ only in the curation chain
applied to the embedded corpus's prose (Python's help topics and docstrings): curation_raw,
curation_dedup (exact + MinHash), curation_dedup_rules (+ Gopher / FineWeb rules) and
curation_dedup_rules_diverse50 (+ half the documents, drawn across TF-IDF k-means clusters).
Each recipe's curated token files are built once, before any cell trains, under
<data_dir>/curated/ (shared by the cells of that recipe); the report's Recipes table names each
chain. Two tiny proxy sizes and a target (custom shapes, OLMo vocabulary), one seed, budgets of
60-120 steps of 8 x 64 tokens: a CPU-sized run of the whole pipeline.

Scores: held-out loss and next-token accuracy on the first windows of the prose token files
(data/sample/sample_prose/). Every recipe trains on a subset of those documents, so this
measures fit to the raw prose, not quality; with a quality classifier at
<data_dir>/classifiers/quality.bin, add "curation_qc_top10" to RECIPES, and score with the
evaluation package (eval.scorer = "eval_run") for a real comparison.

  python -m olmo_jax.datadecide --config configs/datadecide/curation.py --workdir runs/dd-curation
      [--plan] [--workers N] [--launch]
"""

import importlib.util
import os

import ml_collections

RECIPES = ["curation_raw", "curation_dedup", "curation_dedup_rules",
           "curation_dedup_rules_diverse50"]


def _demo_config() -> ml_collections.ConfigDict:
  """configs/datadecide/demo.py's study: the same tiny ladder, trained and scored alike."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py")
  spec = importlib.util.spec_from_file_location("_datadecide_demo_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config() -> ml_collections.ConfigDict:
  c = _demo_config()
  c.name = "curation"
  c.synthetic_noise_levels, c.synthetic_vocab = [], 0  # OLMo ids of the embedded corpus
  c.recipes = ml_collections.ConfigDict({name: {"mixture": name} for name in RECIPES})
  c.custom_sizes.m.n_layers = 2
  c.seeds = [1]
  c.batch_size = 8
  c.steps = ml_collections.ConfigDict({"xs": 60, "s": 90, "m": 120})
  c.checkpoints_per_run = 3
  c.overrides.train.log_every = 20
  c.eval.heldout = "sample/sample_prose/*.npy"
  c.eval.heldout_windows = 64
  return c
