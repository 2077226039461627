"""scripts/launch_slurm.sh under a real SLURM (the private cluster of tests/slurm_cluster.py):
sbatch starts 2 tasks through srun that find each other as jax.distributed's SLURM detection
expects; the slow test trains a tiny model as those 2 tasks on DATA's token files, scancels it
mid-run and resubmits, and matches launch_distributed.sh's run on 2 devices bit for bit."""

import json
import os
import socket
import stat
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import slurm_cluster
from conftest import REPO, TINY_RUN_FLAGS

from olmo_jax import checkpoint, distributed

# 2 tasks of one CPU each on the test node; no GPUs (the script's defaults ask for 8 per node).
CPU_TASKS = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0"]
LAUNCHER = os.path.join(REPO, "scripts", "launch_slurm.sh")
TINY = [*TINY_RUN_FLAGS, "--config.checkpoint.async_save=False", "--config.checkpoint.every=1"]


def sbatch(cluster, cwd, *args, env=None) -> str:
  """Submits from `cwd` (as a user does); returns the job id."""
  proc = cluster.run("sbatch", "--parsable", *args, cwd=cwd, env=env or cluster.env)
  return proc.stdout.strip().split(";")[0]


def _recorder(path):
  """A stand-in interpreter: each task writes its argv, cwd and SLURM/JAX environment."""
  path.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                  "env = {k: v for k, v in os.environ.items() if k.startswith(('SLURM', 'JAX'))}\n"
                  f"json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': env}}, "
                  f"open({str(path.parent)!r} + f'/task-{{env[\"SLURM_PROCID\"]}}.json', 'w'))\n")
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_sbatch_starts_two_tasks_that_join_as_one_run(slurm, tmp_path):
  _recorder(tmp_path / "python")
  env = dict(slurm.env, PYTHON=str(tmp_path / "python"), OLMO_JAX_PLATFORM="cpu")
  job = sbatch(slurm, tmp_path, *CPU_TASKS, LAUNCHER, "4M", "data", "runs/4M",
               "--config.train.steps=5", env=env)
  slurm.wait(job, timeout_s=60)
  log = tmp_path / f"slurm-{job}.out"  # where the docs say: the submission directory
  assert slurm.job_state(job) == ("COMPLETED", "0:0"), log.read_text()
  assert f"job {job}: 2 task(s)" in log.read_text()
  tasks = [json.load(open(tmp_path / f"task-{i}.json")) for i in range(2)]
  for i, task in enumerate(tasks):
    assert task["cwd"] == REPO  # the repository of the submitted script, not the spool copy
    assert task["argv"] == ["-m", "olmo_jax.train", "--config", "configs/train.py:4M",
                            "--workdir", f"{tmp_path}/runs/4M",
                            f"--config.data.data_dir={tmp_path}/data",
                            "--config.mesh.fsdp=-1", "--config.train.steps=5"]
    assert task["env"]["JAX_PLATFORMS"] == "cpu"
    setup = distributed.detect(env=task["env"], tpu=False)
    host = socket.gethostname().split(".")[0]
    port = distributed.DEFAULT_SLURM_PORT_BASE + int(job) % 4096
    assert (setup.kind, setup.coordinator, setup.num_processes, setup.process_id,
            setup.local_device_ids) == ("slurm", f"{host}:{port}", 2, i, (i,))
    # (two tasks on one node: each would own one GPU, SLURM_LOCALID; on CPU it is ignored)


def test_where_slurm_cannot_be_had_the_skip_says_why(monkeypatch):
  monkeypatch.setattr(os, "geteuid", lambda: 1000)
  assert slurm_cluster.unavailable_reason() == (
      "SLURM tests skipped: a private SLURM cluster needs root (slurmd starts jobs as their "
      "owner); running as uid 1000")
  monkeypatch.setattr(os, "geteuid", lambda: 0)
  monkeypatch.setattr(slurm_cluster, "missing_binaries", lambda: ["slurmd"])
  monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name, path=None: None)
  assert slurm_cluster.unavailable_reason() == (
      "SLURM tests skipped: slurmd not installed and no apt-get to install munge slurmctld "
      "slurmd slurm-client")


# ------------------------------------------------------------------ real training (slow)


def _losses(workdir) -> dict[int, float]:
  """{step: loss}; a step logged twice (before the scancel and after resuming) must carry the
  same loss both times."""
  out = {}
  for row in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))):
    assert out.setdefault(row["step"], row["loss"]) == row["loss"], row
  return out


def _token_files(data):
  """DATA as a user has it: one source of .npy token files (a learnable, repeating sequence)."""
  os.makedirs(data / "web")
  ids = (np.arange(20000) * 7919 % 509 + 2).astype(np.uint16)
  np.save(data / "web" / "part-0.npy", ids[:10000])
  np.save(data / "web" / "part-1.npy", ids[10000:])


@pytest.mark.slow
def test_two_tasks_train_like_launch_distributed_and_resume_after_scancel(slurm, tmp_path):
  _token_files(tmp_path / "data")
  env = dict(slurm.env, PYTHON=sys.executable, OLMO_JAX_PLATFORM="cpu", PYTHONPATH=REPO)
  env.pop("XLA_FLAGS", None)
  args = ["4M", "data", "runs/slurm", *TINY, "--config.train.steps=12"]
  job = sbatch(slurm, tmp_path, *CPU_TASKS, LAUNCHER, *args, env=env)
  step3 = tmp_path / "runs" / "slurm" / "checkpoints" / "3"
  deadline = time.time() + 300
  while not step3.is_dir() or checkpoint.incomplete_reason(str(step3)) is not None:
    assert time.time() < deadline and slurm.jobs(), (tmp_path / f"slurm-{job}.out").read_text()
    time.sleep(0.05)
  slurm.run("scancel", job)
  slurm.wait(job, timeout_s=60)
  assert slurm.job_state(job)[0] == "CANCELLED"
  killed_at = max(_losses(tmp_path / "runs" / "slurm"))
  assert 3 <= killed_at < 12, "finished before the scancel"

  again = sbatch(slurm, tmp_path, *CPU_TASKS, LAUNCHER, *args, env=env)
  slurm.wait(again, timeout_s=300)
  log = (tmp_path / f"slurm-{again}.out").read_text()
  assert slurm.job_state(again) == ("COMPLETED", "0:0"), log[-3000:]
  assert "resumed from" in log

  # The same run through launch_distributed.sh: one process over 2 CPU devices.
  one = subprocess.run(["bash", os.path.join(REPO, "scripts", "launch_distributed.sh"), "4M", "2",
                        "data", "runs/one", *args[3:]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-3000:]
  ref, got = _losses(tmp_path / "runs" / "one"), _losses(tmp_path / "runs" / "slurm")
  assert sorted(got) == sorted(ref) == list(range(1, 13))
  assert got == ref  # equal floats, step by step
  p_ref, _ = checkpoint.restore_params(str(tmp_path / "runs" / "one" / "checkpoints"))
  p_got, meta = checkpoint.restore_params(str(tmp_path / "runs" / "slurm" / "checkpoints"))
  assert meta["step"] == 12
  for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_got)):
    np.testing.assert_array_equal(a, b)
