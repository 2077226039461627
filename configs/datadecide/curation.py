"""A small study of curation strategies: the same documents, raw vs deduplicated vs filtered.

Four recipes of configs/data_configs/curation.py, which differ only in the curation chain
applied to the embedded corpus's prose (Python's help topics and docstrings): curation_raw,
curation_dedup (exact + MinHash), curation_dedup_rules (+ Gopher / FineWeb rules) and
curation_dedup_rules_diverse50 (+ half the documents, drawn across TF-IDF k-means clusters).
Each recipe's curated token files are built on first use under <data_dir>/curated/ (shared by
the cells of that recipe); the report's Recipes table names each chain. Two tiny proxy sizes and
a target (custom shapes, OLMo vocabulary), one seed, budgets of 60-120 steps of 8 x 64 tokens:
a CPU-sized run of the whole pipeline.

Scores: held-out loss and next-token accuracy on the first windows of the prose token files
(data/sample/sample_prose/). Every recipe trains on a subset of those documents, so this
measures fit to the raw prose, not quality; with a quality classifier at
<data_dir>/classifiers/quality.bin, add "curation_qc_top10" to RECIPES, and score with the
evaluation package (eval.scorer = "eval_run") for a real comparison.

  python -m olmo_jax.datadecide --config configs/datadecide/curation.py --workdir runs/dd-curation
      [--plan] [--workers N] [--launch]
"""

import ml_collections

RECIPES = ["curation_raw", "curation_dedup", "curation_dedup_rules",
           "curation_dedup_rules_diverse50"]


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "curation"
  c.data_dir = "data"
  c.recipes = ml_collections.ConfigDict({name: {"mixture": name} for name in RECIPES})
  c.custom_sizes = ml_collections.ConfigDict({
      "xs": {"d_model": 32, "n_heads": 2, "n_layers": 2},
      "s": {"d_model": 64, "n_heads": 4, "n_layers": 2},
      "m": {"d_model": 96, "n_heads": 4, "n_layers": 2},
  })
  c.sizes = ["xs", "s", "m"]
  c.target = "m"
  c.seeds = [1]
  c.seq_len = 64
  c.batch_size = 8
  c.steps = ml_collections.ConfigDict({"xs": 60, "s": 90, "m": 120})
  c.checkpoints_per_run = 3
  c.warmup_fraction = 0.1
  c.overrides = ml_collections.ConfigDict({"train": {"lr": 0.004, "log_every": 20}})
  c.eval = ml_collections.ConfigDict({"scorer": "heldout",
                                      "heldout": "sample/sample_prose/*.npy",
                                      "heldout_windows": 64,
                                      "headline": "heldout/loss"})
  return c
