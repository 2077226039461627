"""Scoring models on tasks (imports olmo_jax)."""

import olmo_jax  # noqa: F401  (first: on a host without accelerators it picks the CPU for JAX)
