"""The launch scripts: --help, the one-node launcher on fake CPU devices, the commands the
SLURM and TPU-pod launchers hand to srun and gcloud (recorded by stand-ins on PATH), and the
original pipeline's entry points (scripts/olmo/) typed as its Quick Start prints them."""

import json
import os
import re
import shlex
import stat
import subprocess
import sys

import numpy as np
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
  env.update(SLURM_JOB_ID="77", SLURM_SUBMIT_DIR=REPO, SLURM_NTASKS="2",
             SLURM_JOB_NODELIST="gpu1", OLMO_JAX_PLATFORM="gpu")
  proc = bash("scripts/launch_slurm.sh", "1B", "/data", "/runs/1B", "--config.train.steps=5",
              env=env)
  assert proc.returncode == 0, proc.stderr
  rec = json.load(open(record))
  argv = rec["argv"]
  # srun inherits the allocation's tasks; the command runs from the repository root.
  assert argv[:2] == ["--kill-on-bad-exit=1", f"--chdir={REPO}"]
  assert argv[3:] == ["-m", "olmo_jax.train", "--config", "configs/train.py:1B", "--workdir",
                      "/runs/1B", "--config.data.data_dir=/data", "--config.mesh.fsdp=-1",
                      "--config.train.steps=5"]
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


def _token_sources(data):
  """DATA as a user has it: two sources of token files (.npy, uint16)."""
  rng = np.random.default_rng(0)
  for name in ("web", "code"):
    os.makedirs(data / name)
    np.save(data / name / "part-00000.npy", rng.integers(0, 50_000, 20_000).astype(np.uint16))


def _trained_on_the_token_files(stdout, data):
  """The run's data report names DATA's two sources and nothing else was built under DATA."""
  assert re.search(r"^  code +tokens +1 +20,000", stdout, re.M), stdout
  assert re.search(r"^  web +tokens +1 +20,000", stdout, re.M), stdout
  assert sorted(os.listdir(data)) == ["code", "web"]  # no sample corpus written into DATA


def test_launcher_trains_on_data_dir_without_naming_a_recipe(tmp_path):
  """DATA is what the run trains on (as --data_path), relative to where the script is called."""
  env, record = _recorder(tmp_path, "fake_python")
  env.update(PYTHON="fake_python", OLMO_JAX_PLATFORM="cpu")
  proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "launch_distributed.sh"), "4M",
                         "2", "./mydata", "runs/4M", "--config.train.steps=5"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=60, env=env)
  assert proc.returncode == 0, proc.stderr
  argv = json.load(open(record))["argv"]
  assert argv[:5] == ["-m", "olmo_jax.train", "--config", "configs/train.py:4M", "--workdir"]
  assert argv[5] == f"{tmp_path}/runs/4M"
  assert f"--config.data.data_dir={tmp_path}/mydata" in argv
  assert not [a for a in argv if a.startswith("--config.data.mixture")], argv
  assert argv[-1] == "--config.train.steps=5"


@pytest.mark.slow
def test_launch_distributed_4m_on_2_fake_cpu_devices(tmp_path):
  data, out = tmp_path / "data", tmp_path / "out"
  _token_sources(data)
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
  _trained_on_the_token_files(proc.stdout, data)


# ----------------------------------------------------------------------------------------
# The original pipeline's Quick Start, typed from the repository root as it prints it.

ORIGINAL_TRAIN = ("python scripts/olmo/train.py --model_size 150M --data_path ./data "
                  "--output_dir ./outputs --config_file "
                  "configs/training_configs/default_training.yaml")
ORIGINAL_LAUNCH = "./scripts/olmo/launch_distributed.sh 150M 8 ./data ./outputs"
# Appended: the 150M recipe on a one-layer, 32-wide model for two steps.
SMALL = ["--config.model.d_model=32", "--config.model.n_heads=2", "--config.model.n_layers=1",
         "--config.train.steps=2", "--config.train.seq_len=32", "--config.train.warmup_steps=1",
         "--config.train.log_every=1", "--config.train.progress_bar=false",
         "--config.checkpoint.every=2"]


def _repository_root(tmp_path):
  """A repository root (links to this checkout's code, configs and scripts) with ./data of
  token files, and the environment of a user's shell there: `python` on PATH, no PYTHONPATH."""
  root = tmp_path / "repo"
  root.mkdir()
  for name in ("olmo_jax", "data_pipeline", "eval", "configs", "scripts"):
    (root / name).symlink_to(os.path.join(REPO, name))
  _token_sources(root / "data")
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "XLA_FLAGS", "JAX_PLATFORMS", "OLMO_JAX_PLATFORM")}
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
  return root, env


def _check_run(proc, root, batch):
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.load(open(root / "outputs" / "config.json"))
  assert (saved["model"]["size"], saved["train"]["steps"]) == ("150M", 2)
  assert saved["train"]["batch_size"] == batch
  steps = [json.loads(line)["step"] for line in open(root / "outputs" / "metrics.jsonl")]
  assert steps == [1, 2]
  assert os.listdir(root / "outputs" / "checkpoints") == ["2"]
  _trained_on_the_token_files(proc.stdout, root / "data")
  return saved


def test_original_train_command_runs_as_printed(tmp_path):
  root, env = _repository_root(tmp_path)
  for path in ("scripts/olmo/train.py", "scripts/olmo/launch_distributed.sh"):
    assert os.access(os.path.join(REPO, path), os.X_OK), path
  proc = subprocess.run([*shlex.split(ORIGINAL_TRAIN), *SMALL, "--config.train.batch_size=2"],
                        cwd=root, env=env, capture_output=True, text=True, timeout=600)
  saved = _check_run(proc, root, 2)
  assert saved["data"]["data_dir"] == "./data"


@pytest.mark.slow
def test_original_launcher_runs_as_printed_on_8_devices(tmp_path):
  root, env = _repository_root(tmp_path)  # no GPU here: 8 fake CPU devices
  proc = subprocess.run([*shlex.split(ORIGINAL_LAUNCH), *SMALL, "--config.train.batch_size=8"],
                        cwd=root, env=env, capture_output=True, text=True, timeout=600)
  saved = _check_run(proc, root, 8)
  assert "mesh {'data': 1, 'fsdp': 8, 'tensor': 1}" in proc.stdout
  assert saved["data"]["data_dir"] == f"{root}/data"
