"""Packs (`python -m olmo_jax.train_pack`): K runs as one program, each still its own run.

Every replica's logged losses, held-out loss and final parameters equal a separate
`python -m olmo_jax.train` run of the same flags within float rounding, its batches are the
separate run's token for token, and kill -9 of a pack resumes every replica. Measured on CPU,
f32, 40 steps at lr 4e-3: with the CPU's default pack mode ('map': the plain step, looped over
the replicas inside one program) losses, gradient norms, held-out losses and final parameters
are bit-identical; with 'vmap' (accelerators' default, batched matmuls summing in another
order) within 1.2e-7 relative (losses) and 1.2e-7 absolute (parameters). The tests allow 1e-6.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO

from olmo_jax import checkpoint, pack, pack_plan, train, train_pack, trainer
from olmo_jax import hooks as hooks_lib
from olmo_jax.console import Console
from olmo_jax.plan import Plan

# A tiny model on the synthetic stream; the replicas differ in train.seed and data.seed.
BASE = ["--config", "configs/train.py:4M", "--config.model.size=custom",
        "--config.model.d_model=32", "--config.model.n_heads=2", "--config.model.n_layers=2",
        "--config.model.vocab_size=500", "--config.model.embedding_size=512",
        "--config.data.mixture=synthetic", "--config.train.batch_size=4",
        "--config.train.seq_len=32", "--config.train.warmup_steps=1",
        "--config.train.progress_bar=false", "--config.train.log_every=1",
        "--config.train.lr=0.004"]
SEEDS = [("a", 1, -1), ("b", 2, 7)]  # (name, train.seed, data.seed)
LOSS_RTOL, PARAM_ATOL = 1e-6, 1e-6


def _flags(root, name, seed, data_seed, steps=6, every=3, extra=()):
  return [*BASE, f"--workdir={root}/{name}", f"--config.train.seed={seed}",
          f"--config.data.seed={data_seed}", f"--config.train.steps={steps}",
          f"--config.checkpoint.every={every}", f"--config.eval.every={every}", *extra]


def _run(module, args, env, **kw):
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _pack_args(flag_lists):
  return [a for flags in flag_lists for a in ("--replica", " ".join(flags))]


def _metrics(workdir) -> dict[int, dict]:
  """{step: metrics} of metrics.jsonl (the newest line of a step logged twice)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {m["step"]: m for m in map(json.loads, f)}


def _assert_same_run(packed, alone, final_step):
  mp, ma = _metrics(packed), _metrics(alone)
  assert sorted(mp) == sorted(ma) == list(range(1, final_step + 1))
  for step in ma:
    for key in ("loss", "grad_norm", "lr", "eval_loss"):
      if key in ma[step]:
        np.testing.assert_allclose(mp[step][key], ma[step][key], rtol=LOSS_RTOL,
                                   err_msg=f"{key} at step {step}")
  p, _ = checkpoint.restore_params(os.path.join(packed, "checkpoints", str(final_step)))
  q, _ = checkpoint.restore_params(os.path.join(alone, "checkpoints", str(final_step)))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=PARAM_ATOL), p, q)
  with open(os.path.join(packed, "config.json")) as f, open(os.path.join(alone,
                                                                         "config.json")) as g:
    assert json.load(f) == json.load(g)


def test_replica_equals_its_separate_run(cli_env, tmp_path):
  # The pack and the separate run of replica b run at the same time (two cores).
  procs = [_run("olmo_jax.train_pack", _pack_args(
      [_flags(tmp_path / "pack", *s) for s in SEEDS]), cli_env),
      _run("olmo_jax.train", _flags(tmp_path / "alone", *SEEDS[1]), cli_env)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "[a] step 6/6" in outs[0][0] and "[b] step 6/6" in outs[0][0]
  _assert_same_run(str(tmp_path / "pack" / "b"), str(tmp_path / "alone" / "b"), 6)
  with open(tmp_path / "pack" / "a" / "train.log") as f:
    assert "step 6/6" in f.read()  # each replica's own log, as a cell's
  assert sorted(os.listdir(tmp_path / "pack" / "a" / "checkpoints")) == ["3", "6"]


def test_pack_of_different_settings_is_refused_before_writing(cli_env, tmp_path):
  flags = [_flags(tmp_path, *SEEDS[0]),
           _flags(tmp_path, *SEEDS[1], extra=["--config.train.lr=0.01"])]
  p = _run("olmo_jax.train_pack", _pack_args(flags), cli_env)
  out, err = p.communicate(timeout=300)
  assert p.returncode == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: replica 1 (") and "train.lr" in lines[0]
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_packed_batches_are_each_runs_batches_token_for_token(tmp_path):
  flags = [_flags(tmp_path, *s) for s in SEEDS]
  replicas = [train_pack.parse_replica(f) for f in flags]
  cfgs, datas = train_pack.resolve_replicas(replicas)
  loop = pack.PackLoop(["a", "b"], 0, 6, [[], []], trainer.UpdatePolicy(),
                       [Console(0, 6, progress_bar=False)] * 2)
  batches = pack.PackBatches(loop, [train.build_data(c, d) for c, d in zip(cfgs, datas)], (4, 33))
  alone = [train.build_data(c, d) for c, d in zip(cfgs, datas)]
  for _ in range(5):
    ids = np.asarray(next(batches)["input_ids"])
    for i, it in enumerate(alone):
      np.testing.assert_array_equal(ids[i], next(it)["input_ids"])
  assert not np.array_equal(ids[0], ids[1])  # two data streams


@pytest.mark.slow
def test_kill_9_of_a_pack_resumes_every_replica(cli_env, tmp_path):
  steps, every = 40, 5
  flag_lists = [_flags(tmp_path / "pack", *s, steps=steps, every=every) for s in SEEDS]
  p = _run("olmo_jax.train_pack", _pack_args(flag_lists), cli_env)
  deadline = time.time() + 300
  while time.time() < deadline and p.poll() is None:
    done = [os.path.isdir(tmp_path / "pack" / n / "checkpoints" / "10") for n, _, _ in SEEDS]
    if all(done):
      break
    time.sleep(0.2)
  p.send_signal(signal.SIGKILL)
  p.communicate()
  assert p.returncode == -signal.SIGKILL, "the pack finished before the kill"
  again = _run("olmo_jax.train_pack", _pack_args(flag_lists), cli_env)
  alone = _run("olmo_jax.train", _flags(tmp_path / "alone", *SEEDS[0], steps=steps,
                                        every=every), cli_env)
  out, err = again.communicate(timeout=600)
  assert again.returncode == 0, err[-3000:]
  assert alone.wait(timeout=600) == 0
  for name, _, _ in SEEDS:
    with open(tmp_path / "pack" / name / "train.log") as f:
      assert "resumed from" in f.read()
  _assert_same_run(str(tmp_path / "pack" / "a"), str(tmp_path / "alone" / "a"), steps)
  # The replica is an ordinary run: the trainer resumes it alone and finds it done.
  proc = subprocess.run([sys.executable, "-m", "olmo_jax.train", *flag_lists[1]], cwd=REPO,
                        env=cli_env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"resumed from {tmp_path}/pack/b/checkpoints at step {steps}" in proc.stdout


class _Seen(hooks_lib.Hook):
  def __init__(self):
    self.steps = []

  def on_metrics(self, loop, step, host, extra, force):
    self.steps.append(step)


def test_a_diverging_replica_is_named_and_the_others_go_on():
  said = []
  hooks = [[_Seen()], [_Seen()]]
  loop = pack.PackLoop(["clean/s/seed1", "noisy/s/seed1"], 0, 4, hooks, trainer.UpdatePolicy(),
                       [Console(0, 4, progress_bar=False, print_fn=said.append)] * 2,
                       print_fn=said.append)

  def step_fn(state, batch):  # replica 1's loss turns NaN at step 2
    bad = float("nan") if state["step"] >= 1 else 1.0
    return {"step": state["step"] + 1}, {"loss": np.array([1.0, bad]),
                                         "grad_norm": np.array([1.0, 1.0]),
                                         "finite": np.array([1.0, float(bad == 1.0)])}

  step, _, stopped = pack.pack_loop({"step": 0}, step_fn, iter([{}] * 4), loop)
  assert (step, stopped) == (4, False)
  assert hooks[0][0].steps == [1, 2, 3, 4] and hooks[1][0].steps == [1]
  assert [r.name for r in loop.live()] == ["clean/s/seed1"]
  assert any(line.startswith("[pack] replica noisy/s/seed1 failed: non-finite loss (nan)")
             for line in said)


def test_sigterm_stops_every_replica_after_the_step_and_saves_it(tmp_path):
  saved = []

  class Save(hooks_lib.Hook):
    every = 1

    def __call__(self, loop):
      if loop.stop_reason is not None:
        saved.append((loop.name, loop.step))

  loop = pack.PackLoop(["a", "b"], 0, 10, [[Save()], [Save()]], trainer.UpdatePolicy(),
                       [Console(0, 10, progress_bar=False, print_fn=lambda s: None)] * 2)

  def step_fn(state, batch):
    if state["step"] == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # the study (or a scheduler) stops the pack
    return {"step": state["step"] + 1}, {"loss": np.ones(2), "grad_norm": np.ones(2),
                                         "finite": np.ones(2)}

  step, _, stopped = pack.pack_loop({"step": 0}, step_fn, iter([{}] * 10), loop,
                                    [hooks_lib.StopOnSignal()])
  assert (step, stopped) == (3, True) and saved == [("a", 3), ("b", 3)]


@pytest.mark.parametrize("capacity", [1, 2, 3, 37, 200, 1000, 4096])
def test_largest_k_finds_the_planted_capacity_in_few_compiles(capacity):
  """Plans whose bytes grow linearly with K on a device that holds `capacity` replicas (with
  a little curvature, as XLA's layouts give): the search lands within 1/16 of the capacity
  in at most 7 compiles, never above it."""
  base, per = 3e9, 1.7e9
  device = int(base + per * capacity + per / 2)
  calls = []

  def make(k):
    calls.append(k)
    total = int(base + per * k * (1 + 1e-4 * k / max(capacity, 1)))
    return Plan("compiled", "gpu", "h100", 1, {}, total, 0, 0, 0, device, 1.0, 1, 1.0, 0.0)

  k = pack_plan.largest_k(make)
  assert len(calls) <= 7, calls
  fit = [n for n in calls if int(base + per * n * (1 + 1e-4 * n / capacity)) <= device]
  assert k == max(fit) and k <= capacity and k >= capacity - max(1, capacity // 16), (k, calls)


def test_largest_k_counts_a_refused_step_as_over_and_zero_when_one_does_not_fit():

  def make(k):
    if k > 5:
      raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm")
    return Plan("compiled", "tpu", "v5e", 1, {}, k * 10, 0, 0, 0, 100, 1.0, 1, 1.0, 0.0)

  assert pack_plan.largest_k(make) == 5
  assert pack_plan.largest_k(lambda k: Plan("compiled", "tpu", "v5e", 1, {}, 200, 0, 0, 0, 100,
                                            1.0, 1, 1.0, 0.0)) == 0


def test_a_replica_whose_save_fails_leaves_the_pack_and_the_others_go_on():
  """A checkpoint save that fails (a full disk) fails that replica only, named."""
  said = []

  class _FailingSave(_Seen):
    every = 1

    def __call__(self, loop):
      if loop.step == 2:
        raise checkpoint.CheckpointError("saving checkpoint step 2 to /x failed: OSError: "
                                         "No space left on device")

  hooks = [[_Seen()], [_FailingSave(), _Seen()]]
  loop = pack.PackLoop(["clean/s/seed1", "noisy/s/seed1"], 0, 4, hooks, trainer.UpdatePolicy(),
                       [Console(0, 4, progress_bar=False, print_fn=said.append)] * 2,
                       print_fn=said.append)

  def step_fn(state, batch):
    return {"step": state["step"] + 1}, {"loss": np.array([1.0, 1.0]),
                                         "grad_norm": np.array([1.0, 1.0]),
                                         "finite": np.array([1.0, 1.0])}

  step, _, stopped = pack.pack_loop({"step": 0}, step_fn, iter([{}] * 4), loop)
  assert (step, stopped) == (4, False)
  assert hooks[0][0].steps == [1, 2, 3, 4]
  assert [r.name for r in loop.live()] == ["clean/s/seed1"]
  assert any(line.startswith("[pack] replica noisy/s/seed1 failed: CheckpointError: saving "
                             "checkpoint step 2") for line in said), said


@pytest.mark.parametrize("args,line", [
    (["--pack_microbatch", "0"], "--pack_microbatch 0 must be >= 1 (sequences per microbatch)"),
    (["--pack_microbatch", "5"], "--pack_microbatch 5 must divide 4M's batch of 32 sequences"),
])
def test_compile_matrix_pack_column_refuses_a_bad_microbatch_before_compiling(args, line):
  proc = subprocess.run([sys.executable, "benchmarks/compile_matrix.py", "--sizes", "--packs",
                         "4M", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == f"compile_matrix.py: error: {line}"
