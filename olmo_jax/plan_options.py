"""The plan.* settings of a training config: their defaults, their checks (before anything
compiles), and the share of each device's memory a plan counts, which on GPUs is the share
XLA's allocator gets (`XLA_PYTHON_CLIENT_MEM_FRACTION`): one number for the plan and the run.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import ml_collections

from olmo_jax import config_sections as sections
from olmo_jax.config import RunSpec


def plan_options(cfg) -> ml_collections.ConfigDict:
  """The plan section of a RunSpec, or a config tree's `plan` over PlanConfig's defaults
  (configs and checkpoints made before it existed have none), as a ConfigDict."""
  plan = cfg.plan if isinstance(cfg, RunSpec) else sections.of(sections.PlanConfig,
                                                               cfg.get("plan"))
  return ml_collections.ConfigDict(dataclasses.asdict(plan))


# XLA's GPU allocator takes this fraction of each GPU (JAX's default without it: 0.75).
MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"


def check_options(spec: RunSpec) -> None:
  """ValueError naming a bad plan.* setting outside its values (PlanConfig checks those when
  the config is resolved): the allocator's share from the environment and plan.output's
  directory, before anything compiles or is written."""
  o = spec.plan
  memory_fraction(o)  # a bad XLA_PYTHON_CLIENT_MEM_FRACTION is named here too
  if o.output:
    check_output_path(o.output)


def check_output_path(path: str) -> None:
  """ValueError unless plan.output names a file that can be written (its directory exists
  and is writable), checked before the compile rather than after it."""
  if os.path.isdir(path):
    raise ValueError(f"plan.output={path} is a directory; name a file, e.g. {path}/plan.json")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise ValueError(f"plan.output={path}: directory {parent} does not exist; create it "
                     "(mkdir -p) or name a file in an existing directory")
  try:  # a probe file, removed at once: permissions, read-only mounts, /proc alike
    fd, probe = tempfile.mkstemp(prefix=".plan-probe-", dir=parent)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise ValueError(f"plan.output={path}: cannot write in {parent} ({e.strerror}); name a "
                     "file in a writable directory") from None


def memory_fraction(opts, environ=os.environ) -> tuple[float, str]:
  """(fraction of each GPU's memory the run's allocator has, where that number comes from).

  One fact for the plan and the run: XLA_PYTHON_CLIENT_MEM_FRACTION when the environment sets
  it, else plan.headroom, which the trainer exports as XLA_PYTHON_CLIENT_MEM_FRACTION before
  JAX starts (`export_memory_fraction`)."""
  raw = environ.get(MEM_FRACTION_ENV, "")
  if not raw:
    return float(opts.headroom), "plan.headroom"
  try:
    value = float(raw)
  except ValueError:
    value = -1.0
  if not 0 < value <= 1:
    raise ValueError(f"{MEM_FRACTION_ENV}={raw!r} must be a number in (0, 1]; unset it to use "
                     f"plan.headroom={opts.headroom}")
  return value, MEM_FRACTION_ENV


def export_memory_fraction(config: ml_collections.ConfigDict, environ=os.environ) -> float:
  """Sets XLA_PYTHON_CLIENT_MEM_FRACTION to plan.headroom unless the environment sets it;
  returns the fraction in force. Call before JAX creates its GPU client (it reads it then)."""
  fraction, source = memory_fraction(plan_options(config), environ)
  if source == "plan.headroom":
    environ[MEM_FRACTION_ENV] = f"{fraction:g}"
  return fraction


def usable_fraction(opts, platform: str) -> float:
  """The share of a device's memory a plan counts: on GPUs what XLA's allocator is given
  (memory_fraction), elsewhere plan.headroom."""
  return memory_fraction(opts)[0] if platform == "gpu" else float(opts.headroom)
