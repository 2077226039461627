"""Model facts not covered by the HF parity tests: remat/scan invariance, shapes, sharding."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from flax import nnx

from olmo_jax import loss as loss_lib
from olmo_jax import model as M
from olmo_jax import sharding
from olmo_jax.kernels import cpu as cpu_kernels

SMALL = dict(d_model=32, n_heads=4, n_layers=3, embedding_size=256, vocab_size=250,
             max_seq_len=64)


def _loss_and_grads(cfg, params, ids):
  def loss(p):
    return loss_lib.cross_entropy(M.forward(cfg, p, ids[:, :-1]), ids[:, 1:])[0]
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("variant,variations", [
    ("ladder", [dict(remat="full"), dict(remat="dots_saveable"), dict(remat="save_qkv_proj"),
                dict(scan_layers=False)]),
    ("olmo1", [dict(scan_layers=False, remat="full")]),
    ("olmo2", [dict(scan_layers=False, remat="dots_with_no_batch_dims_saveable")]),
])
def test_remat_policies_and_unrolled_layers_give_the_same_gradients(variant, variations):
  base = M.ModelConfig(variant=variant, **SMALL)
  params = nnx.to_pure_dict(nnx.state(M.OLMo(base, rngs=nnx.Rngs(0)), nnx.Param))
  ids = jnp.asarray(np.random.default_rng(1).integers(0, 250, (2, 17)), jnp.int32)
  ref_loss, ref_grads = _loss_and_grads(base, params, ids)
  for kw in variations:
    cfg = M.ModelConfig(variant=variant, **SMALL, **kw)
    loss, grads = _loss_and_grads(cfg, params, ids)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6), kw
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      # Different compiled programs (scanned vs unrolled, recomputed vs stored): float32
      # rounding differs at the 1e-7 level; a wrong gradient would be off by far more.
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(kw))


def test_init_is_truncated_normal_with_std_002():
  cfg = M.ModelConfig(d_model=64, n_heads=4, n_layers=2)
  params = nnx.to_pure_dict(nnx.state(M.OLMo(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  w = np.asarray(params["embed"])
  assert np.abs(w).max() <= 0.06 + 1e-7  # cut at 3 std
  assert np.abs(w).max() > 0.055  # ... and not at 2 std (jax's initializer default)
  # Truncating N(0, 0.02) at 3 std leaves std 0.02 * 0.9866.
  assert w.std() == pytest.approx(0.02 * 0.9866, rel=0.01)
  assert np.all(np.asarray(params["blocks"]["attn_norm"]) == 1.0)


def test_causal_logits_do_not_see_the_future():
  cfg = M.ModelConfig(**SMALL)
  params = nnx.to_pure_dict(nnx.state(M.OLMo(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  ids = jnp.asarray(np.random.default_rng(2).integers(0, 250, (1, 16)), jnp.int32)
  changed = ids.at[0, 10].set((ids[0, 10] + 1) % 250)
  a, b = M.forward(cfg, params, ids), M.forward(cfg, params, changed)
  np.testing.assert_array_equal(a[:, :10], b[:, :10])
  assert np.abs(np.asarray(a[:, 10:] - b[:, 10:])).max() > 1e-4


def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg = M.ModelConfig(**SMALL, dtype="bfloat16")
  params = nnx.to_pure_dict(nnx.state(M.OLMo(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = M.forward(cfg, params, jnp.zeros((1, 8), jnp.int32))
  assert logits.dtype == jnp.float32
  ref = M.forward(M.ModelConfig(**SMALL), params, jnp.zeros((1, 8), jnp.int32))
  np.testing.assert_allclose(logits, ref, atol=0.05)


def test_every_parameter_has_logical_axes_in_the_sharding_table():
  for variant in M.VARIANTS:
    model = nnx.eval_shape(lambda: M.OLMo(M.ModelConfig(variant=variant, **SMALL),
                                          rngs=nnx.Rngs(0)))
    axes = M.param_axes(model)
    shapes = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for a, s in zip(jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple)),
                    jax.tree.leaves(shapes)):
      assert len(a) == len(s.shape) and all(n in sharding.RULES for n in a)


def test_mesh_shape_errors_name_the_field():
  assert sharding.mesh_shape(1, -1, 2, 8) == (1, 4, 2)
  with pytest.raises(ValueError, match="mesh.data"):
    sharding.mesh_shape(0, -1, 1, 8)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.mesh_shape(3, -1, 1, 8)


FSDP_SCRIPT = textwrap.dedent("""
    import os, sys, json
    fsdp, tensor = (int(x) for x in sys.argv[2].split(","))
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={fsdp * tensor}"
    os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    import jax, numpy as np
    from olmo_jax.config import load_config_file
    from olmo_jax.train import run
    c = load_config_file(sys.argv[1], "4M")
    c.model.update(dict(size="custom", d_model=64, n_heads=4, n_layers=2))
    c.train.update(dict(steps=4, batch_size=8, microbatch_size=int(sys.argv[3]), seq_len=16,
                        warmup_steps=1, progress_bar=False, log_every=1))
    c.checkpoint.enabled = False
    c.mesh.update(dict(data=1, fsdp=fsdp, tensor=tensor))
    r = run(c, None, print_fn=lambda s: None)
    p = r.state["params"]
    assert len(p["blocks"]["wq"].sharding.device_set) == fsdp * tensor
    print(json.dumps({"losses": [l for _, l in r.history],
                      "embed": float(np.asarray(p["embed"]).sum())}))
    """)


def test_fsdp_and_tensor_parallel_training_matches_one_device(tmp_path):
  script = tmp_path / "fsdp.py"
  script.write_text(FSDP_SCRIPT)
  out = {}
  for mesh, micro in [("1,1", 8), ("8,1", 8), ("4,2", 4)]:
    proc = subprocess.run([sys.executable, str(script), f"{REPO}/configs/train.py", mesh,
                           str(micro)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out[mesh] = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
  for mesh in ("8,1", "4,2"):
    np.testing.assert_allclose(out[mesh]["losses"], out["1,1"]["losses"], rtol=2e-5)
    assert out[mesh]["embed"] == pytest.approx(out["1,1"]["embed"], rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("z_loss,chunk", [(0.0, 16), (1e-3, 24)])
def test_fused_chunked_loss_equals_dense_loss_and_gradients(z_loss, chunk):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  h = jax.random.normal(k1, (2, 24, 32))
  w = 0.5 * jax.random.normal(k2, (32, 256))
  y = jax.random.randint(k3, (2, 24), 0, 250)

  def dense(h, w):
    return loss_lib.cross_entropy(jnp.einsum("bld,dv->blv", h, w), y, z_loss)[0]

  def fused(h, w):
    return loss_lib.fused_head_loss(h, w, y, z_loss, chunk)[0]

  (ld, gd), (lf, gf) = (jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(h, w)
                        for f in (dense, fused))
  assert float(lf) == pytest.approx(float(ld), rel=1e-6)
  for a, b in zip(gf, gd):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  loss, aux = loss_lib.fused_head_loss(h, w, y, z_loss, chunk)
  dense_loss, dense_aux = loss_lib.cross_entropy(jnp.einsum("bld,dv->blv", h, w), y, z_loss)
  assert float(aux["ce"]) == pytest.approx(float(dense_aux["ce"]), rel=1e-6)
  assert float(aux["z_loss"]) == pytest.approx(float(dense_aux["z_loss"]), rel=1e-6)


@pytest.mark.parametrize("length,block", [(64, 16), (50, 16), (64, 0)])
def test_blocked_attention_equals_full_causal_attention(length, block):
  ks = jax.random.split(jax.random.key(1), 3)
  q, k, v = (jax.random.normal(kk, (2, length, 4, 8)) for kk in ks)
  ref = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
  out = cpu_kernels.blocked_causal_attention(q, k, v, block)
  np.testing.assert_allclose(out, ref, atol=2e-6)
  # All three gradients through the written-out backward pass, against differentiating the
  # dense reference, with a cotangent that is not all ones.
  ct = jax.random.normal(jax.random.key(2), q.shape)
  loss = lambda f: (lambda q, k, v: jnp.sum(f(q, k, v) * ct))
  g = jax.grad(loss(lambda q, k, v: cpu_kernels.blocked_causal_attention(q, k, v, block)),
               (0, 1, 2))(q, k, v)
  g_ref = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=True, implementation="xla")), (0, 1, 2))(q, k, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_swiglu_mlp_values_and_gradients_equal_the_plain_expression():
  ks = jax.random.split(jax.random.key(3), 5)
  h = jax.random.normal(ks[0], (2, 24, 16))
  w_up, w_gate = (0.2 * jax.random.normal(kk, (16, 64)) for kk in ks[1:3])
  w_down = 0.2 * jax.random.normal(ks[3], (64, 16))
  ct = jax.random.normal(ks[4], h.shape)
  plain = lambda h, u, g, d: (jax.nn.silu(h @ g) * (h @ u)) @ d
  np.testing.assert_allclose(cpu_kernels.swiglu_mlp(h, w_up, w_gate, w_down),
                             plain(h, w_up, w_gate, w_down), rtol=1e-5, atol=1e-6)
  loss = lambda f: (lambda *a: jnp.sum(f(*a) * ct))
  got = jax.grad(loss(cpu_kernels.swiglu_mlp), argnums=(0, 1, 2, 3))(h, w_up, w_gate, w_down)
  want = jax.grad(loss(plain), argnums=(0, 1, 2, 3))(h, w_up, w_gate, w_down)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_linear_and_weight_grad_equal_the_plain_products():
  ks = jax.random.split(jax.random.key(4), 3)
  x = jax.random.normal(ks[0], (2, 24, 16))
  w = 0.2 * jax.random.normal(ks[1], (16, 40))
  ct = jax.random.normal(ks[2], (2, 24, 40))
  np.testing.assert_allclose(cpu_kernels.weight_grad(x.reshape(48, 16), ct.reshape(48, 40)),
                             x.reshape(48, 16).T @ ct.reshape(48, 40), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cpu_kernels.linear(x, w), x @ w, rtol=1e-6)
  loss = lambda f: (lambda a, b: jnp.sum(f(a, b) * ct))
  got = jax.grad(loss(cpu_kernels.linear), argnums=(0, 1))(x, w)
  want = jax.grad(loss(lambda a, b: a @ b), argnums=(0, 1))(x, w)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_platform_field_chooses_the_kernels_once_not_the_host():
  """model.platform picks the kernels: tracing for a GPU or TPU on this CPU host takes the
  accelerator path (no XLA:CPU kernel, whose weight gradients carry optimization barriers)."""
  params = nnx.to_pure_dict(nnx.state(M.OLMo(M.ModelConfig(**SMALL), rngs=nnx.Rngs(0)),
                                      nnx.Param))
  ids = jnp.zeros((2, 17), jnp.int32)
  texts = {}
  for platform in ("auto", "cpu", "gpu", "tpu"):
    cfg = M.ModelConfig(**SMALL, platform=platform)
    loss = lambda p, cfg=cfg: loss_lib.fused_head_loss(
        M.forward(cfg, p, ids[:, :-1], return_hidden=True), p["lm_head"], ids[:, 1:],
        platform=cfg.platform)[0]
    texts[platform] = jax.jit(jax.grad(loss)).lower(params).as_text()
  assert jax.default_backend() == "cpu" and M.ModelConfig(**SMALL).on_cpu
  assert "optimization_barrier" in texts["auto"] and "optimization_barrier" in texts["cpu"]
  assert "optimization_barrier" not in texts["gpu"] and "optimization_barrier" not in texts["tpu"]
  with pytest.raises(ValueError, match="model.platform='cuda'"):
    M.ModelConfig(platform="cuda").validate()
