"""Model config of a DataDecide ladder size: `--config configs/train.py:150M` picks it.

Every field of olmo_jax.model.ModelConfig, plus `size`; shapes come from olmo_jax/sizes.py
(the published table) while d_model/n_heads/n_layers are 0 ("from model.size"). Set
`size=custom` with d_model/n_heads/n_layers for another shape, and `mlp_hidden` for an MLP
width other than 4 * d_model.
"""

import ml_collections

from olmo_jax.config import model_config_dict


def get_config(size: str = "4M") -> ml_collections.ConfigDict:
  return model_config_dict(size)
