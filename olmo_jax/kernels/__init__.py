"""Platform-specific implementations of model parts (cpu.py), chosen once per config."""

from __future__ import annotations

from olmo_jax import runtime

PLATFORMS = ("auto", "cpu", "gpu", "tpu")


def resolve_platform(platform: str = "auto") -> str:
  """The kernels' platform: runtime.resolve_platform (the one place the platform is read)."""
  return runtime.resolve_platform(platform)
