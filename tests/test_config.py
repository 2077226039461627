"""The typed config: sections own their defaults and docs, resolve() runs once into a RunSpec,
one loader and one override function serve the trainer, the YAML path and the study."""

import dataclasses
import importlib.util
import os

import ml_collections
import pytest
from conftest import REPO, TRAIN_CONFIG

from olmo_jax import config as config_lib
from olmo_jax import config_files
from olmo_jax import config_sections as sections
from olmo_jax.datadecide import study as study_lib
from olmo_jax.datadecide.results import InputError
from olmo_jax.model import ModelConfig

YAML = os.path.join(REPO, "configs", "training_configs", "default_training.yaml")


def test_shipped_yaml_is_written_from_the_train_type():
  with open(YAML) as f:
    assert f.read() == sections.training_yaml(), (
        "regenerate: python -m olmo_jax.config_sections > "
        "configs/training_configs/default_training.yaml")


def test_every_section_of_the_config_file_is_its_type_at_its_defaults():
  c = config_lib.load_config_file(f"{TRAIN_CONFIG}:4M")
  assert set(c.keys()) == {*sections.SECTIONS, "model", "data"}
  for name, cls in sections.SECTIONS.items():
    assert c[name].to_dict() == dataclasses.asdict(cls()), name
    assert all(sections.docs(cls).values()), f"{name}: a field without its one-line doc"


def test_resolve_gives_one_frozen_spec_with_what_the_run_builds():
  c = config_lib.load_config_file(TRAIN_CONFIG, "150M")
  c.train.microbatch_size = 64
  c.model.dtype = "float16"
  spec = config_lib.resolve(c, num_processes=1)
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.train = None
  assert isinstance(spec.train, sections.TrainConfig) and isinstance(spec.model, ModelConfig)
  assert spec.model == config_lib.model_config(ml_collections.ConfigDict(spec.tree))
  assert spec.train.batch_size == 192 and spec.step.microbatches == 3  # 150M ladder batch
  assert spec.step.policy.loss_scaling and spec.step.policy.initial_scale == 32768.0
  assert spec.step.lr_schedule is spec.schedule
  assert float(spec.schedule(spec.train.warmup_steps - 1)) == pytest.approx(spec.train.lr)
  assert spec.tree["derived"] == dataclasses.asdict(spec.derived)
  assert spec.data_seed == spec.train.seed  # data.seed=-1
  assert spec.to_dict() == spec.tree and spec.to_dict() is not spec.tree


@pytest.mark.parametrize("field,value,message", [
    ("train.lr", -2.0, "train.lr=-2.0 must be positive"),
    ("train.seq_len", 0, "train.seq_len=0 must be positive; set --config.train.seq_len=N "
                         "with N >= 1"),
    ("plan.hosts", 0, "plan.hosts=0 must be >= 1; set --config.plan.hosts=N with N >= 1"),
    ("eval.batches", 0, "eval.every must be >= 0 and eval.batches positive"),
    ("checkpoint.keep", 0, "checkpoint.every and checkpoint.keep must be positive"),
])
def test_bad_values_are_named_when_resolved(field, value, message):
  c = config_files.with_overrides(config_lib.load_config_file(TRAIN_CONFIG, "4M"),
                                  {field: value}, "test")
  with pytest.raises(ValueError) as e:
    config_lib.resolve(c, num_processes=1)
  assert str(e.value).startswith(message)


def test_one_override_function_for_yaml_and_the_study(tmp_path):
  base = config_lib.load_config_file(TRAIN_CONFIG, "4M")
  with pytest.raises(ValueError, match="unknown key 'train.stepz'"):
    config_files.with_overrides(base, {"train.stepz": 1}, "x")
  with pytest.raises(ValueError, match="train.steps must be an integer"):
    config_files.with_overrides(base, {"train.steps": "many"}, "x")
  study = {"recipes": {"a": {}}, "sizes": ["t"], "seq_len": 16, "batch_size": 4,
           "custom_sizes": {"t": {"d_model": 16, "n_heads": 2, "n_layers": 2}},
           "overrides": {"train": {"steps": "many"}}}
  with pytest.raises(InputError, match="train.steps must be an integer.*study's "
                                                  "overrides or recipes"):
    study_lib.Study(ml_collections.ConfigDict(study), str(tmp_path))


def test_study_config_files_load_as_training_config_files(tmp_path):
  path = tmp_path / "s.py"
  path.write_text("def get_config(arg='x'):\n  return {'name': arg}\n")
  assert study_lib.load_study_config(f"{path}:y") == {"name": "y"}
  assert study_lib.load_study_config(str(path)) == {"name": "x"}
  with pytest.raises(InputError, match="study config not found: .*nope.py"):
    study_lib.load_study_config(str(tmp_path / "nope.py") + ":y")


def test_the_config_walk_from_the_training_entry_point():
  """The config enters olmo_jax/config.py at most twice from run() (resolve, config.json),
  and fewer than 20 returns hand back values read from it (benchmarks/config_walk.py)."""
  spec = importlib.util.spec_from_file_location(
      "config_walk", os.path.join(REPO, "benchmarks", "config_walk.py"))
  walk = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(walk)
  m = walk.measure()
  assert len(m["config_entries"]) <= 2, m["config_entries"]
  assert len(m["returns"]) < 20, m["returns"]
  called = {t for _, t in m["stays"]}
  assert ("olmo_jax.config", "resolve") in called
  assert ("olmo_jax.config", "model_config") not in called  # derived once, in the spec
