"""One home per fact: defaults written in a config file equal the library's typed default."""

import inspect
import os
import re

from conftest import REPO, TRAIN_CONFIG

from olmo_jax import optim, sizes, trainer
from olmo_jax.config import load_config_file
from olmo_jax.model import ModelConfig


def test_initial_loss_scale_of_the_config_is_the_trainers_default():
  c = load_config_file(TRAIN_CONFIG, "4M")
  assert c.train.loss_scale == trainer.UpdatePolicy().initial_scale == trainer.INITIAL_LOSS_SCALE


def test_init_std_of_the_config_is_the_models_default():
  c = load_config_file(TRAIN_CONFIG, "4M")
  assert c.model.init_std == ModelConfig().init_std


def test_optimizer_defaults_of_the_config_are_the_optimizers():
  t = load_config_file(TRAIN_CONFIG, "4M").train
  sig = inspect.signature(optim.make_optimizer).parameters
  for field in ("min_lr_ratio", "b1", "b2", "eps", "weight_decay", "grad_clip"):
    assert t[field] == sig[field].default, field
  assert t.weight_decay_mask == sig["weight_decay_mask_mode"].default
  assert t.min_lr_ratio == inspect.signature(optim.make_schedule).parameters["min_lr_ratio"].default


def _docs_config_table() -> dict[str, str]:
  """field -> default as docs/training.md's config table prints it (one entry per field)."""
  with open(os.path.join(REPO, "docs", "training.md")) as f:
    text = f.read()
  block = text.split("| field | default | meaning |\n", 1)[1].split("\n\n", 1)[0]
  rows = [line.split(" | ") for line in block.splitlines() if line.startswith("| `")]
  table = {}
  for cells in rows:
    names = re.findall(r"`([^`]+)`", cells[0])
    if names[0].endswith(".*"):
      continue  # a pointer to another page
    prefix = names[0].rsplit(".", 1)[0]
    names = [n if "." in n else f"{prefix}.{n}" for n in names]
    values = [v.strip().strip("`") for v in cells[1].split(", ")]
    for name, value in zip(names, values if len(values) == len(names) else values * len(names)):
      table[name] = value
  return table


def test_docs_config_table_prints_the_config_defaults():
  c = load_config_file(TRAIN_CONFIG, "4M")
  table = _docs_config_table()
  assert len(table) > 40
  for name, printed in table.items():
    section, field = name.split(".")
    value = c[section][field]
    if isinstance(value, bool):
      assert printed == str(value).lower(), name
    elif isinstance(value, (int, float)):
      assert float(printed) == value, name
    else:
      assert printed == value, name


def test_printed_checkpoint_cadence_is_the_ladders():
  printed = f"{sizes.checkpoint_every('4M')} ({sizes.checkpoint_every('1B')} for 1B)"
  for rel in ("docs/training.md", "olmo_jax/config_sections.py",
              "olmo_jax/datadecide/study.py"):
    with open(os.path.join(REPO, rel)) as f:
      assert f"-1 = {printed}" in f.read().replace("-1: ", "-1 = "), rel
