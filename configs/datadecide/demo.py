"""`make datadecide-demo`: a small real study on the embedded corpus (CPU, minutes).

Three recipes of known quality built from the embedded corpus (olmo_jax/datadecide/synthetic.py):
clean text, and the same text with 15% or 40% of its tokens replaced by random ones. Token ids
are re-coded into a 1,024-id vocabulary so the models stay small. Two proxy sizes and a target
size (tiny custom shapes), two seeds each, budgets scaled down. Scores: held-out loss and
next-token accuracy on clean documents never trained on.

  python -m olmo_jax.datadecide --config configs/datadecide/demo.py --workdir runs/datadecide-demo
"""

import ml_collections

NOISE = {"clean": 0.0, "noisy15": 0.15, "noisy40": 0.40}
VOCAB = 1024


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "demo"
  c.data_dir = "data"
  c.synthetic_noise_levels = sorted(NOISE.values())
  c.synthetic_vocab = VOCAB
  c.recipes = ml_collections.ConfigDict({
      name: {"mixture": "custom",
             "sources": f"text=dd_synthetic_v{VOCAB}/noise{round(p * 100)}/*.npy"}
      for name, p in NOISE.items()})
  c.custom_sizes = ml_collections.ConfigDict({
      "xs": {"d_model": 32, "n_heads": 2, "n_layers": 2},
      "s": {"d_model": 64, "n_heads": 4, "n_layers": 2},
      "m": {"d_model": 96, "n_heads": 4, "n_layers": 4},
  })
  c.sizes = ["xs", "s", "m"]
  c.target = "m"
  c.seeds = [1, 2]
  c.seq_len = 64
  c.batch_size = 16
  c.steps = ml_collections.ConfigDict({"xs": 100, "s": 150, "m": 200})
  c.checkpoints_per_run = 5
  c.warmup_fraction = 0.1
  c.overrides = ml_collections.ConfigDict({"train": {"lr": 0.004, "log_every": 25}})
  c.eval = ml_collections.ConfigDict({"scorer": "heldout",
                                      "heldout": f"dd_synthetic_v{VOCAB}/heldout/*.npy",
                                      "heldout_windows": 128,
                                      "headline": "heldout/loss"})
  return c
