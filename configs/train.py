"""The training config: `--config configs/train.py:150M` (size as the config argument).

Every section is built from its type (olmo_jax/config_sections.py: train, checkpoint, eval,
plan, mesh; olmo_jax/model.py ModelConfig via model_configs/; data_pipeline/recipe_config.py
DataConfig), where each field's default and one-line doc live; override any field on the
command line, e.g. `--config.train.steps=200 --config.model.variant=olmo2`.
"""

import ml_collections

from data_pipeline import recipe_config
from olmo_jax import config_sections as sections
from olmo_jax.config import load_sibling


def get_config(size: str = "4M") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = load_sibling(__file__, "model_configs/ladder.py", size)
  c.data = recipe_config.default_config()
  for name, section in sections.SECTIONS.items():
    c[name] = sections.as_config_dict(section)
  return c
