"""OLMo 1 architecture (weightless LayerNorm, optional clip_qkv) at a ladder size."""

from olmo_jax.config import load_sibling


def get_config(size: str = "4M"):
  c = load_sibling(__file__, "ladder.py", size)
  c.variant = "olmo1"
  return c
