"""The typed sections of the training config: train, checkpoint, eval, plan, mesh.

Each section is a frozen dataclass that owns its fields' defaults, their one-line docs (the
field's `doc` metadata) and its checks. The command line still drives an ml_collections tree:
`as_config_dict` builds a section's subtree from the type (configs/train.py composes them), and
`of` reads a (resolved) subtree back into the type. The model section is
`olmo_jax.model.ModelConfig` (plus `size`), the data section `data_pipeline.recipe_config.
DataConfig`; `olmo_jax.config.resolve` turns the whole tree into one frozen RunSpec.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import yaml

from olmo_jax import sizes


def _f(default: Any, doc: str = "") -> Any:
  """A field with its default and its one-line doc."""
  return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The DataDecide training recipe. -1 means "from the ladder formulas for model.size"."""

  steps: int = _f(-1, "optimizer steps; -1: the published final step of the size")
  batch_size: int = _f(-1, "global batch in sequences; -1: round(160 (N/108e6)^(2/3) / 32) * 32")
  microbatch_size: int = _f(-1, "sequences per forward/backward; < batch_size accumulates "
                                "gradients")
  seq_len: int = _f(sizes.SEQ_LEN, "tokens per sequence")
  lr: float = _f(-1.0, "peak lr; -1: 0.0047 (N/108e6)^(-1/3)")
  warmup_steps: int = _f(-1, "-1: round(N / tokens per step)")
  min_lr_ratio: float = _f(0.01, "cosine ends at this fraction of the peak at train.steps")
  b1: float = _f(0.9, "AdamW beta1")
  b2: float = _f(0.95, "AdamW beta2")
  eps: float = _f(1e-8, "AdamW epsilon")
  weight_decay: float = _f(0.05, "AdamW decoupled weight decay")
  weight_decay_mask: str = _f("all", "all | no_norms | no_norms_no_embeddings")
  grad_clip: float = _f(1.0, "global norm; 0 disables")
  z_loss: float = _f(0.0, "weight of the z-loss (log Z)^2; 0 disables")
  loss_impl: str = _f("fused", "fused: head + softmax CE over token chunks, no [B, L, V] "
                               "logits | dense")
  loss_chunk_tokens: int = _f(0, "tokens per chunk of the fused loss; 0: 256 on CPU, 4096 "
                                 "elsewhere")
  seed: int = _f(sizes.DEFAULT_SEED, "model init seed (and the data seed when data.seed=-1)")
  log_every: int = _f(10, "steps between logged metrics")
  nan_policy: str = _f("stop", "stop: raise and keep the last good checkpoint | skip: skip "
                               "the update")
  loss_scale: float = _f(32768.0, "initial dynamic loss scale, used only with "
                                  "model.dtype=float16")
  peak_flops_per_device: float = _f(0.0, "for MFU; 0: looked up from the device kind")
  progress_bar: bool = _f(True, "a progress bar on the terminal")

  def check_formula_inputs(self) -> None:
    """The fields the ladder formulas divide by: positive, or -1 (from the ladder) where
    allowed. Checked before the formulas run, so that 0 is a named error, not a division."""
    for f, auto in (("seq_len", False), ("batch_size", True), ("microbatch_size", True)):
      v = getattr(self, f)
      if v <= 0 and not (auto and v == -1):
        hint = " or -1 (from the ladder)" if auto else ""
        raise ValueError(f"train.{f}={v} must be positive{hint}; set "
                         f"--config.train.{f}=N with N >= 1")

  def check(self, max_seq_len: int, num_processes: int = 1) -> None:
    """Rejects a resolved section's bad values with a ValueError naming the field."""
    for f in ("steps", "batch_size", "microbatch_size", "seq_len", "log_every"):
      if getattr(self, f) <= 0:
        raise ValueError(f"train.{f}={getattr(self, f)} must be positive")
    if self.lr <= 0:
      raise ValueError(f"train.lr={self.lr} must be positive")
    if self.warmup_steps < 0:
      raise ValueError(f"train.warmup_steps={self.warmup_steps} must be >= 0")
    if not 0 <= self.min_lr_ratio <= 1:
      raise ValueError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
    for f in ("weight_decay", "grad_clip", "z_loss", "eps"):
      if getattr(self, f) < 0:
        raise ValueError(f"train.{f}={getattr(self, f)} must be >= 0")
    for f in ("b1", "b2"):
      if not 0 <= getattr(self, f) < 1:
        raise ValueError(f"train.{f}={getattr(self, f)} must be in [0, 1)")
    if self.seq_len > max_seq_len:
      raise ValueError(f"train.seq_len={self.seq_len} exceeds the RoPE table "
                       f"model.max_seq_len={max_seq_len}")
    if self.batch_size % self.microbatch_size:
      raise ValueError(f"train.microbatch_size={self.microbatch_size} must divide "
                       f"train.batch_size={self.batch_size}")
    if self.batch_size % num_processes:
      raise ValueError(f"train.batch_size={self.batch_size} must be divisible by the "
                       f"{num_processes} processes")
    self._check_choices()

  def _check_choices(self) -> None:
    if self.loss_impl not in ("fused", "dense"):
      raise ValueError(f"train.loss_impl={self.loss_impl!r} must be 'fused' or 'dense'")
    if self.loss_chunk_tokens < 0:
      raise ValueError(f"train.loss_chunk_tokens={self.loss_chunk_tokens} must be >= 0")
    if self.nan_policy not in ("stop", "skip"):
      raise ValueError(f"train.nan_policy={self.nan_policy!r} must be 'stop' or 'skip'")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Where and how often the train state is saved, and the guards of a restart."""

  enabled: bool = _f(True, "save checkpoints in <workdir>/checkpoints (and resume from them)")
  every: int = _f(-1, "steps; -1: 1250 (2500 for 1B), as DataDecide saved")
  keep: int = _f(3, "the newest K checkpoints are kept ...")
  keep_period: int = _f(0, "... plus every step divisible by this, for good (0: none)")
  async_save: bool = _f(True, "write checkpoints in the background")
  # Resume guards (olmo_jax/restart_guard.py).
  allow_config_change: bool = _f(False, "resume even when the model or the data stream "
                                        "changed (refused otherwise)")
  start_fresh_if_damaged: bool = _f(False, "start at step 0 when every checkpoint is damaged "
                                           "(moved aside to checkpoints/damaged/, never "
                                           "deleted)")

  def check(self) -> None:
    if self.every <= 0 or self.keep <= 0 or self.keep_period < 0:
      raise ValueError("checkpoint.every and checkpoint.keep must be positive, "
                       "checkpoint.keep_period >= 0")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """In-loop evaluation: the held-out loss and, optionally, task scores."""

  every: int = _f(0, "steps between in-loop evaluations; 0: off")
  batches: int = _f(4, "held-out batches for the in-loop loss")
  tasks: str = _f("", "tasks or suites scored in the loop too (eval/tasks.py), e.g. 'core'")
  limit: int = _f(200, "documents per task (per MMLU subject) for the in-loop tasks")

  def check(self) -> None:
    if self.every < 0 or self.batches <= 0:
      raise ValueError("eval.every must be >= 0 and eval.batches positive")


@dataclasses.dataclass(frozen=True)
class PlanConfig:
  """The ahead-of-time plan (--dry_run; checked by every run)."""

  check: bool = _f(True, "stop before training when the compiled step does not fit the "
                         "devices")
  headroom: float = _f(0.9, "fraction of device memory the plan may use")
  mfu: float = _f(0.5, "the MFU at which the plan states tokens/s")
  devices: int = _f(0, "--dry_run for another topology: number of devices (0: those at hand)")
  platform: str = _f("auto", "auto (the devices at hand) | cpu | gpu | tpu (compiled for it)")
  topology: str = _f("", "tpu: the slice, e.g. 'v5e:4x4', 'v5p:2x2x2' (compile-only chips)")
  slices: int = _f(1, "tpu: slices of that topology (multi-slice over DCN)")
  device_kind: str = _f("", "gpu: a100_40gb | a100 (80 GB) | h100 | h200; '' = h100")
  hosts: int = _f(1, "gpu: hosts the plan.devices GPUs are spread over")
  output: str = _f("", "also write the plan as JSON to this file")
  device_memory_gb: float = _f(0.0, "0: from the device (CPU: available RAM / local devices)")

  def check_values(self) -> None:
    """ValueError naming a bad plan.* value (olmo_jax/plan_options.py checks the environment
    and plan.output's directory)."""
    for f in ("hosts", "slices"):
      if getattr(self, f) < 1:
        raise ValueError(f"plan.{f}={getattr(self, f)} must be >= 1; set --config.plan.{f}=N "
                         f"with N >= 1")
    if self.devices < 0:
      raise ValueError(f"plan.devices={self.devices} must be >= 0 (0: the devices at hand)")
    if not 0 < self.headroom <= 1:
      raise ValueError(f"plan.headroom={self.headroom} must be in (0, 1]: the fraction of "
                       "device memory the run may use")
    if self.device_memory_gb < 0:
      raise ValueError(f"plan.device_memory_gb={self.device_memory_gb} must be >= 0")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """The device mesh: data x fsdp x tensor."""

  data: int = _f(1, "data-parallel replicas")
  fsdp: int = _f(-1, "parameter/optimizer sharding ways; -1: every device left")
  tensor: int = _f(1, "tensor-parallel ways")


SECTIONS = {"train": TrainConfig, "checkpoint": CheckpointConfig, "eval": EvalConfig,
            "plan": PlanConfig, "mesh": MeshConfig}


def as_config_dict(cls) -> ml_collections.ConfigDict:
  """A section's subtree of the config tree: every field at its default."""
  return ml_collections.ConfigDict({f.name: f.default for f in dataclasses.fields(cls)})


def of(cls, tree) -> Any:
  """The section `cls` of a subtree (a ConfigDict or a mapping); a field the tree lacks (a
  config saved before the field existed) keeps its default."""
  tree = {} if tree is None else tree
  return cls(**{f.name: tree[f.name] for f in dataclasses.fields(cls) if f.name in tree})


def docs(cls) -> dict[str, str]:
  """{field: one-line doc} of a section."""
  return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


YAML_HEADER = """\
# The DataDecide training recipe as YAML overrides of the config tree (the OLMo style):
#   python -m olmo_jax.train --model_size 4M --data_path DATA --output_dir runs/4M \\
#       --config_file configs/training_configs/default_training.yaml
# Nested keys name fields of the tree (see README, "The config tree"); a key the tree does not
# have is an error. -1 means "from the ladder formulas for model.size". Written from the train
# section's type (olmo_jax/config_sections.py TrainConfig) by
# `python -m olmo_jax.config_sections > configs/training_configs/default_training.yaml`;
# a test keeps the two equal: copy this file and edit the copy.
"""


def training_yaml() -> str:
  """configs/training_configs/default_training.yaml: the train section's defaults and docs."""
  lines = [YAML_HEADER.rstrip("\n"), "train:"]
  for f in dataclasses.fields(TrainConfig):
    value = yaml.safe_dump({f.name: f.default}, default_flow_style=True).strip()[1:-1]
    lines.append(f"  {value:<28}# {f.metadata['doc']}")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  print(training_yaml(), end="")
