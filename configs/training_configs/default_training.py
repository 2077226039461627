"""The DataDecide training recipe. -1 means "from the ladder formulas for model.size"."""

import ml_collections

from olmo_jax import sizes


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.steps = -1  # optimizer steps; -1: the published final step of the size
  c.batch_size = -1  # global batch in sequences; -1: round(160 (N/108e6)^(2/3) / 32) * 32
  c.microbatch_size = -1  # sequences per forward/backward; < batch_size accumulates gradients
  c.seq_len = sizes.SEQ_LEN
  c.lr = -1.0  # peak lr; -1: 0.0047 (N/108e6)^(-1/3)
  c.warmup_steps = -1  # -1: round(N / tokens per step)
  c.min_lr_ratio = 0.01  # cosine ends at this fraction of the peak at train.steps
  c.b1 = 0.9
  c.b2 = 0.95
  c.eps = 1e-8
  c.weight_decay = 0.05
  c.weight_decay_mask = "all"  # all | no_norms | no_norms_no_embeddings
  c.grad_clip = 1.0  # global norm; 0 disables
  c.z_loss = 0.0
  c.loss_impl = "fused"  # fused: head + softmax CE over token chunks, no [B, L, V] logits | dense
  c.loss_chunk_tokens = 0  # tokens per chunk of the fused loss; 0: 256 on CPU, 4096 elsewhere
  c.seed = sizes.DEFAULT_SEED
  c.log_every = 10
  c.nan_policy = "stop"  # stop: raise and keep the last good checkpoint | skip: skip the update
  c.loss_scale = 32768.0  # initial dynamic loss scale, used only with model.dtype=float16
  c.peak_flops_per_device = 0.0  # for MFU; 0: looked up from the device kind
  c.progress_bar = True
  return c
