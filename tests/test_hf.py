"""HF conversion: our logits equal transformers' on the same weights, both directions."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_fixtures as fx  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from data_pipeline import tokenizer as tokenizer_lib  # noqa: E402
from data_pipeline.tokenizer import load_tokenizer  # noqa: E402
from olmo_jax import hf, hf_import, sizes  # noqa: E402
from olmo_jax import params as params_lib  # noqa: E402
from olmo_jax.model import VARIANTS  # noqa: E402

HF_CLASS = {v: arch for v, (arch, _) in hf.HF_ARCHITECTURES.items()}


def load_hf(directory: str):
  return transformers.AutoModelForCausalLM.from_pretrained(
      directory, attn_implementation="eager", dtype=torch.float32).eval()


def flatten(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
  """{'blocks.wq': array, ...} of a nested param dict."""
  out = {}
  for key, value in params.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = np.asarray(value)
  return out


def export_random(variant: str, tmp_path_factory):
  """(cfg, params, directory) of a random tiny model of `variant`, exported."""
  cfg = fx.tiny_config(variant)
  params = fx.random_params(cfg)
  directory = str(tmp_path_factory.mktemp(f"export_{variant}"))
  hf.export_hf(cfg, params, directory)
  return cfg, params, directory


@pytest.fixture(scope="module", params=VARIANTS)
def exported(request, tmp_path_factory):
  return export_random(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def ladder_exported(tmp_path_factory):
  return export_random("ladder", tmp_path_factory)


# ----------------------------------------------------------------------------------------
# Export: our random init -> export -> transformers


def test_export_loads_as_the_hf_class_with_equal_logits(exported):
  cfg, params, directory = exported
  model = load_hf(directory)
  assert type(model).__name__ == HF_CLASS[cfg.variant]
  c = model.config
  assert (c.vocab_size, c.hidden_size, c.intermediate_size) == (50304, 64, 4 * 64)
  assert c.tie_word_embeddings is False
  assert c.rope_parameters["rope_theta"] == cfg.theta
  assert c.max_position_embeddings == fx.LONG_LEN
  if cfg.variant == "olmo1":
    assert c.clip_qkv == fx.CLIP_QKV
  else:
    assert c.rms_norm_eps == cfg.eps
  assert not any(name.endswith("bias") for name, _ in model.named_parameters())
  diff = fx.max_diff(model, cfg, params)
  print(f"export {cfg.variant}: max |logit diff| = {diff:.3g}")
  assert diff < fx.TOL


def test_export_writes_a_tokenizer_transformers_loads_offline(exported):
  _, _, directory = exported
  tok = transformers.AutoTokenizer.from_pretrained(directory)
  ours = load_tokenizer()
  for text in fx.SENTENCES:
    assert tok(text).input_ids == ours.encode(text).ids
  assert (tok.eos_token, tok.eos_token_id) == ("<|endoftext|>", tokenizer_lib.EOS_TOKEN_ID)
  assert tok.pad_token_id == tokenizer_lib.PAD_TOKEN_ID
  gen = transformers.GenerationConfig.from_pretrained(directory)
  assert (gen.eos_token_id, gen.pad_token_id) == (tokenizer_lib.EOS_TOKEN_ID,
                                                  tokenizer_lib.PAD_TOKEN_ID)


def test_export_then_import_returns_the_same_config_and_bytes(exported):
  cfg, params, directory = exported
  cfg2, params2 = hf_import.import_hf(directory)
  assert cfg2 == cfg
  a, b = flatten(params), flatten(params2)
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_bfloat16_export_loads_and_rounds_each_weight(ladder_exported, tmp_path):
  import ml_dtypes
  cfg, params, _ = ladder_exported
  hf.export_hf(cfg, params, str(tmp_path), dtype="bfloat16", tokenizer=None)
  assert json.load(open(tmp_path / "config.json"))["dtype"] == "bfloat16"
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
  assert model.lm_head.weight.dtype == torch.bfloat16
  _, params2 = hf_import.import_hf(str(tmp_path))
  rounded = params["blocks"]["w_up"].astype(ml_dtypes.bfloat16).astype(np.float32)
  np.testing.assert_array_equal(params2["blocks"]["w_up"], rounded)


def test_sharded_export_loads_in_transformers_and_imports(ladder_exported, tmp_path):
  cfg, params, _ = ladder_exported
  # Shards of at most 4 MiB: the 12.9 MB embedding and head each get their own.
  hf.export_hf(cfg, params, str(tmp_path), tokenizer=None, max_shard_bytes=4 * 2**20)
  index = json.load(open(tmp_path / "model.safetensors.index.json"))
  assert len(set(index["weight_map"].values())) >= 3
  assert not (tmp_path / "model.safetensors").exists()
  model = load_hf(str(tmp_path))
  short, _ = fx.token_batches()
  np.testing.assert_allclose(fx.hf_logits(model, short), fx.our_logits(cfg, params, short),
                             atol=fx.TOL, rtol=0)
  _, params2 = hf_import.import_hf(str(tmp_path))
  np.testing.assert_array_equal(params2["lm_head"], params["lm_head"])
  # Exporting again into the same directory leaves no stale shard behind.
  hf.export_hf(cfg, params, str(tmp_path), tokenizer=None)
  assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]


# ----------------------------------------------------------------------------------------
# Import: transformers random init -> save_pretrained -> import_hf -> our forward


@pytest.fixture(scope="module", params=VARIANTS)
def hf_saved(request, tmp_path_factory):
  """(variant, HF model, directory written by save_pretrained)."""
  model = fx.hf_random_model(request.param)
  directory = str(tmp_path_factory.mktemp(f"hf_{request.param}"))
  model.save_pretrained(directory)
  # The tokenizer tells import the real vocabulary (50280) behind the 50304 embedding rows.
  hf.write_tokenizer_files(directory)
  return request.param, model, directory


def test_import_of_a_transformers_model_gives_equal_logits(hf_saved):
  variant, model, directory = hf_saved
  cfg, params = hf_import.import_hf(directory)
  assert cfg.variant == variant
  assert cfg.theta == (500_000.0 if variant == "olmo2" else 10_000.0)
  assert cfg.eps == {"ladder": 1e-6, "olmo1": 1e-5, "olmo2": 1e-5}[variant]
  assert cfg.clip_qkv == (fx.CLIP_QKV if variant == "olmo1" else 0.0)
  assert (cfg.vocab_size, cfg.embedding_size) == (tokenizer_lib.VOCAB_SIZE, sizes.EMBEDDING_SIZE)
  diff = fx.max_diff(model, cfg, params)
  print(f"import {variant}: max |logit diff| = {diff:.3g}")
  assert diff < fx.TOL


def test_import_reads_pytorch_model_bin(hf_saved, tmp_path):
  variant, model, directory = hf_saved
  shutil.copy(os.path.join(directory, "config.json"), tmp_path)
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  _, from_bin = hf_import.import_hf(str(tmp_path))
  _, from_safetensors = hf_import.import_hf(directory)
  for name in ("wq", "w_gate", "w_down"):
    np.testing.assert_array_equal(from_bin["blocks"][name], from_safetensors["blocks"][name])
  np.testing.assert_array_equal(from_bin["lm_head"], from_safetensors["lm_head"])


def test_import_of_tied_embeddings_uses_the_embedding_as_head(tmp_path):
  model = fx.hf_random_model("ladder", tie_word_embeddings=True)
  model.save_pretrained(str(tmp_path))
  hf.write_tokenizer_files(str(tmp_path))
  cfg, params = hf_import.import_hf(str(tmp_path))
  np.testing.assert_array_equal(params["lm_head"], params["embed"].T)
  assert fx.max_diff(model, cfg, params, long=False) < fx.TOL


# ----------------------------------------------------------------------------------------
# AllenAI hf_olmo layout (released DataDecide checkpoints)


def write_hf_olmo(model, variant: str, directory: str, swap_swiglu_halves: bool = False,
                  block_type: str = "sequential", weight_tying: bool = False):
  """Writes `model`'s weights in hf_olmo layout: fused qkv, fused [up; gate] ff_proj.

  block_type 'llama' keeps q/k/v separate; weight_tying drops the head (wte serves).
  """
  sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  c = model.config
  n, d = c.num_hidden_layers, c.hidden_size
  out = {"model.transformer.wte.weight": sd["model.embed_tokens.weight"]}
  if not weight_tying:
    out["model.transformer.ff_out.weight"] = sd["lm_head.weight"]
  if variant != "olmo1":
    out["model.transformer.ln_f.weight"] = sd["model.norm.weight"]
  for i in range(n):
    hfp, b = f"model.layers.{i}.", f"model.transformer.blocks.{i}."
    up, gate = sd[hfp + "mlp.up_proj.weight"], sd[hfp + "mlp.gate_proj.weight"]
    halves = [gate, up] if swap_swiglu_halves else [up, gate]
    if block_type == "sequential":
      out[b + "att_proj.weight"] = np.concatenate(
          [sd[hfp + f"self_attn.{p}_proj.weight"] for p in "qkv"], axis=0)
    else:
      out.update({b + f"{p}_proj.weight": sd[hfp + f"self_attn.{p}_proj.weight"] for p in "qkv"})
    out[b + "attn_out.weight"] = sd[hfp + "self_attn.o_proj.weight"]
    out[b + "ff_proj.weight"] = np.concatenate(halves, axis=0)
    out[b + "ff_out.weight"] = sd[hfp + "mlp.down_proj.weight"]
    if variant == "ladder":
      out[b + "attn_norm.weight"] = sd[hfp + "input_layernorm.weight"]
      out[b + "ff_norm.weight"] = sd[hfp + "post_attention_layernorm.weight"]
    elif variant == "olmo2":
      out[b + "q_norm.weight"] = sd[hfp + "self_attn.q_norm.weight"]
      out[b + "k_norm.weight"] = sd[hfp + "self_attn.k_norm.weight"]
      out[b + "attn_norm.weight"] = sd[hfp + "post_attention_layernorm.weight"]
      out[b + "ff_norm.weight"] = sd[hfp + "post_feedforward_layernorm.weight"]
  os.makedirs(directory, exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in out.items()},
            os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  config = {
      "model_type": "hf_olmo", "architectures": ["OLMoForCausalLM"],
      "d_model": d, "n_heads": c.num_attention_heads, "n_layers": n, "mlp_ratio": 8,
      "mlp_hidden_size": None, "activation_type": "swiglu", "block_type": block_type,
      "rope": True, "alibi": False, "rope_theta": c.rope_parameters["rope_theta"],
      "vocab_size": tokenizer_lib.VOCAB_SIZE, "embedding_size": c.vocab_size,
      "max_sequence_length": c.max_position_embeddings, "weight_tying": weight_tying,
      "include_bias": False, "bias_for_layer_norm": False, "clip_qkv": None,
      "layer_norm_type": "rms", "layer_norm_with_affine": True, "layer_norm_eps": 1e-6,
      "attention_layer_norm": False, "norm_after": False, "multi_query_attention": False,
      "n_kv_heads": None, "scale_logits": False, "eos_token_id": tokenizer_lib.EOS_TOKEN_ID,
      "pad_token_id": tokenizer_lib.PAD_TOKEN_ID, "init_std": c.initializer_range,
  }
  if variant == "olmo1":
    config.update(layer_norm_type="default", layer_norm_with_affine=False,
                  layer_norm_eps=1e-5, clip_qkv=c.clip_qkv)
  elif variant == "olmo2":
    config.update(attention_layer_norm=True, norm_after=True, layer_norm_eps=c.rms_norm_eps)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)


def test_hf_olmo_layout_imports_with_the_hf_models_logits(hf_saved, tmp_path):
  variant, model, _ = hf_saved
  write_hf_olmo(model, variant, str(tmp_path))
  cfg, params = hf_import.import_hf(str(tmp_path))
  assert cfg.variant == variant
  assert (cfg.vocab_size, cfg.embedding_size, cfg.hidden) == (50280, 50304, 256)
  diff = fx.max_diff(model, cfg, params)
  print(f"hf_olmo {variant}: max |logit diff| = {diff:.3g}")
  assert diff < fx.TOL


def test_hf_olmo_llama_blocks_and_tied_head_import_the_same_weights(tmp_path):
  model = fx.hf_random_model("ladder")
  write_hf_olmo(model, "ladder", str(tmp_path / "fused"))
  write_hf_olmo(model, "ladder", str(tmp_path / "llama"), block_type="llama", weight_tying=True)
  _, fused = hf_import.import_hf(str(tmp_path / "fused"))
  _, split = hf_import.import_hf(str(tmp_path / "llama" / "config.json"))  # a file inside works too
  for name in ("wq", "wk", "wv", "w_up", "w_gate"):
    np.testing.assert_array_equal(split["blocks"][name], fused["blocks"][name])
  np.testing.assert_array_equal(split["lm_head"], fused["embed"].T)


# ----------------------------------------------------------------------------------------
# The comparison pins the SwiGLU halves and the RoPE convention


def test_swapped_swiglu_halves_are_detected_in_export(ladder_exported, tmp_path, monkeypatch):
  cfg, params, _ = ladder_exported
  ladder = params_lib.VARIANTS["ladder"]
  up, gate = ladder["blocks.w_up"], ladder["blocks.w_gate"]
  swap = {up.name: dataclasses.replace(up, hf=gate.hf),
          gate.name: dataclasses.replace(gate, hf=up.hf)}
  swapped = dataclasses.replace(ladder, params=tuple(swap.get(p.name, p) for p in ladder.params))
  monkeypatch.setitem(params_lib.VARIANTS, "ladder", swapped)
  hf.export_hf(cfg, params, str(tmp_path), tokenizer=None)
  diff = fx.max_diff(load_hf(str(tmp_path)), cfg, params, long=False)
  assert diff > 100 * fx.TOL, diff


def test_swapped_hf_olmo_halves_are_detected_in_import(tmp_path):
  model = fx.hf_random_model("ladder")
  write_hf_olmo(model, "ladder", str(tmp_path), swap_swiglu_halves=True)
  cfg, params = hf_import.import_hf(str(tmp_path))
  assert fx.max_diff(model, cfg, params, long=False) > 100 * fx.TOL


def interleave_rope_columns(w_NxDxD: np.ndarray, n_heads: int) -> np.ndarray:
  """Reorders each head's output columns from split-half to pairwise (interleaved) order."""
  n, d, _ = w_NxDxD.shape
  k = d // n_heads
  w = w_NxDxD.reshape(n, d, n_heads, 2, k // 2)  # [.., head, half, i]
  return np.swapaxes(w, 3, 4).reshape(n, d, d)  # [.., head, i, half]: x1_0, x2_0, x1_1, ...


def test_interleaved_rope_layout_is_detected(ladder_exported, tmp_path):
  cfg, params, _ = ladder_exported
  wrong = dict(params, blocks=dict(params["blocks"]))
  for name in ("wq", "wk"):
    wrong["blocks"][name] = interleave_rope_columns(params["blocks"][name], cfg.n_heads)
  hf.export_hf(cfg, wrong, str(tmp_path), tokenizer=None)
  model = load_hf(str(tmp_path))
  # The same weights in both models agree; only the RoPE pairing convention differs.
  assert fx.max_diff(model, cfg, wrong, long=False) < fx.TOL
  assert fx.max_diff(model, cfg, params, long=False) > 100 * fx.TOL


# ----------------------------------------------------------------------------------------
# Errors a user can cause


def test_unknown_architecture_is_named(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(
      {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
  with pytest.raises(hf.ConversionError, match="GPT2LMHeadModel"):
    hf_import.import_hf(str(tmp_path))


def test_missing_tensor_is_named(ladder_exported, tmp_path):
  _, _, directory = ladder_exported
  shutil.copy(os.path.join(directory, "config.json"), tmp_path)
  tensors = load_file(os.path.join(directory, "model.safetensors"))
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(hf.ConversionError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
    hf_import.import_hf(str(tmp_path))


def test_shape_mismatch_and_extra_bias_are_named(ladder_exported, tmp_path):
  _, _, directory = ladder_exported
  shutil.copy(os.path.join(directory, "model.safetensors"), tmp_path)
  config = json.load(open(os.path.join(directory, "config.json")))
  (tmp_path / "config.json").write_text(json.dumps(dict(config, intermediate_size=128)))
  with pytest.raises(hf.ConversionError, match=r"mlp\.up_proj\.weight.*\[256, 64\].*\[128, 64\]"):
    hf_import.import_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(config))
  tensors = load_file(os.path.join(directory, "model.safetensors"))
  tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(hf.ConversionError, match=r"q_proj\.bias"):
    hf_import.import_hf(str(tmp_path))


def test_missing_weights_and_unsupported_configs_are_named(tmp_path):
  with pytest.raises(hf.ConversionError, match="does not exist"):
    hf_import.import_hf(str(tmp_path / "nowhere"))
  config = hf.hf_config_dict(fx.tiny_config("ladder"))
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(hf.ConversionError, match="no weights in"):
    hf_import.import_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(dict(config, num_key_value_heads=2)))
  with pytest.raises(hf.ConversionError, match="num_key_value_heads"):
    hf_import.import_hf(str(tmp_path))
  with pytest.raises(hf.ConversionError, match="clip_qkv"):
    hf.hf_config_dict(fx.tiny_config("ladder", clip_qkv=1.0))
  hf_olmo = {"model_type": "hf_olmo", "d_model": 64, "n_heads": 4, "n_layers": 2,
             "layer_norm_type": "rms", "layer_norm_with_affine": True, "alibi": True}
  (tmp_path / "config.json").write_text(json.dumps(hf_olmo))
  with pytest.raises(hf.ConversionError, match="alibi"):
    hf_import.import_hf(str(tmp_path))


def test_export_rejects_params_of_another_shape(tmp_path):
  cfg = fx.tiny_config("olmo2")
  params = fx.random_params(fx.tiny_config("ladder"))
  with pytest.raises(hf.ConversionError, match="q_norm"):
    hf.export_hf(cfg, params, str(tmp_path))
  assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_2048_token_sequence_of_real_text_matches(variant, tmp_path):
  """The ladder's real sequence length: one padding-free 2048-token row of OLMo-tokenized text."""
  cfg = fx.tiny_config(variant, max_seq_len=sizes.SEQ_LEN)
  params = fx.random_params(cfg)
  hf.export_hf(cfg, params, str(tmp_path))
  model = load_hf(str(tmp_path))
  tok = load_tokenizer()
  stream = [t for s in fx.SENTENCES for t in tok.encode(s).ids + [tokenizer_lib.EOS_TOKEN_ID]]
  ids = np.resize(np.array(stream, np.int32), (1, sizes.SEQ_LEN))
  diff = float(np.abs(fx.hf_logits(model, ids) - fx.our_logits(cfg, params, ids)).max())
  print(f"{variant} at 2048 tokens: max |logit diff| = {diff:.3g}")
  assert diff < fx.TOL
