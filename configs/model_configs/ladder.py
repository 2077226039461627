"""Model config of a DataDecide ladder size: `--config configs/train.py:150M` picks it.

Shapes come from olmo_jax/sizes.py (the published table); 0 means "from model.size".
"""

import ml_collections


def get_config(size: str = "4M") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.size = size  # '4M' ... '1B', or 'custom' with d_model/n_heads/n_layers set
  c.variant = "ladder"  # ladder | olmo1 | olmo2
  c.d_model = 0
  c.n_heads = 0
  c.n_layers = 0
  c.vocab_size = 50280
  c.embedding_size = 50304
  c.max_seq_len = 2048  # RoPE table length; train.seq_len may not exceed it
  c.rope_theta = 0.0  # 0: 10,000 (ladder, OLMo 1) or 500,000 (OLMo 2)
  c.norm_eps = 0.0  # 0: 1e-6 RMSNorm, 1e-5 OLMo 1 LayerNorm
  c.clip_qkv = 0.0  # OLMo 1 option; 0 disables
  c.init_std = 0.02  # truncated normal at +-3 std
  c.dtype = "auto"  # auto (bfloat16 on GPU/TPU, float32 on CPU) | float32 | bfloat16 | float16
  c.remat = "none"  # none | dots_saveable | dots_with_no_batch_dims_saveable | save_qkv_proj | full
  c.attention = "auto"  # auto | xla | cudnn
  c.scan_layers = True
  return c
