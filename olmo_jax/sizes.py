"""The DataDecide model ladder: shapes, hyperparameter formulas, parameter and FLOP counts.

Every number here is a published DataDecide fact or the formula that reproduces it.
Pure Python (no JAX) so configs and tools can import it cheaply.
"""

from __future__ import annotations

import dataclasses
import math

from olmo_jax import params as params_lib

SEQ_LEN = 2048
EMBEDDING_SIZE = 50304  # vocabulary padded to a multiple of 128
DEFAULT_SEED = 6198


@dataclasses.dataclass(frozen=True)
class LadderSize:
  """One rung of the ladder as published."""

  name: str
  d_model: int
  n_heads: int
  n_layers: int
  batch_seqs: int  # published global batch in sequences of SEQ_LEN
  final_step: int  # published length of the run, in optimizer steps
  published_params: int  # N: all parameters except the input embedding
  # N plugged into the batch / LR formulas: the exact count for 4M-90M, the nominal
  # size for 150M-1B (that is what reproduces the published batch column).
  formula_params: float

  @property
  def tokens_per_step(self) -> int:
    return self.batch_seqs * SEQ_LEN

  @property
  def checkpoint_every(self) -> int:
    return checkpoint_every(self.name)



def checkpoint_every(size: str | None) -> int:
  """Steps between DataDecide's saved checkpoints: 2500 for 1B, 1250 for every other size
  (and for a model off the ladder)."""
  return 2500 if size == "1B" else 1250


def _row(name, d, h, l, b, steps, n, nominal=None):
  return LadderSize(name, d, h, l, b, steps, n, float(nominal if nominal else n))


LADDER: dict[str, LadderSize] = {
    s.name: s
    for s in [
        _row("4M", 64, 8, 8, 32, 5_725, 3_744_832),
        _row("6M", 96, 8, 8, 32, 9_182, 6_010_464),
        _row("8M", 128, 8, 8, 32, 13_039, 8_538_240),
        _row("10M", 144, 8, 8, 32, 15_117, 9_900_432),
        _row("14M", 192, 8, 8, 32, 21_953, 14_380_224),
        _row("16M", 208, 8, 8, 32, 24_432, 16_004_560),
        _row("20M", 192, 8, 16, 64, 14_584, 19_101_888),
        _row("60M", 384, 12, 16, 96, 29_042, 57_078_144),
        _row("90M", 528, 12, 16, 160, 29_901, 97_946_640),
        _row("150M", 768, 12, 12, 192, 38_157, 151_898_880, 150e6),
        _row("300M", 1024, 16, 16, 320, 45_787, 319_980_544, 300e6),
        _row("530M", 1344, 16, 16, 448, 57_786, 530_074_944, 530e6),
        _row("750M", 1536, 16, 16, 576, 63_589, 681_297_408, 750e6),
        _row("1B", 2048, 16, 16, 704, 69_369, 1_176_832_000, 1e9),
    ]
}


def get_size(name: str) -> LadderSize:
  """Looks up a ladder size by name ('4M' ... '1B'), with a clear error."""
  if name not in LADDER:
    raise ValueError(
        f"model.size={name!r} is not a DataDecide ladder size; choose one of "
        f"{', '.join(LADDER)}")
  return LADDER[name]


def non_embedding_params(d_model: int, n_layers: int, variant: str = "ladder",
                         embedding_size: int = EMBEDDING_SIZE, mlp_hidden: int = 0) -> int:
  """N as DataDecide counts it: every parameter except the input embedding.

  Includes the untied output head and the norm weights of the variant (its table in
  params.py); mlp_hidden 0 is the default width 4 * d_model.
  """
  dims = params_lib.Dims(n_layers, d_model, params_lib.mlp_hidden(d_model, mlp_hidden),
                         embedding_size)
  return params_lib.count(variant, dims, exclude_input_embedding=True)


def batch_size_formula(n: float) -> int:
  """Global batch in sequences: round(160 * (N / 108e6)^(2/3) / 32) * 32."""
  return int(round(160.0 * (n / 108e6) ** (2.0 / 3.0) / 32.0)) * 32


def peak_lr_formula(n: float) -> float:
  """Peak learning rate: 0.0047 * (N / 108e6)^(-1/3)."""
  return 0.0047 * (n / 108e6) ** (-1.0 / 3.0)


def warmup_steps_formula(n: float, batch_seqs: int, seq_len: int = SEQ_LEN) -> int:
  """About N tokens of warmup: round(N / (batch * seq_len))."""
  return int(round(n / (batch_seqs * seq_len)))


def length_steps_formula(n: float, batch_seqs: int, seq_len: int = SEQ_LEN,
                         tokens_per_param: float = 100.0) -> int:
  """Run length at `tokens_per_param` tokens per parameter (DataDecide: 100, 5x Chinchilla)."""
  return int(math.ceil(tokens_per_param * n / (batch_seqs * seq_len)))


def training_flops(n: int, tokens: int) -> int:
  """Compute of a run in FLOPs: C = 6 * N * tokens (exact integer)."""
  return 6 * int(n) * int(tokens)


def published_compute(name: str) -> int:
  """6 * N * tokens for a ladder size trained to its published final step."""
  s = get_size(name)
  return training_flops(s.published_params, s.final_step * s.tokens_per_step)


def flops_per_token(d_model: int, n_layers: int, seq_len: int,
                    n_params: int, include_attention: bool = True) -> float:
  """Training FLOPs per token for MFU: 6N plus the causal attention score term.

  The attention term is 6 * n_layers * seq_len * d_model (12 * L * s * d halved for causal
  masking), as in the PaLM / MaxText accounting.
  """
  f = 6.0 * n_params
  if include_attention:
    f += 6.0 * n_layers * seq_len * d_model
  return f
