"""The per-variant parameter tables: a new variant or MLP width through the table alone."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from conftest import REPO, TRAIN_CONFIG
from flax import nnx

from olmo_jax import checkpoint, hf, hf_import, optim, sizes
from olmo_jax import config as config_lib
from olmo_jax import model as M
from olmo_jax import params as params_lib

SMALL = dict(d_model=32, n_heads=4, n_layers=2, embedding_size=256, vocab_size=250,
             max_seq_len=64)


def _init(cfg):
  return nnx.to_pure_dict(nnx.state(M.OLMo(cfg, rngs=nnx.Rngs(0)), nnx.Param))


@pytest.mark.parametrize("variant", M.VARIANTS)
def test_model_params_and_axes_are_the_tables(variant):
  cfg = M.ModelConfig(variant=variant, mlp_hidden=48, **SMALL)
  model = nnx.eval_shape(lambda: M.OLMo(cfg, rngs=nnx.Rngs(0)))
  shapes = jax.tree.map(lambda x: tuple(x.shape), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  assert shapes == params_lib.shapes(variant, params_lib.Dims.of(cfg))
  assert M.param_axes(model) == params_lib.axes(variant)
  assert shapes["blocks"]["w_up"] == (2, 32, 48) and shapes["blocks"]["w_down"] == (2, 48, 32)


@pytest.mark.parametrize("variant", M.VARIANTS)
def test_param_count_follows_mlp_hidden(variant):
  for hidden in (0, 48):
    cfg = M.ModelConfig(variant=variant, mlp_hidden=hidden, **SMALL)
    n = M.count_params(_init(cfg), exclude_input_embedding=True)
    assert n == sizes.non_embedding_params(32, 2, variant, 256, hidden)
  # The default width is 4 * d_model: the published ladder count (see test_sizes).
  assert (sizes.non_embedding_params(64, 8, "ladder", mlp_hidden=256)
          == sizes.non_embedding_params(64, 8) == 3_744_832)


@pytest.mark.parametrize("mode", list(optim.WEIGHT_DECAY_MASKS))
def test_weight_decay_mask_matches_the_parameter_kinds(mode):
  for variant in M.VARIANTS:
    params = _init(M.ModelConfig(variant=variant, **SMALL))
    mask = optim.weight_decay_mask(params, mode)
    for path, decayed in jax.tree_util.tree_leaves_with_path(mask):
      name = path[-1].key
      is_norm, is_embed = name.endswith("norm"), name == "embed"
      want = (mode == "all" or not is_norm) and not (mode == "no_norms_no_embeddings"
                                                     and is_embed)
      assert decayed == want, (variant, mode, name)


def test_model_config_subtree_is_derived_from_the_dataclass():
  c = config_lib.load_config_file(TRAIN_CONFIG, "4M")
  fields = [f.name for f in dataclasses.fields(M.ModelConfig)]
  assert sorted(c.model.keys()) == sorted(fields + ["size"])
  c.model.update(dict(size="custom", d_model=64, n_heads=4, n_layers=2, mlp_hidden=96))
  c.train.batch_size = 4
  r = config_lib.resolve(c)
  mcfg = config_lib.model_config(r)
  assert (mcfg.hidden, mcfg.d_model) == (96, 64)
  assert r.derived.non_embedding_params == sizes.non_embedding_params(64, 2, mlp_hidden=96)
  # A config saved before a field existed still reads (the field keeps its default).
  saved = ml_collections.ConfigDict(r.to_dict())
  del saved.model["mlp_hidden"]
  assert config_lib.model_config(saved).hidden == 256


def test_unknown_variant_names_the_field():
  with pytest.raises(ValueError, match="model.variant='olmo3'"):
    M.ModelConfig(variant="olmo3").validate()
  with pytest.raises(ValueError, match="model.mlp_hidden"):
    M.ModelConfig(mlp_hidden=-1).validate()


# ----------------------------------------------------------------------------------------
# A fourth variant defined by a table alone, with an MLP width other than 4 * d_model


pytest.importorskip("transformers")


def _toy_extra(cfg) -> dict:
  return {"head_dim": cfg.head_dim, "sliding_window": None}


# The ladder's weights under another HF architecture (Mistral holds the same tensors).
TOY = dataclasses.replace(params_lib.LADDER, name="toy", hf_architecture="MistralForCausalLM",
                          hf_model_type="mistral", hf_extra=_toy_extra, has_hf_olmo=False)


@pytest.fixture
def toy_variant(monkeypatch):
  monkeypatch.setitem(params_lib.VARIANTS, "toy", TOY)
  return TOY


def test_toy_fourth_variant_round_trips_through_hf_with_equal_logits(toy_variant, tmp_path):
  import hf_fixtures as fx
  import transformers

  cfg = fx.tiny_config("toy", mlp_hidden=96)
  params = fx.random_params(cfg)
  hf.export_hf(cfg, params, str(tmp_path))
  config = json.load(open(tmp_path / "config.json"))
  assert (config["architectures"], config["intermediate_size"]) == (["MistralForCausalLM"], 96)
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  assert type(model).__name__ == "MistralForCausalLM"
  assert fx.max_diff(model, cfg, params, long=False) < fx.TOL
  cfg2, params2 = hf_import.import_hf(str(tmp_path))
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  short, _ = fx.token_batches()
  np.testing.assert_array_equal(fx.our_logits(cfg2, params2, short),
                                fx.our_logits(cfg, params, short))


# ----------------------------------------------------------------------------------------
# scripts/convert_from_hf.py on a Llama model whose MLP is not 4 x d_model


def test_convert_from_hf_cli_imports_a_llama_with_another_mlp_width(tmp_path):
  import hf_fixtures as fx

  model = fx.hf_random_model("ladder", intermediate_size=96)
  hf_dir = str(tmp_path / "llama")
  model.save_pretrained(hf_dir)
  hf.write_tokenizer_files(hf_dir)
  out = str(tmp_path / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "scripts/convert_from_hf.py", "--hf", hf_dir,
                         "--output", out], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "--config.model.size=custom" in proc.stdout
  assert "--config.model.mlp_hidden=96" in proc.stdout
  params, meta = checkpoint.restore_params(out)
  mcfg = config_lib.model_config(ml_collections.ConfigDict(meta["config"]))
  assert (mcfg.d_model, mcfg.hidden) == (64, 96)
  assert params["blocks"]["w_up"].shape == (2, 64, 96)
  assert fx.max_diff(model, mcfg, params, long=False) < fx.TOL


def test_resolve_fixes_the_platform_and_its_default_dtype():
  c = config_lib.load_config_file(TRAIN_CONFIG, "4M")
  assert (c.model.platform, c.model.dtype) == ("auto", "auto")
  r = config_lib.resolve(c)
  assert (r.model.platform, r.model.dtype) == (jax.devices()[0].platform, "float32")
  c.model.platform = "gpu"  # planning for a GPU on this host: its default dtype
  r = config_lib.resolve(c)
  assert (r.model.platform, r.model.dtype) == ("gpu", "bfloat16")
  assert not config_lib.model_config(r).on_cpu
