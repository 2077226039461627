"""Recipe `sample`: the embedded corpus (Python's own docs and code), built on first use.

`data_pipeline/sample_corpus.py` writes the token files under <data_dir>/sample/ the first
time this recipe is selected; weights are by tokens.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "sample"
  c.description = "stdlib prose (help topics + docstrings) 50%, stdlib code 50%"
  c.builder = "sample_corpus"
  c.sources = ml_collections.ConfigDict()
  c.sources.sample_prose = ml_collections.ConfigDict(
      {"kind": "tokens", "paths": "sample/sample_prose/*.npy", "weight": 0.5})
  c.sources.sample_code = ml_collections.ConfigDict(
      {"kind": "tokens", "paths": "sample/sample_code/*.npy", "weight": 0.5})
  return c
