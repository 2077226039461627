"""The launch scripts: --help, the one-node launcher on fake CPU devices, and the commands the
SLURM and TPU-pod launchers hand to srun and gcloud (recorded by stand-ins on PATH)."""

import json
import os
import stat
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPTS = ("launch_distributed.sh", "launch_slurm.sh", "launch_tpu_pod.sh")


def bash(*args, env=None, timeout=60):
  return subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=env or dict(os.environ))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
  proc = bash(f"scripts/{script}", "--help")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("usage:") and "Example" in proc.stdout


@pytest.mark.parametrize("script,args", [
    ("launch_distributed.sh", ["4M", "2", "data"]),
    ("launch_distributed.sh", ["4M", "two", "data", "out"]),
    ("launch_tpu_pod.sh", ["tpu", "zone"]),
])
def test_missing_or_bad_arguments_exit_2(script, args):
  proc = bash(f"scripts/{script}", *args)
  assert proc.returncode == 2 and "error:" in proc.stderr


def _recorder(tmp_path, name):
  """An executable `name` on PATH that records its argv and XLA_FLAGS as JSON."""
  bindir = tmp_path / "bin"
  bindir.mkdir(exist_ok=True)
  exe = bindir / name
  exe.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                 f"json.dump({{'argv': sys.argv[1:], 'xla': os.environ.get('XLA_FLAGS', '')}},"
                 f" open({str(tmp_path / (name + '.json'))!r}, 'w'))\n")
  exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
  return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"), tmp_path / (name + ".json")


def test_slurm_launcher_runs_the_train_command_under_srun(tmp_path):
  env, record = _recorder(tmp_path, "srun")
  outside = bash("scripts/launch_slurm.sh", "1B", "d", "o", env=env)
  assert outside.returncode == 2 and "not inside a SLURM job" in outside.stderr
  env.update(SLURM_JOB_ID="77", SLURM_SUBMIT_DIR=REPO)
  proc = bash("scripts/launch_slurm.sh", "1B", "/data", "/runs/1B", "--config.train.steps=5",
              env=env)
  assert proc.returncode == 0, proc.stderr
  rec = json.load(open(record))
  assert "--ntasks-per-node=1" in rec["argv"]
  cmd = rec["argv"][-1]
  assert f"cd '{REPO}'" in cmd and "-m olmo_jax.train --config configs/train.py:1B" in cmd
  assert "--workdir '/runs/1B'" in cmd and "'--config.train.steps=5'" in cmd
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in rec["xla"]


def test_tpu_launcher_runs_the_same_command_on_every_worker(tmp_path):
  env, record = _recorder(tmp_path, "gcloud")
  proc = bash("scripts/launch_tpu_pod.sh", "my-v5p", "us-east5-a", "150M", "/mnt/d", "/mnt/r",
              "--config.train.steps=5", env=env)
  assert proc.returncode == 0, proc.stderr
  argv = json.load(open(record))["argv"]
  assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-v5p"]
  assert "--worker=all" in argv and "--zone=us-east5-a" in argv
  command = [a for a in argv if a.startswith("--command=")][0]
  assert "-m olmo_jax.train --config configs/train.py:150M --workdir '/mnt/r'" in command
  assert "'--config.train.steps=5'" in command


def test_gpu_flags_are_known_to_xla():
  """XLA aborts on an unknown XLA_FLAGS entry, so the launchers' GPU flags must parse here."""
  code = ("source scripts/xla_gpu_flags.sh && olmo_gpu_env && "
          f"{sys.executable} -c 'import jax; print(jax.numpy.ones(2).sum())'")
  proc = bash("-c", code, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "2.0" in proc.stdout


@pytest.mark.slow
def test_launch_distributed_4m_on_2_fake_cpu_devices(tmp_path):
  data, out = tmp_path / "data", tmp_path / "out"
  env = dict(os.environ, OLMO_JAX_PLATFORM="cpu", PYTHON=sys.executable, PYTHONPATH=REPO)
  env.pop("XLA_FLAGS", None)
  proc = bash("scripts/launch_distributed.sh", "4M", "2", str(data), str(out),
              "--config.train.steps=3", "--config.train.batch_size=4",
              "--config.train.seq_len=64", "--config.train.progress_bar=False",
              "--config.train.log_every=1", env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 1}" in proc.stdout
  steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
  assert steps == [1, 2, 3]
  assert os.listdir(data)  # the sample corpus was built under DATA_DIR
