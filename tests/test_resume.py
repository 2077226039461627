"""Resume through the training CLI: kill -9, SIGTERM/SIGINT, NaN stops, and random kills.

Every run is a real `python -m olmo_jax.train` subprocess on a tiny model; a compilation
cache shared by the module keeps restarts to a few seconds.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from olmo_jax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
EVERY = 5
TINY = [
    "--config.data.mixture=synthetic", "--config.model.size=custom", "--config.model.d_model=32",
    "--config.model.n_heads=2", "--config.model.n_layers=2", "--config.model.vocab_size=500",
    "--config.model.embedding_size=512", "--config.train.batch_size=4",
    "--config.train.seq_len=32", "--config.train.warmup_steps=4", "--config.train.log_every=1",
    "--config.train.progress_bar=False", f"--config.checkpoint.every={EVERY}",
    "--config.checkpoint.keep=3",
]
RESUMED = re.compile(r"resumed from .* at step (\d+)")


@pytest.fixture(scope="module")
def env(cli_env):
  return cli_env


def cli(workdir, *overrides):
  return [sys.executable, "-m", "olmo_jax.train", "--config",
          os.path.join(ROOT, "configs", "train.py") + ":4M", "--workdir", str(workdir), *TINY,
          f"--config.train.steps={STEPS}", *overrides]  # later overrides win


def start(workdir, env, *overrides):
  return subprocess.Popen(cli(workdir, *overrides), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def read_until(proc, pattern, timeout=300):
  """Lines of proc's output up to the first matching `pattern` (a regex), or to EOF."""
  lines, rx, t0 = [], re.compile(pattern), time.time()
  for line in proc.stdout:
    lines.append(line)
    if rx.search(line):
      break
    assert time.time() - t0 < timeout, "".join(lines[-50:])
  return lines


def finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  return out


def train(workdir, env, *overrides):
  proc = start(workdir, env, *overrides)
  out = finish(proc)
  assert proc.returncode == 0, out[-5000:]
  return out


def newest_committed(workdir) -> int:
  """Newest complete checkpoint step of a run (-1: none yet)."""
  directory = os.path.join(workdir, "checkpoints")
  steps = checkpoint.complete_steps(directory, quiet=True) if os.path.isdir(directory) else []
  return steps[-1] if steps else -1


def losses(workdir):
  """{step: loss} from metrics.jsonl; a step logged twice (replayed after a kill) must agree."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if row["step"] in out:
        assert out[row["step"]] == row["loss"], f"step {row['step']} replayed differently"
      out[row["step"]] = row["loss"]
  return out


def final(workdir):
  params, meta = checkpoint.restore_params(str(workdir))
  data = json.load(open(os.path.join(workdir, "checkpoints", str(meta["step"]), "data",
                                     "metadata")))
  return params, meta, data


def assert_same_run(a, b, steps=STEPS):
  la, lb = losses(a), losses(b)
  assert sorted(la) == sorted(lb) == list(range(1, steps + 1))
  assert la == lb  # every per-step loss, bit for bit
  (pa, ma, da), (pb, mb, db) = final(a), final(b)
  assert ma["step"] == mb["step"] == steps
  assert da == db  # the data iterator stopped at the same position
  la, lb = _leaves(pa), _leaves(pb)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)  # the final parameters, bit for bit


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, env):
  """An uninterrupted 60-step run (also fills the compilation cache)."""
  workdir = tmp_path_factory.mktemp("straight")
  train(workdir, env)
  return workdir


def test_sigkill_at_step_25_then_resume_is_bit_identical(straight, env, tmp_path):
  proc = start(tmp_path, env)
  read_until(proc, r"^step 25/60 ")
  proc.kill()  # SIGKILL: no handler runs, an async save may be half written
  proc.wait()
  out = train(tmp_path, env)
  resumed = int(RESUMED.search(out).group(1))
  # The newest complete checkpoint at the kill: 25, or earlier if 20/25 were still being written.
  assert resumed % EVERY == 0 and 0 < resumed <= 25, out[-3000:]
  assert_same_run(straight, tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_current_step_and_exits_0(straight, env, tmp_path, sig):
  proc = start(tmp_path, env)
  read_until(proc, r"^step 3/60 ")
  proc.send_signal(sig)
  out = finish(proc)
  assert proc.returncode == 0, out[-3000:]
  m = re.search(rf"{sig.name}: stopped after step (\d+); checkpoint saved at step (\d+)", out)
  assert m and m.group(1) == m.group(2), out[-3000:]
  stopped = int(m.group(1))
  assert 3 <= stopped < STEPS
  assert checkpoint.complete_steps(os.path.join(tmp_path, "checkpoints"))[-1] == stopped
  if sig == signal.SIGINT:
    return  # resuming after SIGTERM (below) covers the rest
  out = train(tmp_path, env)
  assert int(RESUMED.search(out).group(1)) == stopped
  assert_same_run(straight, tmp_path)


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(env, tmp_path):
  # An absurd learning rate overflows the weights within a few steps.
  proc = start(tmp_path, env, "--config.train.lr=1e30", "--config.checkpoint.every=1",
               "--config.train.warmup_steps=0")
  out = finish(proc)
  assert proc.returncode == 1, out[-3000:]
  m = re.search(r"non-finite loss .* at step (\d+); the last complete checkpoint is kept", out)
  assert m, out[-3000:]
  bad = int(m.group(1))
  steps = checkpoint.complete_steps(os.path.join(tmp_path, "checkpoints"))
  assert steps and steps[-1] == bad - 1  # no state from the NaN step was saved
  params, _ = checkpoint.restore_params(str(tmp_path))
  assert all(np.isfinite(x).all() for x in _leaves(params))


def test_resume_past_damaged_checkpoints_says_so_and_stays_bit_identical(straight, env,
                                                                         tmp_path):
  shutil.copytree(straight, tmp_path, dirs_exist_ok=True)  # checkpoints 50, 55, 60 (keep=3)
  ckpt_dir = os.path.join(tmp_path, "checkpoints")
  assert checkpoint.complete_steps(ckpt_dir) == [50, 55, 60]
  os.remove(os.path.join(ckpt_dir, "60", checkpoint.COMMIT_MARKER))
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(ckpt_dir, "55", "state"))
           for f in fs]
  biggest = max(files, key=os.path.getsize)
  os.truncate(biggest, os.path.getsize(biggest) // 2)
  out = train(tmp_path, env)
  assert f"skipping incomplete checkpoint {ckpt_dir}/60: commit marker" in out
  assert f"skipping incomplete checkpoint {ckpt_dir}/55: file state/" in out
  assert int(RESUMED.search(out).group(1)) == 50
  assert_same_run(straight, tmp_path)  # steps 51-60 replayed to the same bits


@pytest.mark.slow
def test_twenty_random_sigkills_then_same_final_loss(env, tmp_path):
  steps = 200
  # Checkpoints every 2 steps here, every 5 in the reference: the cadence must not matter.
  args = (f"--config.train.steps={steps}", "--config.checkpoint.every=2")
  reference = tmp_path / "reference"
  train(reference, env, f"--config.train.steps={steps}")
  workdir = tmp_path / "killed"
  rng = random.Random(1234)
  kills, resumed_at, stalled = 0, [], 0
  while kills < 20:
    before = newest_committed(workdir)
    proc = start(workdir, env, *args)
    mode = rng.choice(["save", "save", "step", "time"])
    if stalled >= 2:
      # On a loaded machine every kill can land before an async save commits, and the run
      # would never get past its first steps: this kill waits for one more committed step.
      mode = "commit"
    if mode == "time":  # anywhere: start-up, restore, compile or training
      time.sleep(rng.uniform(0.2, 6.0))
      lines = []
    elif mode == "commit":
      lines = []
      t0 = time.time()
      while newest_committed(workdir) <= before and proc.poll() is None:
        assert time.time() - t0 < 300, finish(proc)[-3000:]
        time.sleep(0.05)
    else:
      lines = read_until(proc, r"resumed from /|^step 1/")
      m = RESUMED.search(lines[-1])
      at = int(m.group(1)) if m else 1  # fresh start: the step 1 line was just read
      if m:
        resumed_at.append(at)
      if mode == "save":  # right after a save was dispatched: the async write is in flight
        target = at + 2 - at % 2 + 2 * rng.randrange(2)
      else:
        target = at + rng.randrange(1, 4)
      if target >= steps:
        break
      lines += read_until(proc, rf"^step {target}/{steps} ")
    assert proc.poll() is None, "".join(lines)[-3000:] + finish(proc)[-3000:]
    proc.kill()  # SIGKILL
    print(f"kill {kills + 1}: {mode}, last line {lines[-1].strip() if lines else '-'}")
    rest = finish(proc)
    kills += 1
    stalled = 0 if newest_committed(workdir) > before else stalled + 1
    assert "Traceback" not in "".join(lines) + rest, ("".join(lines) + rest)[-3000:]
  assert kills == 20
  out = train(workdir, env, *args)
  assert "Traceback" not in out
  assert all(s % 2 == 0 for s in resumed_at) and resumed_at
  assert losses(workdir)[steps] == losses(reference)[steps]
  assert_same_run(reference, workdir, steps)


@pytest.mark.slow
def test_a_shape_change_on_resume_is_refused_as_such_not_as_damage(env, tmp_path):
  train(tmp_path, env, "--config.train.steps=5")
  for extra in ((), ("--config.checkpoint.allow_config_change=true",)):
    proc = subprocess.run(cli(tmp_path, "--config.train.steps=10", "--config.model.n_layers=3",
                              *extra), env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(
        f"error: refusing to resume {tmp_path}/checkpoints/5: the new config (model.n_layers "
        "2 -> 3) changes the parameter shapes (blocks.attn_norm: (2, 32) -> (3, 32) and 8 "
        "more), so no checkpoint of this run can be restored into it (they are intact)"), (
            proc.stderr)
    assert "use a new --workdir for the new model" in lines[0]
    assert "damaged" not in proc.stderr and "allow_config_change" not in lines[0]
    assert "compiled" not in proc.stdout  # refused before the compile
  assert newest_committed(tmp_path) == 5 and not os.path.exists(
      os.path.join(tmp_path, "checkpoints", checkpoint.DAMAGED))
