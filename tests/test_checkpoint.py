"""olmo_jax.checkpoint on a toy train state: round trips, garbage collection, corruption
fallbacks, failed saves, params-only checkpoints, and resharding across device counts."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from olmo_jax import checkpoint, checkpoint_manager, optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@jax.jit
def _toy_state(seed, step):
  k = jax.random.split(jax.random.key(seed), 3)
  params = {"embed": jax.random.normal(k[0], (32, 16)),
            "blocks": {"wq": jax.random.normal(k[1], (2, 16, 16)),
                       "attn_norm": jnp.ones((2, 16))}}
  tx = optim.make_optimizer(peak_lr=1e-3, warmup_steps=2, total_steps=10)
  opt_state = tx.init(params)
  _, opt_state = tx.update(jax.tree.map(lambda p: 0.1 * p, params), opt_state, params)
  return {"step": jnp.int32(step), "params": params, "opt_state": opt_state,
          "rng": jax.random.key_data(k[2])}


def toy_state(seed: int = 0, step: int = 0):
  """A train state shaped like the trainer's: params, an AdamW chain state after one update, rng."""
  return _toy_state(seed, step)


def abstract(state, sharding=None):
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def save_steps(directory, steps, *, keep=10, keep_period=0, async_save=True, every=1):
  ckpt = checkpoint_manager.Checkpointer(directory, every=every, keep=keep, keep_period=keep_period,
                                 async_save=async_save,
                                 metadata={"config": {"model": {"d_model": 16}},
                                           "tokenizer_hash": "abc"})
  states = {}
  for s in steps:
    states[s] = toy_state(seed=s, step=s)
    ckpt.save(s, states[s], {"position": s * 10})
  ckpt.wait()
  return ckpt, states


def largest_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  return max(files, key=os.path.getsize)


def test_round_trip_is_bit_exact_with_data_state_and_metadata(tmp_path):
  ckpt, states = save_steps(str(tmp_path), [1, 2])
  assert ckpt.latest_step() == 2
  state, data, step = ckpt.restore(abstract(states[2]))
  assert step == 2 and data == {"position": 20}
  assert_identical(state, states[2])
  state1, data1, _ = ckpt.restore(abstract(states[1]), step=1)
  assert_identical(state1, states[1]) and data1 == {"position": 10}
  meta = checkpoint.read_metadata(os.path.join(str(tmp_path), "2"))
  assert meta == {"config": {"model": {"d_model": 16}}, "tokenizer_hash": "abc",
                  "kind": "train_state", "step": 2}
  ckpt.close()


def test_save_without_data_state_restores_none(tmp_path):
  ckpt = checkpoint_manager.Checkpointer(str(tmp_path), every=5, keep=2)
  state = toy_state(step=5)
  assert not ckpt.save(4, state, None)  # not due
  assert ckpt.save(5, state, None)
  assert not ckpt.save(5, state, None, force=True)  # already committed: nothing to do
  _, data, step = ckpt.restore(abstract(state))
  assert (data, step) == (None, 5)
  ckpt.close()


def test_async_save_is_unaffected_by_donating_the_state_right_after(tmp_path):
  ckpt = checkpoint_manager.Checkpointer(str(tmp_path), every=1, keep=2)
  state = toy_state(step=3)
  expected = jax.tree.map(np.array, state)
  ckpt.save(3, state, None)
  # The next train step donates the state buffers while the save is still being written.
  update = jax.jit(lambda t: jax.tree.map(lambda x: x * 0 + 7, t), donate_argnums=0)
  jax.block_until_ready(update(state))
  ckpt.wait()
  restored, _, _ = ckpt.restore(abstract(expected))
  assert_identical(restored, expected)
  ckpt.close()


def test_garbage_collection_keeps_newest_k_plus_every_period(tmp_path):
  ckpt, _ = save_steps(str(tmp_path), range(1, 10), keep=2, keep_period=4)
  assert sorted(checkpoint.step_dirs(str(tmp_path))) == [4, 8, 9]
  ckpt.close()


@pytest.mark.parametrize("damage", ["truncate", "no_commit_marker", "no_manifest", "flip_bytes",
                                    "tmp_dir_only"])
def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, caplog, damage):
  d = str(tmp_path)
  ckpt, states = save_steps(d, [1, 2])
  step_dir = os.path.join(d, "2")
  if damage == "truncate":
    path = largest_file(step_dir)
    os.truncate(path, os.path.getsize(path) // 2)
  elif damage == "no_commit_marker":
    os.remove(os.path.join(step_dir, checkpoint.COMMIT_MARKER))
  elif damage == "no_manifest":
    os.remove(os.path.join(step_dir, checkpoint.MANIFEST))
  elif damage == "flip_bytes":  # same size, wrong bytes: only the checksum can tell
    path = largest_file(step_dir)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 3] ^= 0xFF
    open(path, "wb").write(bytes(data))
  elif damage == "tmp_dir_only":  # kill -9 before the commit rename
    os.rename(step_dir, os.path.join(d, "2.orbax-checkpoint-tmp-123"))
  ckpt.close()
  ckpt = checkpoint_manager.Checkpointer(d, every=1, keep=10)
  if damage != "flip_bytes":
    assert ckpt.latest_step() == 1
  state, data, step = ckpt.restore(abstract(states[1]))
  assert step == 1 and data == {"position": 10}
  assert_identical(state, states[1])
  out = caplog.text
  if damage != "tmp_dir_only":
    assert f"{step_dir}" in out and "step 1" in out
  # The next save of step 2 replaces the damaged directory and becomes the newest.
  assert ckpt.save(2, states[2], {"position": 20})
  ckpt.wait()
  assert ckpt.latest_step() == 2
  assert not [n for n in os.listdir(d) if "tmp" in n]
  ckpt.close()


def test_explicit_damaged_step_is_an_error_naming_it(tmp_path):
  d = str(tmp_path)
  ckpt, states = save_steps(d, [1, 2])
  os.remove(os.path.join(d, "2", checkpoint.COMMIT_MARKER))
  with pytest.raises(checkpoint.CheckpointError, match=r"step 2 .*commit marker"):
    ckpt.restore(abstract(states[1]), step=2)
  ckpt.close()


def test_no_checkpoint_and_bad_paths_give_clear_errors(tmp_path):
  ckpt = checkpoint_manager.Checkpointer(str(tmp_path / "ckpts"), every=1, keep=1)
  assert ckpt.latest_step() is None
  with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint"):
    ckpt.restore(abstract(toy_state()))
  ckpt.close()
  with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
    checkpoint.restore_params(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoint.CheckpointError, match="holds no checkpoints"):
    checkpoint.restore_params(str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="keep"):
    checkpoint_manager.Checkpointer(str(tmp_path / "x"), every=1, keep=0)


def test_restore_params_from_workdir_checkpoints_dir_or_step_dir(tmp_path):
  ckpt_dir = str(tmp_path / "checkpoints")
  ckpt, states = save_steps(ckpt_dir, [3, 6])
  ckpt.close()
  for path, step in [(str(tmp_path), 6), (ckpt_dir, 6), (os.path.join(ckpt_dir, "3"), 3)]:
    params, meta = checkpoint.restore_params(path)
    assert meta["step"] == step and meta["tokenizer_hash"] == "abc"
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
    assert_identical(params, states[step]["params"])
  params, _ = checkpoint.restore_params(str(tmp_path), step=3)
  assert_identical(params, states[3]["params"])


def test_params_only_checkpoint_starts_a_fresh_run(tmp_path):
  params = toy_state(seed=5)["params"]
  step_dir = checkpoint.write_params_checkpoint(str(tmp_path), params, {"config": {"x": 1}})
  assert step_dir == os.path.join(str(tmp_path), "checkpoints", "0")
  with pytest.raises(checkpoint.CheckpointError, match="already holds"):
    checkpoint.write_params_checkpoint(str(tmp_path), params, {})
  restored, meta = checkpoint.restore_params(str(tmp_path))
  assert meta["kind"] == "params" and meta["config"] == {"x": 1}
  assert_identical(restored, params)
  ckpt_dir = os.path.join(str(tmp_path), "checkpoints")
  ckpt = checkpoint_manager.Checkpointer(ckpt_dir, every=2, keep=1)
  assert ckpt.latest_step() is None  # nothing to resume: the trainer starts at step 0 ...
  init = checkpoint.load_init_params(ckpt_dir, abstract(params))  # ... from these params
  assert isinstance(jax.tree.leaves(init)[0], jax.Array)
  assert_identical(init, params)
  state = toy_state(seed=9, step=2)
  ckpt.save(2, state, None)
  ckpt.wait()
  assert ckpt.latest_step() == 2
  assert checkpoint.load_init_params(ckpt_dir, abstract(params)) is None  # resume instead
  assert sorted(checkpoint.step_dirs(ckpt_dir)) == [2]  # keep=1 after a newer commit
  ckpt.close()


def run_py(code: str, devices: int = 1, timeout: int = 120) -> str:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout + proc.stderr  # the checkpoint's warnings are logged to stderr


FAILED_SAVE = """
import os, resource, signal, sys
import jax, jax.numpy as jnp, numpy as np
from olmo_jax import checkpoint, checkpoint_manager
d, async_save = sys.argv[1], sys.argv[2] == "1"
ckpt = checkpoint_manager.Checkpointer(d, every=1, keep=1, async_save=async_save)
small = {{"step": jnp.int32(1), "w": jnp.ones((4,), jnp.float32)}}
ckpt.save(1, small, {{"position": 1}})
ckpt.wait()
# The "disk" fills up: every write past 4 KiB fails with EFBIG, as ENOSPC would.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
big = {{"step": jnp.int32(2), "w": jnp.arange(1 << 16, dtype=jnp.float32)}}
try:
  ckpt.save(2, big, {{"position": 2}})
  ckpt.wait()
  print("NO ERROR")
except checkpoint.CheckpointError as e:
  print("ERROR", e)
print("AFTER FAILURE", sorted(os.listdir(d)))
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
ckpt.save(3, dict(big, step=jnp.int32(3)), {{"position": 3}})  # space again: saving resumes
ckpt.close()
print("AFTER RECOVERY", sorted(os.listdir(d)))
"""


@pytest.mark.parametrize("async_save", [True, False])
def test_failed_save_disk_full_leaves_older_checkpoints_intact(tmp_path, async_save):
  d = str(tmp_path)
  code = f"import sys; sys.argv = ['x', {d!r}, {'1' if async_save else '0'!r}]\n"
  out = run_py(code + FAILED_SAVE.format())
  assert "ERROR saving checkpoint step 2" in out and "NO ERROR" not in out
  assert "older checkpoints are untouched" in out
  assert "AFTER FAILURE ['1']" in out  # intact, and no half-written step 2 holds on to space
  assert "AFTER RECOVERY ['3']" in out  # keep=1: step 1 goes only once step 3 is committed
  ckpt = checkpoint_manager.Checkpointer(d, every=1, keep=1)
  state = {"step": jnp.int32(3), "w": jnp.arange(1 << 16, dtype=jnp.float32)}
  restored, data, step = ckpt.restore(abstract(state))
  assert step == 3 and data == {"position": 3}
  assert_identical(restored, state)
  ckpt.close()


SAVE_FSDP = """
import sys, numpy as np, jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
sys.path.insert(0, "tests")
from test_checkpoint import toy_state
from olmo_jax import checkpoint_manager, sharding
mesh = sharding.make_mesh(fsdp=-1)
assert mesh.shape["fsdp"] == 8
state = toy_state(seed=3, step=7)
def place(x):  # FSDP: the first dim divisible by 8 is split over the devices
  dims = [i for i, n in enumerate(x.shape) if n % 8 == 0]
  spec = [None] * x.ndim
  if dims: spec[dims[0]] = "fsdp"
  return jax.device_put(x, NamedSharding(mesh, P(*spec)))
state = jax.tree.map(place, state)
assert len(state["params"]["embed"].sharding.device_set) == 8
ckpt = checkpoint_manager.Checkpointer(sys.argv[1], every=1, keep=2)
ckpt.save(7, state, {"position": 70})
ckpt.close()
np.savez(sys.argv[2], *[np.asarray(x) for x in jax.tree.leaves(state)])
"""

RESTORE = """
import sys, numpy as np, jax
from jax.sharding import NamedSharding, PartitionSpec as P
sys.path.insert(0, "tests")
from test_checkpoint import toy_state, abstract
from olmo_jax import checkpoint_manager, sharding
mesh = sharding.make_mesh(fsdp=-1)
n = len(jax.devices())
def spec(x):
  dims = [i for i, d in enumerate(x.shape) if d % n == 0 and n > 1]
  s = [None] * len(x.shape)
  if dims: s[dims[0]] = "fsdp"
  return NamedSharding(mesh, P(*s))
target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=spec(x)),
                      jax.eval_shape(toy_state))
ckpt = checkpoint_manager.Checkpointer(sys.argv[1], every=1, keep=2)
state, data, step = ckpt.restore(target)
assert step == 7 and data == {"position": 70}, (step, data)
ref = np.load(sys.argv[2])
leaves = jax.tree.leaves(state)
assert len(leaves) == len(ref.files)
for i, x in enumerate(leaves):
  assert x.sharding == jax.tree.leaves(target)[i].sharding
  np.testing.assert_array_equal(np.asarray(x), ref[f"arr_{i}"])
print("OK", n, len(state["params"]["embed"].sharding.device_set))
"""


def test_saved_on_8_devices_fsdp_restored_on_1_and_4(tmp_path):
  d, ref = str(tmp_path / "ckpt"), str(tmp_path / "ref.npz")
  run_py(f"import sys; sys.argv = ['x', {d!r}, {ref!r}]\n" + SAVE_FSDP, devices=8)
  assert "OK 1 1" in run_py(f"import sys; sys.argv = ['x', {d!r}, {ref!r}]\n" + RESTORE,
                            devices=1)
  assert "OK 4 4" in run_py(f"import sys; sys.argv = ['x', {d!r}, {ref!r}]\n" + RESTORE,
                            devices=4)
  params, meta = checkpoint.restore_params(d)  # and the params-only path on this process
  assert meta["step"] == 7
  ref_params = toy_state(seed=3, step=7)["params"]
  assert_identical(params, ref_params)


def test_manifest_records_every_file(tmp_path):
  ckpt, _ = save_steps(str(tmp_path), [1])
  ckpt.close()
  step_dir = os.path.join(str(tmp_path), "1")
  manifest = json.load(open(os.path.join(step_dir, checkpoint.MANIFEST)))["files"]
  on_disk = {os.path.relpath(os.path.join(r, f), step_dir)
             for r, _, fs in os.walk(step_dir) for f in fs} - {checkpoint.MANIFEST}
  assert set(manifest) == on_disk
  assert checkpoint.incomplete_reason(step_dir, checksums=True) is None


MULTIHOST_SAVE = """
import sys, numpy as np, jax
proc, port, d = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=proc)
from jax.sharding import NamedSharding, PartitionSpec as P
from olmo_jax import checkpoint_manager, sharding
mesh = sharding.make_mesh(fsdp=-1)
assert mesh.shape["fsdp"] == 4 and jax.process_count() == 2
rng = np.random.default_rng(0)  # the same host values in both processes
host = {"step": np.int32(3), "params": {"w": rng.normal(size=(8, 6)).astype(np.float32),
                                        "b": rng.normal(size=(6,)).astype(np.float32)}}
def put(x):
  spec = P("fsdp") if x.ndim and x.shape[0] % 4 == 0 else P()
  return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda i: x[i])
state = jax.tree.map(put, host)
ckpt = checkpoint_manager.Checkpointer(d, every=1, keep=1)
assert ckpt.latest_step() is None
ckpt.save(3, state, {"position": 30 + proc})  # every process takes part
ckpt.wait()
assert ckpt.latest_step() == 3
target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)
restored, data, step = ckpt.restore(target)
ckpt.close()
for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
  assert a.sharding == b.sharding
  for sa, sb in zip(a.addressable_shards, b.addressable_shards):
    np.testing.assert_array_equal(np.asarray(sa.data), np.asarray(sb.data))
assert data == {"position": 30 + proc}, data  # each process gets its own iterator state
np.savez(d + f".{proc}.npz", w=host["params"]["w"], b=host["params"]["b"])
print("OK", proc, step, data)
"""


def test_two_processes_save_together_and_one_restores(tmp_path):
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  d = str(tmp_path / "ckpt")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  procs = [subprocess.Popen([sys.executable, "-c", MULTIHOST_SAVE, str(i), str(port), d],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=180)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, out[-3000:]
    assert f"OK {i} 3" in out
  assert sorted(os.listdir(d)) == ["3"]
  assert checkpoint.incomplete_reason(os.path.join(d, "3"), checksums=True) is None
  params, meta = checkpoint.restore_params(d)  # one process, one device, numpy
  ref = np.load(d + ".0.npz")
  np.testing.assert_array_equal(params["w"], ref["w"])
  np.testing.assert_array_equal(params["b"], ref["b"])


def test_damaged_steps_are_moved_aside_never_deleted(tmp_path, caplog):
  d = str(tmp_path)
  ckpt, states = save_steps(d, [1, 2, 3])
  ckpt.close()
  os.truncate(largest_file(os.path.join(d, "1")), 10)  # an old step, damaged
  os.remove(os.path.join(d, "3", checkpoint.COMMIT_MARKER))  # the newest, damaged
  sizes = {s: sorted(os.path.getsize(os.path.join(r, f)) for r, _, fs in
                     os.walk(os.path.join(d, str(s))) for f in fs) for s in (1, 3)}
  ckpt = checkpoint_manager.Checkpointer(d, every=1, keep=10)
  _, _, step = ckpt.restore(abstract(states[2]))
  assert step == 2
  assert "moved damaged step 3 " in caplog.text
  ckpt.save(4, toy_state(seed=4, step=4), None)  # retention after the commit: 1 goes aside
  ckpt.wait()
  ckpt.close()
  assert sorted(checkpoint.step_dirs(d)) == [2, 4]
  aside = os.path.join(d, checkpoint.DAMAGED)
  assert sorted(os.listdir(aside)) == ["1", "3"]
  for s in (1, 3):  # every file kept, as it was
    assert sorted(os.path.getsize(os.path.join(r, f)) for r, _, fs in
                  os.walk(os.path.join(aside, str(s))) for f in fs) == sizes[s]
