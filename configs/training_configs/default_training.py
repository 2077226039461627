"""The DataDecide training recipe (the `train` section) as a one-section config file:
`--config_file configs/training_configs/default_training.py`. Its fields, defaults and docs
are olmo_jax/config_sections.py TrainConfig; -1 means "from the ladder formulas for
model.size"."""

import ml_collections

from olmo_jax import config_sections


def get_config() -> ml_collections.ConfigDict:
  return config_sections.as_config_dict(config_sections.TrainConfig)
