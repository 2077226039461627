"""`make datadecide-demo`: a small real study on the embedded corpus that can get it wrong (CPU).

Five recipes that differ subtly, built from the embedded corpus (olmo_jax/datadecide/synthetic.py):
clean text, and the same text with 1%, 2%, 3% or 4% of its tokens replaced by random ones. Token ids
are re-coded into a 1,024-id vocabulary so the models stay small. Two proxy sizes and a target
size (tiny custom shapes) trained at the same number of tokens per parameter, so the proxies
see the data the way the target does, only less of it; two seeds each. Scores: held-out loss
and next-token accuracy on clean documents never trained on. At the smallest size the recipes'
differences are within the seed noise, so the smallest proxy orders some pairs wrong; the larger
proxy fewer (docs/datadecide.md has the measured decision accuracies).

  python -m olmo_jax.datadecide --config configs/datadecide/demo.py --workdir runs/datadecide-demo
"""

import ml_collections

NOISE = {"clean": 0.0, "noisy1": 0.01, "noisy2": 0.02, "noisy3": 0.03, "noisy4": 0.04}
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
      "s": {"d_model": 48, "n_heads": 2, "n_layers": 2},
      "m": {"d_model": 64, "n_heads": 4, "n_layers": 2},
  })
  c.sizes = ["xs", "s", "m"]
  c.target = "m"
  c.seeds = [1, 2]
  # Steps follow from the budget: tokens_per_param x N / (batch x seq_len) for every size.
  c.tokens_per_param = 5.0
  c.seq_len = 64
  c.batch_size = 32
  c.checkpoints_per_run = 5
  c.warmup_fraction = 0.1
  c.overrides = ml_collections.ConfigDict({"train": {"lr": 0.004, "log_every": 25}})
  c.eval = ml_collections.ConfigDict({"scorer": "heldout",
                                      "heldout": f"dd_synthetic_v{VOCAB}/heldout/*.npy",
                                      "heldout_windows": 128,
                                      "headline": "heldout/loss"})
  return c
