"""Config files, and the one resolution of a config tree into a RunSpec.

A config as written holds sentinels (-1, 0, 'auto') meaning "from the ladder formulas";
`resolve` turns it, once, into a frozen RunSpec: typed sections (olmo_jax/config_sections.py,
ModelConfig, DataConfig), the derived counts, the learning-rate schedule, the optimizer and the
train step's StepConfig. Given the number of processes it also rejects bad values with a
message naming the field, before any expensive work. `replace_settings` changes the settings
that leave all of that but the step's microbatch count as it is (microbatch size, remat, mesh:
what the plan's search for settings that fit varies) without resolving again. The code below
the entry points receives the RunSpec (or the parts it needs) and never re-reads the tree.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any, Callable

import ml_collections
import optax

from data_pipeline.recipe_config import DataConfig, data_config
from olmo_jax import config_sections as sections
from olmo_jax import optim, paths, sizes, trainer
from olmo_jax import params as params_lib
from olmo_jax.model import ModelConfig
from olmo_jax.runtime import resolve_platform


def split_spec(spec: str) -> tuple[str, str | None]:
  """'configs/train.py:150M' -> ('configs/train.py', '150M'); a path alone -> (path, None)."""
  if ".py:" in spec:
    path, _, arg = spec.partition(".py:")
    return path + ".py", arg
  return spec, None


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Runs `get_config(arg)` of a config file: `path` and `arg`, or `PATH.py:ARG` as one."""
  if arg is None:
    path, arg = split_spec(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  name = "_olmo_cfg_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def load_sibling(this_file: str, relpath: str, arg: str | None = None):
  """Loads a config file relative to the directory of `this_file`."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(this_file)), relpath),
                          arg)


def model_config_dict(size: str = "4M") -> ml_collections.ConfigDict:
  """The `model` config subtree: `size` plus every ModelConfig field at its default.

  size: a ladder size ('4M' ... '1B'), or 'custom' with d_model/n_heads/n_layers set.
  d_model, n_heads and n_layers are 0 ("from model.size"), dtype is 'auto' (bfloat16 on
  GPU/TPU, float32 on CPU) and platform 'auto' (the devices in use) until `resolve`.
  """
  c = ml_collections.ConfigDict({"size": size})
  for f in dataclasses.fields(ModelConfig):
    c[f.name] = f.default
  c.d_model = c.n_heads = c.n_layers = 0
  c.dtype = "auto"
  return c


def _model_shape(m) -> tuple[int, int, int, float]:
  """(d_model, n_heads, n_layers, formula N) of the config's model."""
  if m.size == "custom":
    for f in ("d_model", "n_heads", "n_layers"):
      if getattr(m, f) <= 0:
        raise ValueError(f"model.size='custom' needs model.{f} > 0")
    d, h, l = m.d_model, m.n_heads, m.n_layers
    return d, h, l, float(sizes.non_embedding_params(d, l, "ladder", m.embedding_size,
                                                     m.get("mlp_hidden", 0)))
  s = sizes.get_size(m.size)
  return (m.d_model or s.d_model, m.n_heads or s.n_heads, m.n_layers or s.n_layers,
          s.formula_params)


def default_dtype(platform: str = "auto") -> str:
  """The compute dtype 'auto' stands for on a platform: float32 on CPU, bfloat16 elsewhere."""
  return "float32" if resolve_platform(platform) == "cpu" else "bfloat16"


def _resolve_tree(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy with every ladder sentinel replaced by its value, plus a `derived` subtree."""
  c = ml_collections.ConfigDict(config.to_dict())
  m, t = c.model, c.train
  params_lib.get(m.variant)  # names model.variant and the choices
  d, h, l, n_formula = _model_shape(m)
  m.d_model, m.n_heads, m.n_layers = d, h, l
  # The kernels and the default dtype are chosen once, here, from the platform.
  if m.get("platform", "auto") == "auto":
    m.platform = resolve_platform("auto")
  if m.dtype == "auto":
    m.dtype = default_dtype(m.platform)
  ladder = sizes.LADDER.get(m.size)
  sections.of(sections.TrainConfig, t).check_formula_inputs()
  if t.batch_size == -1:
    t.batch_size = ladder.batch_seqs if ladder else sizes.batch_size_formula(n_formula)
  if t.microbatch_size == -1:
    t.microbatch_size = t.batch_size
  if t.lr == -1.0:
    t.lr = sizes.peak_lr_formula(n_formula)
  if t.warmup_steps == -1:
    t.warmup_steps = sizes.warmup_steps_formula(n_formula, t.batch_size, t.seq_len)
  if t.steps == -1:
    t.steps = (ladder.final_step if ladder and t.batch_size == ladder.batch_seqs
               and t.seq_len == sizes.SEQ_LEN
               else sizes.length_steps_formula(n_formula, t.batch_size, t.seq_len))
  if c.checkpoint.every == -1:
    c.checkpoint.every = sizes.checkpoint_every(ladder.name if ladder else None)
  n = sizes.non_embedding_params(d, l, m.variant, m.embedding_size, m.get("mlp_hidden", 0))
  tokens = t.steps * t.batch_size * t.seq_len
  c.derived = ml_collections.ConfigDict(dataclasses.asdict(Derived(
      non_embedding_params=n, total_params=n + m.embedding_size * d,
      tokens_per_step=t.batch_size * t.seq_len, total_tokens=tokens,
      compute_flops=float(sizes.training_flops(n, tokens)))))
  return c


@dataclasses.dataclass(frozen=True)
class Derived:
  """What follows from the resolved sections: parameter and token counts, compute."""

  non_embedding_params: int
  total_params: int
  tokens_per_step: int
  total_tokens: int
  compute_flops: float  # 6 N D


@dataclasses.dataclass(frozen=True, eq=False)
class RunSpec:
  """A training config resolved once: the typed sections, what follows from them, and what
  the run builds from them before anything compiles (schedule, optimizer, step config).

  `tree` is the resolved config as a plain dict: config.json, the checkpoints' metadata and
  the restart guard read it.
  """

  size: str  # model.size: a ladder size or 'custom'
  model: ModelConfig
  train: sections.TrainConfig
  checkpoint: sections.CheckpointConfig
  eval: sections.EvalConfig
  plan: sections.PlanConfig
  mesh: sections.MeshConfig
  data: DataConfig
  derived: Derived
  tree: dict
  schedule: Callable[[Any], Any]  # optim.make_schedule of the train section
  optimizer: optax.GradientTransformation
  step: trainer.StepConfig

  @property
  def data_seed(self) -> int:
    """The data stream's seed: data.seed, or train.seed where it is -1."""
    return self.train.seed if self.data.seed == -1 else self.data.seed

  def to_dict(self) -> dict[str, Any]:
    """The resolved config tree (a copy)."""
    return _plain(self.tree)


def resolve(config: ml_collections.ConfigDict, num_processes: int | None = None) -> RunSpec:
  """The RunSpec of a config tree: sentinels replaced by the ladder formulas, the platform's
  kernels and dtype chosen, and (given num_processes) every field checked."""
  c = _resolve_tree(config)
  mcfg = sections.of(ModelConfig, c.model)
  typed = {name: sections.of(cls, c.get(name)) for name, cls in sections.SECTIONS.items()}
  if num_processes is not None:
    check(mcfg, typed, num_processes)
  train = typed["train"]
  schedule = optim.make_schedule(train.lr, train.warmup_steps, train.steps, train.min_lr_ratio)
  tx = optim.make_optimizer(schedule, b1=train.b1, b2=train.b2, eps=train.eps,
                            weight_decay=train.weight_decay, grad_clip=train.grad_clip,
                            weight_decay_mask_mode=train.weight_decay_mask)
  step = trainer.StepConfig(  # unchecked, the ladder formula may give a batch of 0 (tiny N)
      microbatches=_microbatches(train), z_loss=train.z_loss,
      loss_chunk_tokens=(0 if train.loss_impl == "dense" else
                         train.loss_chunk_tokens or trainer.default_loss_chunk(mcfg.platform)),
      policy=trainer.UpdatePolicy(nonfinite=train.nan_policy,
                                  loss_scaling=mcfg.dtype == "float16",
                                  initial_scale=train.loss_scale),
      lr_schedule=schedule)
  return RunSpec(size=c.model.size, model=mcfg, **typed, data=data_config(c.get("data")),
                 derived=Derived(**c.derived), tree=_plain(c.to_dict()), schedule=schedule,
                 optimizer=tx, step=step)


def _microbatches(train: sections.TrainConfig) -> int:
  """Microbatches accumulated per step (the step config's count)."""
  return train.batch_size // max(train.microbatch_size, 1)


# The settings a RunSpec changes without being resolved again: the derived counts, the schedule
# and the optimizer do not depend on them. The plan's search for settings that fit tries other
# values of these (olmo_jax/plan.py, Fix).
LAYOUT_SETTINGS = ("train.microbatch_size", "model.remat", "mesh.data", "mesh.fsdp",
                   "mesh.tensor")


def replace_settings(spec: RunSpec, changes: dict[str, Any]) -> RunSpec:
  """The RunSpec with some LAYOUT_SETTINGS changed, e.g. {"train.microbatch_size": 4,
  "model.remat": "full"}: the typed sections, the step config's microbatches and the tree follow
  (as resolving the changed tree would give them); the schedule and optimizer are the same
  objects. Unchecked, like `resolve` without num_processes."""
  tree = _plain(spec.tree)
  parts = {"model": spec.model, "train": spec.train, "mesh": spec.mesh}
  for key, value in changes.items():
    if key not in LAYOUT_SETTINGS:
      raise ValueError(f"{key} changes more than the layout: set it in the config tree and "
                       f"resolve it (replace_settings takes {', '.join(LAYOUT_SETTINGS)})")
    section, _, field = key.partition(".")
    parts[section] = dataclasses.replace(parts[section], **{field: value})
    tree.setdefault(section, {})[field] = value
  step = dataclasses.replace(spec.step, microbatches=_microbatches(parts["train"]))
  return dataclasses.replace(spec, **parts, step=step, tree=tree)


def check(model: ModelConfig, typed: dict[str, Any], num_processes: int = 1) -> None:
  """Rejects the resolved sections' bad values with a ValueError naming the field (and the
  fix): the checks each type owns, in one order."""
  model.validate()
  typed["train"].check(model.max_seq_len, num_processes)
  typed["checkpoint"].check()
  typed["eval"].check()
  typed["plan"].check_values()


def model_config(c) -> ModelConfig:
  """The ModelConfig of a RunSpec, or of a config tree as saved (a field missing from an older
  saved config keeps its default)."""
  return c.model if isinstance(c, RunSpec) else sections.of(ModelConfig, c.model)


def save_json(c, path: str) -> None:
  """Writes the resolved config (a RunSpec or a tree) as JSON (atomically)."""
  tree = c.tree if isinstance(c, RunSpec) else c.to_dict()
  paths.write_atomic(path, json.dumps(tree, indent=2, sort_keys=True, default=str))


def load_json(path: str) -> ml_collections.ConfigDict:
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def to_dict(c) -> dict[str, Any]:
  """The JSON-able dict of a config tree or a RunSpec."""
  return _plain(c.to_dict())


def _plain(tree: dict) -> dict[str, Any]:
  """A copy made only of JSON types (what config.json and the checkpoints' metadata hold)."""
  return json.loads(json.dumps(tree, default=str))
