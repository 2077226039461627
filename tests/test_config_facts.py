"""One home per fact: defaults written in a config file equal the library's typed default."""

from conftest import TRAIN_CONFIG

from olmo_jax import trainer
from olmo_jax.config import load_config_file
from olmo_jax.model import ModelConfig


def test_initial_loss_scale_of_the_config_is_the_trainers_default():
  c = load_config_file(TRAIN_CONFIG, "4M")
  assert c.train.loss_scale == trainer.UpdatePolicy().initial_scale == trainer.INITIAL_LOSS_SCALE


def test_init_std_of_the_config_is_the_models_default():
  c = load_config_file(TRAIN_CONFIG, "4M")
  assert c.model.init_std == ModelConfig().init_std
