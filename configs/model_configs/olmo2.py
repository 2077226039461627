"""OLMo 2 architecture (post-branch RMSNorm, QK-norm, RoPE 500k) at a ladder size."""

from olmo_jax.config import load_sibling


def get_config(size: str = "4M"):
  c = load_sibling(__file__, "ladder.py", size)
  c.variant = "olmo2"
  return c
