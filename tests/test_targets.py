"""Plans compiled for accelerators not at hand (GPU target descriptions, TPU topologies), and a
CPU host with those compilers installed staying a plain CPU host."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from olmo_jax import config as config_lib
from olmo_jax import plan, plan_compile, runtime, targets

needs_cuda = pytest.mark.skipif(not targets.compiler_installed("gpu"),
                                reason="jax-cuda12-plugin not installed (requirements.txt)")
needs_tpu = pytest.mark.skipif(not targets.compiler_installed("tpu"),
                               reason="libtpu not installed (requirements.txt)")

TINY = ["--config.model.size=custom", "--config.model.d_model=64", "--config.model.n_heads=4",
        "--config.model.n_layers=2", "--config.model.vocab_size=1000",
        "--config.model.embedding_size=1024", "--config.train.batch_size=16",
        "--config.train.seq_len=128", "--config.model.dtype=bfloat16"]


def resolved(c, **plan_opts):
  """The RunSpec for the plan's target (the dense loss: no token chunks)."""
  c.plan.update(plan_opts)
  c.train.loss_impl = "dense"
  spec = config_lib.resolve(plan_compile.for_target(c))
  assert spec.step.loss_chunk_tokens == 0
  return spec


@pytest.fixture
def tiny(tiny_train_config):
  c = tiny_train_config
  c.model.size, c.model.d_model, c.model.n_heads, c.model.n_layers = "custom", 64, 4, 2
  c.model.vocab_size, c.model.embedding_size, c.model.dtype = 1000, 1024, "bfloat16"
  c.train.batch_size, c.train.seq_len = 16, 128
  return c


@needs_cuda
def test_step_compiles_for_two_gpu_hosts_and_matches_the_estimate(tiny):
  c = resolved(tiny, platform="gpu", devices=4, hosts=2, device_kind="a100_40gb")
  assert c.model.platform == "gpu" and not c.model.on_cpu  # traced with the accelerator kernels
  target = targets.gpu_target("a100_40gb", 4, hosts=2)
  assert target.describe()["topology"] == "1x2x2"
  assert target.device_memory == 40 * 2**30
  p = plan_compile.target_plan(c, target)
  assert p.source == "compiled" and p.fits and p.num_devices == 4
  assert p.device_kind == "a100_40gb" and p.target["hosts"] == 2
  # FSDP over 4 devices: the parameter shards are gathered and the gradients scattered.
  assert p.collectives.get("all-gather", 0) > 0
  assert p.collectives.get("reduce-scatter", 0) + p.collectives.get("all-reduce", 0) > 0
  est = plan.analytic_plan(c, platform="gpu", num_devices=4, kind="a100_40gb", device_memory=0,
                           peak=0)
  assert (est.params, est.opt_state) == (p.params, p.opt_state)  # exact, from the rules
  low, high = plan.GPU_TOLERANCE
  assert low <= est.activations / p.activations <= high, (est.activations, p.activations)


@needs_tpu
def test_dry_run_for_two_tpu_slices_writes_every_key(tiny, tmp_path):
  out = tmp_path / "plan.json"
  c = resolved(tiny, platform="tpu", topology="v5e:2x2", slices=2, output=str(out))
  lines = []
  p = plan_compile.dry_run(c, print_fn=lines.append)
  assert "plan (compiled) for 8 x tpu v5 lite (tpu)" in lines[0]
  got = json.loads(out.read_text())
  assert {"source", "target", "fits", "bytes_per_device", "device_memory_bytes", "collectives",
          "attention", "model_flops_per_step", "xla_flops_per_step",
          "compile_seconds"} <= set(got)
  assert set(got["bytes_per_device"]) == {"params", "optimizer", "activations", "temp", "total"}
  assert got["source"] == "compiled" and got["fits"] is True
  assert got["target"] == {"platform": "tpu", "device_kind": "tpu v5 lite", "devices": 8,
                           "slices": 2, "topology": "v5e:2x2",
                           "mesh": {"data": 1, "fsdp": 8, "tensor": 1}}
  assert got["device_memory_bytes"] == int(16 * 2**30 * 0.9)
  assert got["bytes_per_device"]["total"] == p.total > got["bytes_per_device"]["params"] > 0
  assert got["collectives"].get("all-gather", 0) > 0
  assert got["xla_flops_per_step"] > 0 and got["compile_seconds"] > 0  # XLA:TPU counts FLOPs


@needs_cuda
@pytest.mark.slow
def test_dry_run_cli_for_a_gpu_target(tmp_path):
  out = tmp_path / "plan.json"
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop("JAX_PLATFORMS", None)  # the CPU default comes from olmo_jax itself
  proc = subprocess.run(
      [sys.executable, "-m", "olmo_jax.train", *TINY, "--dry_run", "--config.plan.platform=gpu",
       "--config.plan.devices=2", "--config.plan.device_kind=h200",
       f"--config.plan.output={out}"], env=env, cwd=REPO, capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "plan (compiled) for 2 x h200_141gb (gpu)" in proc.stdout
  got = json.loads(out.read_text())
  assert got["source"] == "compiled" and got["fits"] is True
  assert got["target"]["devices"] == 2 and got["target"]["hosts"] == 1
  assert got["device_memory_bytes"] == int(141 * 2**30 * 0.9)
  assert got["attention"].startswith("xla") and got["xla_flops_per_step"] is None


def _python(code: str) -> subprocess.CompletedProcess:
  """`python -c code` from the repository, as a user's shell starts it (no JAX_PLATFORMS)."""
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop("JAX_PLATFORMS", None)
  return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=120)


def test_cpu_host_defaults_to_cpu_without_a_word_on_stderr():
  """No accelerator here: JAX_PLATFORMS=cpu is set for JAX, and neither libtpu nor the CUDA
  plugin (both installed by requirements.txt) says anything."""
  if runtime.tpu_present() or runtime.gpu_present():
    pytest.skip("this host has an accelerator: JAX picks it as always")
  proc = _python(
      "import os; from olmo_jax import runtime; runtime.init(); import jax;"
      "import jax.numpy as jnp; jnp.ones(2).block_until_ready();"
      "print(os.environ['JAX_PLATFORMS'], jax.devices()[0].platform)")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["cpu", "cpu"]
  assert proc.stderr == ""


def test_importing_the_packages_changes_nothing():
  """No side effects at import: the environment and the import machinery are the entry
  points' to set (runtime.init), not the library's."""
  proc = _python(
      "import os, sys;"
      "import olmo_jax, olmo_jax.model, olmo_jax.trainer, olmo_jax.targets, data_pipeline;"
      "print(os.environ.get('JAX_PLATFORMS'),"
      "     [type(m).__name__ for m in sys.meta_path if 'olmo_jax' in type(m).__module__])")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["None", "[]"]


def test_gpu_target_names_are_checked():
  with pytest.raises(ValueError, match="plan.device_kind='v100' has no GPU target"):
    targets.gpu_target_config("v100")
  name, text = targets.gpu_target_config("H100")
  assert name == "h100_80gb" and "core_count: 132" in text
  with pytest.raises(ValueError, match="must split evenly over plan.hosts=3"):
    targets.gpu_target("h100", 8, hosts=3)


def test_plan_says_why_it_is_analytic(tiny, monkeypatch):
  """Without a compiler for the target the plan is the analytic estimate, and says why."""
  def missing(*a, **k):
    raise ImportError("the CUDA plugin is not installed")
  monkeypatch.setattr(targets, "gpu_target", missing)
  tiny.plan.update({"platform": "gpu", "devices": 8})
  c = resolved(tiny)
  lines = []
  p = plan_compile.dry_run(c, print_fn=lines.append)
  assert p.source == "analytic" and "no compiler for gpu is installed here" in p.note
  assert "plan (analytic) for 8 x h100 (gpu)" in lines[0]
  assert dataclasses.asdict(p)["num_devices"] == 8


@needs_cuda
def test_a_compiler_error_leaves_the_analytic_plan_naming_it(tiny, monkeypatch):
  """XLA:GPU can fail on a step it cannot tile (seen at 530M, one microbatch of 448 x 2048
  on 1 x H100): the plan is then the analytic estimate, and its note quotes the compiler."""
  def refuse(*a, **k):
    raise RuntimeError("INTERNAL: Couldn't find output tile sizes that satisfy hlo: %dot.96\n"
                       "  Symbolic tile with ...")
  monkeypatch.setattr(plan_compile, "_timed_compile", refuse)
  c = resolved(tiny, platform="gpu", devices=2, device_kind="h100")
  p = plan_compile.target_plan(c, targets.gpu_target("h100", 2))
  assert p.source == "analytic" and p.num_devices == 2 and p.target["devices"] == 2
  assert "did not compile this step (INTERNAL: Couldn't find output tile sizes" in p.note
  est = plan.analytic_plan(c, platform="gpu", num_devices=2, kind="h100", device_memory=0,
                           peak=0)
  assert (p.params, p.opt_state, p.activations) == (est.params, est.opt_state, est.activations)


@needs_cuda
def test_gpu_step_without_a_triton_tiling_is_compiled_with_library_gemms(tiny, monkeypatch):
  """Where XLA:GPU's default Triton GEMM tiling fails (no autotuning without a device), the
  step is compiled again with library GEMMs, and the plan says so."""
  real, seen = plan_compile._timed_compile, []
  def triton_fails(step, abstract, mesh, cfg, options=None):
    seen.append(options)
    if options is None:
      raise RuntimeError("INTERNAL: Couldn't find output tile sizes that satisfy hlo: %dot.96")
    return real(step, abstract, mesh, cfg, options)
  monkeypatch.setattr(plan_compile, "_timed_compile", triton_fails)
  c = resolved(tiny, platform="gpu", devices=2, device_kind="h100")
  p = plan_compile.target_plan(c, targets.gpu_target("h100", 2))
  assert seen == [None, {"xla_gpu_enable_triton_gemm": False}]
  assert p.source == "compiled" and p.fits and "library GEMMs" in p.note
  assert p.collectives.get("all-gather", 0) > 0


def test_unknown_tpu_topology_is_one_error_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop("JAX_PLATFORMS", None)
  proc = subprocess.run(
      [sys.executable, "-m", "olmo_jax.train", *TINY, "--dry_run", "--config.plan.platform=tpu",
       "--config.plan.topology=v9z:1x1"], env=env, cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [
      line for line in proc.stderr.strip().splitlines() if line.startswith("error: ")]
  assert "plan.topology='v9z:1x1' is not a TPU topology" in proc.stderr
  assert "Traceback" not in proc.stderr
