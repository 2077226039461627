"""The 25 DataDecide pretraining corpora as recipes (select with --config.data.mixture=NAME).

Data is not shipped: each source reads OLMo token files (uint16, EOS-separated) under
`data.data_dir`, at the paths below; tokenise raw Dolma-style jsonl into them with
`python -m data_pipeline.tokenize_files --inputs 'raw/c4/*.json.gz' --output <data_dir>/c4/`.
Selecting a recipe whose files are missing fails naming the missing path.

Weights are by tokens. Dolma 1.7 uses the token counts of its release (billions of OLMo
tokens after the release's per-source up/down-sampling: the dataset card, with C4 at 100% as
its maintainers corrected in the card's discussion #36). The ablations drop the named
sources and renormalise. Corpora that are one filtered pool (C4, FineWeb-Edu, DCLM-Baseline
and its quality-filtered variants, ...) are one source each. falcon_and_cc and
dolma-v1-6-and-sources-baseline take their sources' weights from the tokens present on disk
(`natural_weights`), as training on the concatenated files does. The DCLM/Dolma blends nest
the two recipes at the stated token percentages.
"""

import ml_collections

# Dolma 1.7 sources: (directory under <data_dir>/dolma17/, billions of tokens trained on).
DOLMA17 = {
    "dolma_cc": 597.75,  # 1,195.5B at 50%
    "falcon_refinedweb": 456.4,
    "starcoder": 263.8,
    "c4": 138.4,
    "reddit": 79.9,
    "pes2o": 57.2,
    "arxiv": 28.0,
    "stackexchange": 19.6,
    "flan": 16.5,
    "cc_news": 14.3,
    "open_web_math": 12.7,
    "algebraic_stack": 12.6,
    "gutenberg_books": 5.3,
    "megawika": 4.6,
    "wikipedia_wikibooks": 7.4,  # 3.7B at 200%
}

ABLATIONS = {
    "no_code": ["starcoder"],
    "no_math_no_code": ["starcoder", "open_web_math", "algebraic_stack"],
    "no_reddit": ["reddit"],
    "no_flan": ["flan"],
}

# One-pool corpora: recipe name -> directory under <data_dir>.
SINGLE = {
    "c4": "c4",
    "prox_fineweb_pro": "prox_fineweb_pro",
    "fineweb_edu_dedup": "fineweb_edu_dedup",
    "falcon": "falcon",
    "falcon_and_cc_eli5_oh_top10p": "falcon_and_cc_eli5_oh_top10p",
    "falcon_and_cc_eli5_oh_top20p": "falcon_and_cc_eli5_oh_top20p",
    "falcon_and_cc_og_eli5_oh_top10p": "falcon_and_cc_og_eli5_oh_top10p",
    "falcon_and_cc_tulu_qc_top10": "falcon_and_cc_tulu_qc_top10",
    "DCLM-baseline": "dclm_baseline",
    "dclm_ft7percentile_fw2": "dclm_ft7percentile_fw2",
    "dclm_ft7percentile_fw3": "dclm_ft7percentile_fw3",
    "dclm_fw_top10": "dclm_fw_top10",
    "dclm_fw_top3": "dclm_fw_top3",
    "pos_eli5_oh_neg_dclm_refinedweb_steps_2000_lr3e4_top10p":
        "pos_eli5_oh_neg_dclm_refinedweb_steps_2000_lr3e4_top10p",
    "pos_eli5_oh_neg_dclm_refinedweb_steps_2000_lr3e4_top20p":
        "pos_eli5_oh_neg_dclm_refinedweb_steps_2000_lr3e4_top20p",
}

NATURAL = {
    "falcon_and_cc": {"falcon": "falcon_and_cc/falcon", "dolma_cc": "falcon_and_cc/cc"},
    "dolma-v1-6-and-sources-baseline": {
        "dolma16_plus": "dolma-v1-6-and-sources-baseline"},
}

BLENDS = {  # name -> (Dolma 1.7 share, DCLM-Baseline share) of tokens
    "dolma17-75p-DCLM-baseline-25p": (0.75, 0.25),
    "dolma17-50p-DCLM-baseline-50p": (0.50, 0.50),
    "dolma17-25p-DCLM-baseline-75p": (0.25, 0.75),
}


def recipe_names() -> list[str]:
  return (["dolma17"] + list(ABLATIONS) + list(SINGLE) + list(NATURAL) + list(BLENDS))


def _tokens(paths: str, weight: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"kind": "tokens", "paths": paths, "weight": float(weight)})


def get_config(name: str) -> ml_collections.ConfigDict:
  """The recipe `name` (one of recipe_names())."""
  c = ml_collections.ConfigDict()
  c.name = name
  c.sources = ml_collections.ConfigDict()
  if name == "dolma17":
    c.description = "Dolma 1.7, 15 sources at their release token counts"
    for src, billions in DOLMA17.items():
      c.sources[src] = _tokens(f"dolma17/{src}/*.npy", billions)
  elif name in ABLATIONS:
    c.description = f"Dolma 1.7 without {', '.join(ABLATIONS[name])}"
    c.base = "dolma17"
    c.drop = list(ABLATIONS[name])
  elif name in SINGLE:
    c.description = f"one pool of token files under <data_dir>/{SINGLE[name]}/"
    c.sources[SINGLE[name]] = _tokens(f"{SINGLE[name]}/*.npy", 1.0)
  elif name in NATURAL:
    c.description = "sources weighted by the tokens present on disk"
    c.natural_weights = True
    for src, directory in NATURAL[name].items():
      c.sources[src] = _tokens(f"{directory}/*.npy", 1.0)
  elif name in BLENDS:
    dolma, dclm = BLENDS[name]
    c.description = f"Dolma 1.7 {dolma:.0%} + DCLM-Baseline {dclm:.0%} of tokens"
    c.sources.dolma17 = ml_collections.ConfigDict({"recipe": "dolma17", "weight": dolma,
                                                   "kind": "tokens", "paths": ""})
    c.sources.dclm = ml_collections.ConfigDict({"recipe": "DCLM-baseline", "weight": dclm,
                                                "kind": "tokens", "paths": ""})
  else:
    raise ValueError(f"unknown DataDecide recipe {name!r}; known: {recipe_names()}")
  return c
