"""Platform-specific implementations of model parts (cpu.py), chosen once per config."""

from __future__ import annotations

PLATFORMS = ("auto", "cpu", "gpu", "tpu")


def resolve_platform(platform: str = "auto") -> str:
  """'auto': the platform of the devices in use (jax.devices()); any other name as given."""
  if platform != "auto":
    return platform
  import jax
  return jax.devices()[0].platform
