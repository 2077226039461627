"""Curation recipes: the same documents under different strategy chains (DataDecide candidates).

Each recipe here has one source, the embedded corpus's prose (Python's help topics and
docstrings, `sample/text/sample_prose.jsonl.gz`, built before training), curated by the chain in
CHAINS. Materialise a recipe's curated sources once with

  python -m data_pipeline.tokenize_files --recipe curation_dedup_rules --data_dir data

which writes <data_dir>/curated/<key>/ (key: inputs, chain, tokenizer); recipes with the same
chain share those files. `python -m data_pipeline.inspect_tokens <that dir>` shows what each
step kept.
curation_qc_top10 keeps the top 10% by a fastText quality classifier, as DataDecide's QC
recipes were made: put the model at <data_dir>/classifiers/quality.bin (label __label__hq).
"""

import ml_collections

from data_pipeline.curation import curated_source, describe_chain

PROSE = "sample/text/sample_prose.jsonl.gz"
DEDUP = [{"step": "exact_dedup"}, {"step": "minhash_dedup", "threshold": 0.8, "ngram": 5}]
RULES = [{"step": "gopher_quality"}, {"step": "gopher_repetition"},
         {"step": "fineweb_quality"}]
CHAINS = {
    "curation_raw": [],
    "curation_dedup": DEDUP,
    "curation_dedup_rules": DEDUP + RULES,
    "curation_dedup_rules_diverse50": DEDUP + RULES + [
        {"step": "subsample", "mode": "diversity", "fraction": 0.5, "clusters": 16,
         "features": "tfidf"}],
    "curation_qc_top10": DEDUP + [
        {"step": "top_p", "fraction": 0.1, "fasttext": "classifiers/quality.bin",
         "label": "__label__hq"}],
}


def recipe_names() -> list[str]:
  return list(CHAINS)


def get_config(name: str) -> ml_collections.ConfigDict:
  """The recipe `name` (one of recipe_names())."""
  if name not in CHAINS:
    raise ValueError(f"unknown curation recipe {name!r}; known: {recipe_names()}")
  c = ml_collections.ConfigDict()
  c.name = name
  c.description = f"sample prose, curated: {describe_chain(CHAINS[name])}"
  c.builder = "sample_corpus"  # the input documents are the embedded corpus's text files
  c.sources = ml_collections.ConfigDict()
  c.sources.sample_prose = curated_source(PROSE, CHAINS[name], weight=1.0)
  return c
