"""The ladder's published numbers: parameter counts, compute, batch, LR, warmup."""

import math

import pytest
from flax import nnx

from olmo_jax import model as M
from olmo_jax import sizes

PUBLISHED_COMPUTE = {
    "4M": 8430221996851200, "20M": 219085747985055744, "60M": 1955459382959407104,
    "90M": 5758063377068851200, "150M": 13674492743500431360,
    "300M": 57609876280946196480, "530M": 168623898622339055616,
    "750M": 306635489591276077056, "1B": 706209840434774016000,
}


@pytest.mark.parametrize("name", list(sizes.LADDER))
def test_model_param_count_equals_published_n(name):
  s = sizes.LADDER[name]
  cfg = M.ModelConfig(d_model=s.d_model, n_heads=s.n_heads, n_layers=s.n_layers)
  abstract = nnx.eval_shape(lambda: M.OLMo(cfg, rngs=nnx.Rngs(0)))  # no memory for 1B
  params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  assert M.count_params(params, exclude_input_embedding=True) == s.published_params
  assert sizes.non_embedding_params(s.d_model, s.n_layers) == s.published_params


@pytest.mark.parametrize("name", list(PUBLISHED_COMPUTE))
def test_compute_equals_published_exactly(name):
  assert sizes.published_compute(name) == PUBLISHED_COMPUTE[name]


@pytest.mark.parametrize("name", list(sizes.LADDER))
def test_batch_formula_reproduces_table(name):
  s = sizes.LADDER[name]
  assert sizes.batch_size_formula(s.formula_params) == s.batch_seqs
  assert s.tokens_per_step == s.batch_seqs * 2048


def test_lr_and_warmup_formulas():
  one_b = sizes.LADDER["1B"]
  assert sizes.peak_lr_formula(one_b.formula_params) == pytest.approx(2.238e-3, rel=1e-3)
  four_m = sizes.LADDER["4M"]
  # about N tokens of warmup
  w = sizes.warmup_steps_formula(four_m.formula_params, four_m.batch_seqs)
  assert w == round(3_744_832 / 65_536) == 57
  for s in sizes.LADDER.values():
    w = sizes.warmup_steps_formula(s.formula_params, s.batch_seqs)
    assert abs(w * s.tokens_per_step - s.formula_params) <= s.tokens_per_step / 2


def test_length_formula_is_about_100_tokens_per_param():
  s = sizes.LADDER["20M"]
  steps = sizes.length_steps_formula(s.published_params, s.batch_seqs)
  assert steps == math.ceil(100 * s.published_params / s.tokens_per_step)
  assert abs(steps - s.final_step) / s.final_step < 0.01


def test_unknown_size_names_the_field():
  with pytest.raises(ValueError, match="model.size='3M'"):
    sizes.get_size("3M")
