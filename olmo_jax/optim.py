"""AdamW, the warmup + cosine schedule, global-norm clipping and weight-decay masks."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from olmo_jax import params as params_lib

# Mode -> the decay groups (params.Param.decay in the variant tables) that get weight decay.
WEIGHT_DECAY_MASKS = {
    "all": ("weight", "norm", "embedding"),
    "no_norms": ("weight", "embedding"),
    "no_norms_no_embeddings": ("weight",),
}


def lr_at(step, *, peak_lr: float, warmup_steps: int, total_steps: int,
          min_lr_ratio: float = 0.01):
  """Learning rate of the update that produces `step` (1-indexed, as OLMo counts).

  Linear warmup from 0 to peak over `warmup_steps`, then cosine to min_lr_ratio * peak at
  `total_steps`, constant after. Works on Python numbers and on traced arrays.
  """
  step = jnp.asarray(step, jnp.float32)
  min_lr = peak_lr * min_lr_ratio
  warm = peak_lr * step / max(warmup_steps, 1)
  decay_len = max(total_steps - warmup_steps, 1)
  progress = jnp.clip((step - warmup_steps) / decay_len, 0.0, 1.0)
  cos = min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
  return jnp.where(step < warmup_steps, warm, cos)


def make_schedule(peak_lr: float, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.01):
  """An optax schedule of the update count (0-based): the first update uses lr_at(1)."""
  return lambda count: lr_at(count + 1, peak_lr=peak_lr, warmup_steps=warmup_steps,
                             total_steps=total_steps, min_lr_ratio=min_lr_ratio)


def check_mask_mode(mode: str) -> None:
  if mode not in WEIGHT_DECAY_MASKS:
    raise ValueError(f"train.weight_decay_mask={mode!r} is unknown; choose one of "
                     f"{tuple(WEIGHT_DECAY_MASKS)}")


def weight_decay_mask(params: dict[str, Any], mode: str):
  """Tree of bools: which parameters get weight decay (DataDecide: all of them)."""
  check_mask_mode(mode)
  decayed = WEIGHT_DECAY_MASKS[mode]

  def decide(path, _):
    if mode == "all":
      return True
    return params_lib.decay_group(tuple(str(getattr(k, "key", k)) for k in path)) in decayed

  return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(schedule: optax.Schedule | None = None, *, peak_lr: float | None = None,
                   warmup_steps: int = 0, total_steps: int = 1, min_lr_ratio: float = 0.01,
                   b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8,
                   weight_decay: float = 0.05, grad_clip: float = 1.0,
                   weight_decay_mask_mode: str = "all") -> optax.GradientTransformation:
  """Clip by global norm, then decoupled AdamW (decay scaled by the lr, as torch.optim.AdamW).

  schedule: the learning-rate schedule (make_schedule), built once by the caller, who also
  gives it to the train step's lr reporting. Tools and tests may give peak_lr (with
  warmup_steps, total_steps, min_lr_ratio) instead, and make_schedule is called here.
  """
  check_mask_mode(weight_decay_mask_mode)
  if schedule is None:
    if peak_lr is None:
      raise ValueError("make_optimizer needs a schedule or peak_lr")
    schedule = make_schedule(peak_lr, warmup_steps, total_steps, min_lr_ratio)
  parts = []
  if grad_clip and grad_clip > 0:
    parts.append(optax.clip_by_global_norm(grad_clip))
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                           mask=lambda p: weight_decay_mask(p, weight_decay_mask_mode)))
  return optax.chain(*parts)
