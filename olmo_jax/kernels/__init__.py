"""Platform-specific implementations of model parts (cpu.py), chosen once per config.

The platform they are chosen for is read in one place, `olmo_jax.runtime.resolve_platform`.
"""

from __future__ import annotations

PLATFORMS = ("auto", "cpu", "gpu", "tpu")
