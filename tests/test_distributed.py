"""Multi-process and multi-device training through `python -m olmo_jax.train`.

Cluster detection (explicit flags, SLURM, one host) is checked on environments given as dicts;
the slow tests run real jax.distributed processes and fake-device meshes on the CPU.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, TINY_RUN_FLAGS

from olmo_jax import checkpoint, distributed

TINY = TINY_RUN_FLAGS


def env_for(devices: int) -> dict:
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu", PYTHONPATH=REPO)


def train_cmd(workdir, *extra) -> list[str]:
  return [sys.executable, "-m", "olmo_jax.train", "--workdir", str(workdir), *TINY, *extra]


def losses(workdir) -> dict[int, float]:
  """{step: loss} of metrics.jsonl; a step logged twice (before a kill and after resume) must
  carry the same loss both times."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for row in map(json.loads, f):
      assert out.setdefault(row["step"], row["loss"]) == row["loss"], row
  return out


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
  """Two token files of ids in [2, 511) (a learnable, repeating sequence)."""
  d = tmp_path_factory.mktemp("tokens")
  os.makedirs(d / "a")
  ids = (np.arange(20000) * 7919 % 509 + 2).astype(np.uint16)
  ids[:10000].tofile(d / "a" / "part-0.npy")
  ids[10000:].tofile(d / "a" / "part-1.npy")
  return d


def data_flags(token_dir) -> list[str]:
  return ["--config.data.mixture=custom", f"--config.data.data_dir={token_dir}",
          "--config.data.sources=a=a/*.npy"]


# ------------------------------------------------------------------ detection (no processes)


def test_explicit_flags():
  s = distributed.detect("10.0.0.1:1234", 4, 3, env={})
  assert (s.kind, s.coordinator, s.num_processes, s.process_id) == ("explicit", "10.0.0.1:1234",
                                                                    4, 3)
  assert distributed.detect(None, 1, 0, env={}).kind == "single"
  assert distributed.detect(env={}, tpu=False).kind == "single"


@pytest.mark.parametrize("args,match", [
    (("h:1", 2, None), "also pass --process_id"),
    ((None, 2, 0), "also pass --coordinator"),
    (("h:1", 2, 2), r"--process_id=2 must be in \[0, 2\)"),
    (("nohostport", 2, 0), "must be HOST:PORT"),
    (("h:1", 0, 0), "--num_processes=0 must be >= 1"),
])
def test_bad_explicit_flags_name_the_flag(args, match):
  with pytest.raises(ValueError, match=match):
    distributed.detect(*args, env={})


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[007-008,12],cpu1",
         "SLURM_STEP_NUM_NODES": "3"}


def test_slurm_one_task_per_node_sees_all_its_gpus():
  s = distributed.detect(env=dict(SLURM, SLURM_NTASKS="3", SLURM_PROCID="2", SLURM_LOCALID="0"))
  assert s.kind == "slurm" and s.num_processes == 3 and s.process_id == 2
  assert s.coordinator == f"gpu007:{61440 + 4242 % 4096}"
  assert s.local_device_ids is None


def test_slurm_one_task_per_gpu():
  env = dict(SLURM, SLURM_NTASKS="24", SLURM_PROCID="13", SLURM_LOCALID="5",
             JAX_COORDINATOR_PORT="7777")
  s = distributed.detect(env=env)
  assert (s.num_processes, s.process_id, s.local_device_ids) == (24, 13, (5,))
  assert s.coordinator == "gpu007:7777"
  # srun --gpus-per-task=1 already bound the task's GPU: it sees one device, id 0.
  assert distributed.detect(env=dict(env, CUDA_VISIBLE_DEVICES="5")).local_device_ids is None


def test_slurm_single_task_and_node_lists():
  assert distributed.detect(env=dict(SLURM, SLURM_NTASKS="1", SLURM_PROCID="0"),
                            tpu=False).kind == "single"
  assert distributed.first_slurm_host("node001") == "node001"
  assert distributed.first_slurm_host("a-[10-20]") == "a-10"
  assert distributed.first_slurm_host("x[3,5-9],y[1-2]") == "x3"


def test_cli_rejects_incomplete_multiprocess_flags(tmp_path):
  proc = subprocess.run(train_cmd(tmp_path / "w", "--num_processes", "2"), env=env_for(1),
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "also pass --coordinator --process_id" in proc.stderr
  assert not os.path.exists(tmp_path / "w")


# ------------------------------------------------------------------ real processes (slow)


@pytest.mark.slow
def test_two_processes_match_one_and_resume_bit_exactly_after_kill(token_dir, tmp_path):
  common = [*data_flags(token_dir), "--config.train.steps=10",
            "--config.checkpoint.async_save=False"]
  # Reference: one process over 2 devices, the same global batch of 8 and the same mesh.
  ref = tmp_path / "one"
  proc = subprocess.run(train_cmd(ref, *common), env=env_for(2), cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  ref_losses = losses(ref)
  assert sorted(ref_losses) == list(range(1, 11))

  # Two processes of one device each, a checkpoint every step; both killed (SIGKILL) once
  # step 3 is committed, while they are still training.
  work = tmp_path / "two"
  port = free_port()

  def launch():
    return [subprocess.Popen(
        train_cmd(work, *common, "--config.checkpoint.every=1", "--coordinator",
                  f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)),
        env=env_for(1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]

  procs = launch()
  step3 = work / "checkpoints" / "3"
  deadline = time.time() + 300
  while not step3.is_dir() or checkpoint.incomplete_reason(str(step3)) is not None:
    assert time.time() < deadline and all(p.poll() is None for p in procs), "no step 3"
    time.sleep(0.02)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  outs = [p.communicate(timeout=60)[0] for p in procs]
  assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2, "finished before the kill"
  killed_at = max(losses(work))
  assert 3 <= killed_at < 10
  # Only process 0 prints the training log.
  assert "step 1/10" in outs[0] and "step 1/10" not in outs[1]

  port = free_port()
  procs = launch()
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  resumed = int(outs[0].split("at step ")[1].split()[0])
  assert 3 <= resumed < 10 and "resumed from" in outs[0]
  got = losses(work)
  assert sorted(got) == list(range(1, 11))
  # The same global batch gives the same losses: each process read its own half of it.
  for step, loss in got.items():
    assert loss == pytest.approx(ref_losses[step], rel=1e-6), step
  # Bit-exact resume: the final params equal the one-process run's bit for bit.
  p_ref, _ = checkpoint.restore_params(str(ref / "checkpoints"))
  p_two, meta = checkpoint.restore_params(str(work / "checkpoints"))
  assert meta["step"] == 10
  for a, b in zip(_leaves(p_ref), _leaves(p_two)):
    np.testing.assert_array_equal(a, b)


def _leaves(tree):
  import jax
  return jax.tree.leaves(tree)


@pytest.mark.slow
def test_meshes_of_8_devices_match_one_device(token_dir, tmp_path):
  common = [*data_flags(token_dir), "--config.train.steps=12", "--config.checkpoint.enabled=False"]
  runs = {}
  for mesh, devices in (((1, 1, 1), 1), ((8, 1, 1), 8), ((1, 8, 1), 8), ((2, 2, 2), 8)):
    work = tmp_path / "x".join(map(str, mesh))
    flags = [f"--config.mesh.{a}={n}" for a, n in zip(("data", "fsdp", "tensor"), mesh)]
    proc = subprocess.run(train_cmd(work, *common, *flags), env=env_for(devices), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"mesh {{'data': {mesh[0]}, 'fsdp': {mesh[1]}, 'tensor': {mesh[2]}}}" in proc.stdout
    runs[mesh] = losses(work)
  one = runs.pop((1, 1, 1))
  assert sorted(one) == list(range(1, 13))
  assert one[12] < one[1] - 0.5  # it learns
  for mesh, got in runs.items():
    assert sorted(got) == sorted(one), mesh
    for step in one:
      assert got[step] == pytest.approx(one[step], rel=1e-5), (mesh, step)


def test_coordinator_that_never_answers_ends_with_one_error_line(tmp_path):
  port = free_port()  # nothing listens there
  proc = subprocess.run(
      train_cmd(tmp_path / "w", "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
                "--process_id", "1", "--coordinator_timeout", "3"),
      env=env_for(1), cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert (f"waiting for the coordinator 127.0.0.1:{port}, process 1 of 2, up to 3 s"
          in lines)
  assert lines[-1].startswith(f"error: the coordinator 127.0.0.1:{port} did not answer "
                              "within 3 s (process 1 of 2)"), lines[-1]
  assert sum(line.startswith("error:") for line in lines) == 1


def test_coordinator_timeout_must_be_positive(tmp_path):
  proc = subprocess.run(train_cmd(tmp_path / "w", "--coordinator_timeout", "0"),
                        env=env_for(1), cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "--coordinator_timeout=0 must be > 0" in proc.stderr


@pytest.mark.slow
def test_process_1_may_start_first_on_a_workdir_that_does_not_exist_yet(tmp_path):
  """Processes start in any order: process 1 starts 3 s before process 0 has made the
  workdir, and each writes its own log."""
  work = tmp_path / "not" / "yet"
  port = free_port()

  def launch(i):
    return subprocess.Popen(
        train_cmd(work, "--config.train.steps=3", "--config.checkpoint.enabled=False",
                  "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
                  "--process_id", str(i)),
        env=env_for(1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  first = launch(1)
  time.sleep(3)
  assert first.poll() is None, first.communicate()[0][-2000:]
  second = launch(0)
  outs = [p.communicate(timeout=300)[0] for p in (second, first)]
  assert [second.returncode, first.returncode] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
  assert "waiting for the coordinator" in outs[1] and "waiting for the other" in outs[0]
  assert sorted(losses(work)) == [1, 2, 3]
  assert (work / "train.log").exists() and (work / "train.1.log").exists()
