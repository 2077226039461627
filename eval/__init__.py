"""Scoring models on tasks (imports olmo_jax)."""
