"""The rules table: params and activations sharded by logical name, visible warnings for dims a
mesh axis does not divide, and the shardings a real 8-device run carries."""

import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from conftest import REPO
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from olmo_jax import sharding


def test_activation_rules_share_the_table_with_params():
  mesh = AbstractMesh((2, 2, 2), sharding.MESH_AXES)
  spec = lambda axes, shape: sharding.spec_for(axes, shape, mesh)
  assert spec(("vocab", "embed"), (512, 32)) == P("tensor", "fsdp")  # a param
  # Activations: batch takes data x fsdp, so the embed dim stays whole; heads/mlp/vocab on tensor.
  assert spec(("batch", "length", "embed"), (8, 16, 32)) == P(("data", "fsdp"), None, None)
  assert spec(("batch", "length", "heads", "head_dim"), (8, 16, 4, 8)) == \
      P(("data", "fsdp"), None, "tensor", None)
  assert spec(("batch", "length", "mlp"), (8, 16, 128)) == P(("data", "fsdp"), None, "tensor")
  assert spec(("batch", "length", "vocab"), (8, 16, 512)) == P(("data", "fsdp"), None, "tensor")


def test_indivisible_dim_warns_naming_the_parameter(caplog):
  mesh = AbstractMesh((1, 4, 1), sharding.MESH_AXES)
  axes = {"blocks": {"w_up": ("layers", "embed", "mlp")}}
  shapes = {"blocks": {"w_up": jax.ShapeDtypeStruct((2, 6, 8), jnp.float32)}}
  with caplog.at_level(logging.WARNING):
    sh = sharding.tree_shardings(mesh, axes, shapes)
  assert sh["blocks"]["w_up"].spec == P(None, None, None)
  assert "blocks/w_up dim 1 (embed, size 6) is not divisible by mesh fsdp=4" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    sharding.spec_for(("batch", "length"), (6, 3), mesh, name="activation q")
  assert "activation q dim 0 (batch, size 6)" in caplog.text


def test_constrain_is_a_no_op_without_a_mesh():
  x = jnp.ones((4, 3))
  assert sharding.constrain(x, ("batch", "embed")) is x
  lowered = jax.jit(lambda a: sharding.constrain(a * 2, ("batch", "embed"))).lower(x)
  assert "sharding_constraint" not in lowered.as_text()


EIGHT = """
import jax, numpy as np
from jax.sharding import PartitionSpec as P
from olmo_jax import model as M, sharding
from olmo_jax.config import load_config_file
from olmo_jax.train import run
c = load_config_file(sys.argv[1], "4M")
c.model.size, c.model.d_model, c.model.n_heads, c.model.n_layers = "custom", 32, 4, 2
c.model.vocab_size, c.model.embedding_size = 500, 512
c.data.mixture, c.train.steps, c.train.batch_size, c.train.seq_len = "synthetic", 2, 8, 16
c.train.progress_bar, c.checkpoint.enabled = False, False
c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
result = run(c, None, print_fn=lambda s: None)
p = result.state["params"]
assert p["embed"].sharding.spec == P("tensor", "fsdp"), p["embed"].sharding
assert p["lm_head"].sharding.spec == P("fsdp", "tensor")
assert p["blocks"]["w_up"].sharding.spec == P(None, "fsdp", "tensor")
assert p["blocks"]["wo"].sharding.spec == P(None, "tensor", "fsdp")
assert result.state["opt_state"][1][0].mu["blocks"]["w_down"].sharding.spec == \\
    P(None, "tensor", "fsdp")
mesh = p["embed"].sharding.mesh
cfg = M.ModelConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=500, embedding_size=512)
ids = jax.device_put(np.zeros((8, 16), np.int32), sharding.batch_sharding(mesh))
with sharding.activation_mesh(mesh):
  fwd = jax.jit(lambda params, x: M.forward(cfg, params, x))
  text = fwd.lower(p, ids).as_text()
  logits = fwd(p, ids)
  hidden = jax.jit(lambda params, x: M.forward(cfg, params, x, return_hidden=True))(p, ids)
print("LOGITS", logits.sharding.spec)
print("HIDDEN", hidden.sharding.spec)
print("CONSTRAINTS", text.count("sharding_constraint"))
print("HEADS", '[{"data", "fsdp"}, {}, {"tensor"}, {}]' in text)
"""


@pytest.mark.slow
def test_8_devices_params_and_activations_carry_the_table_shardings():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-c", "import sys\n" + textwrap.dedent(EIGHT),
                         os.path.join(REPO, "configs", "train.py")], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "LOGITS P(('data', 'fsdp'), None, 'tensor')" in out
  assert "HIDDEN P(('data', 'fsdp'),)" in out  # [B, L, D]: batch split, the rest whole
  n = int(out.split("CONSTRAINTS")[1].split()[0])
  assert n >= 6  # embedding, q, k, v, attention out, block out, logits
  assert "HEADS True" in out  # [B, L, H, K] activations: heads over 'tensor'
