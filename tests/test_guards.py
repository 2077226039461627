"""Resume guards through the training CLI: a resume only continues the same run, and damaged
checkpoints are never started over or deleted without being asked (issue: safe by default).

Every run is a real `python -m olmo_jax.train` subprocess on a tiny model, as a user types it.
"""

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from olmo_jax import checkpoint, cli
from olmo_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.data.mixture=synthetic", "--config.model.size=custom", "--config.model.d_model=32",
    "--config.model.n_heads=2", "--config.model.n_layers=2", "--config.model.vocab_size=500",
    "--config.model.embedding_size=512", "--config.train.batch_size=2",
    "--config.train.seq_len=32", "--config.train.steps=4", "--config.train.warmup_steps=1",
    "--config.train.log_every=1", "--config.train.progress_bar=False",
    "--config.checkpoint.every=2",
]


@pytest.fixture(scope="module")
def env(cli_env):
  return cli_env


def train(workdir, env, *overrides):
  """(returncode, stdout, stderr) of `python -m olmo_jax.train` on the tiny config."""
  proc = subprocess.run(
      [sys.executable, "-m", "olmo_jax.train", "--config",
       os.path.join(ROOT, "configs", "train.py") + ":4M", "--workdir", str(workdir), *TINY,
       *overrides], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stdout, proc.stderr


def snapshot(workdir):
  """{relative path: sha256} of every file of the run in the workdir (not the trainer's own
  log and lock files, which record each start)."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      if root == str(workdir) and f in (cli.LOG_FILE, workdir_lib.LOCK_NAME):
        continue
      path = os.path.join(root, f)
      out[os.path.relpath(path, workdir)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


def test_resume_refuses_model_or_data_changes_before_writing_and_allows_harmless_ones(env,
                                                                                   tmp_path):
  rc, out, err = train(tmp_path, env)
  assert rc == 0, err[-3000:]
  before = snapshot(tmp_path)
  # Other attention heads and RoPE base on the old weights, and another data seed: refused.
  rc, out, err = train(tmp_path, env, "--config.model.n_heads=4",
                       "--config.model.rope_theta=20000", "--config.data.seed=7",
                       "--config.train.steps=6")
  assert rc == 2, out[-2000:] + err[-3000:]
  assert "refusing to resume" in err and "Traceback" not in err
  assert "model.n_heads" in err and "checkpoint 2  ->  now 4" in err
  assert "model.rope_theta" in err and "data.seed" in err
  assert "train.steps" not in err  # harmless: not part of the refusal
  assert "--config.checkpoint.allow_config_change=true" in err
  assert snapshot(tmp_path) == before  # nothing written: config.json, metrics, checkpoints
  # More steps and another checkpoint cadence: allowed and logged; the data seed too, but only
  # because the explicit flag says so.
  rc, out, err = train(tmp_path, env, "--config.train.steps=6", "--config.checkpoint.every=3",
                       "--config.data.seed=7", "--config.checkpoint.allow_config_change=true")
  assert rc == 0, err[-3000:]
  assert "resume: train.steps: 4 -> 6 (allowed)" in out
  assert "resume: checkpoint.every: 2 -> 3 (allowed)" in out
  assert "resume: data.seed: -1 -> 7 (allowed by checkpoint.allow_config_change)" in out
  assert "resumed from" in out and "at step 4" in out
  assert checkpoint.complete_steps(os.path.join(tmp_path, "checkpoints"))[-1] == 6


def _truncate_state(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
           for f in fs]
  biggest = max(files, key=os.path.getsize)
  os.truncate(biggest, os.path.getsize(biggest) // 2)


def _flip_state_bytes(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
           for f in fs]
  biggest = max(files, key=os.path.getsize)
  data = bytearray(open(biggest, "rb").read())
  data[len(data) // 3] ^= 0xFF
  open(biggest, "wb").write(bytes(data))


def test_all_damaged_checkpoints_are_never_started_over_or_deleted_unasked(env, tmp_path):
  ckpt_dir = os.path.join(tmp_path, "checkpoints")
  rc, out, err = train(tmp_path, env)
  assert rc == 0, err[-3000:]
  assert checkpoint.complete_steps(ckpt_dir) == [2, 4]
  for step in (2, 4):  # truncated: seen without reading the bytes
    _truncate_state(os.path.join(ckpt_dir, str(step)))
  before = snapshot(tmp_path)
  rc, out, err = train(tmp_path, env)
  assert rc == 2, out[-2000:] + err[-3000:]
  assert f"every checkpoint in {ckpt_dir} is damaged" in err and "Traceback" not in err
  assert "--config.checkpoint.start_fresh_if_damaged=true" in err
  assert snapshot(tmp_path) == before  # refused before writing anything
  # Asked for: the damaged steps are moved aside (reported), and training starts at step 1.
  rc, out, err = train(tmp_path, env, "--config.checkpoint.start_fresh_if_damaged=true")
  assert rc == 0, err[-3000:]
  assert "resumed from" not in out and "step 1/4" in out
  for step in (2, 4):
    aside = os.path.join(ckpt_dir, checkpoint.DAMAGED, str(step))
    # Reported once, as a warning line on stderr (it once came on stdout and stderr both).
    assert (out + err).count(f"moved damaged step {step} ") == 1
    assert f"warning: checkpoint: moved damaged step {step} " in err and aside in err
    # Every byte is still there, under the new name.
    assert {k.replace(f"checkpoints/{checkpoint.DAMAGED}/{step}/", f"checkpoints/{step}/"): v
            for k, v in snapshot(tmp_path).items()
            if k.startswith(f"checkpoints/{checkpoint.DAMAGED}/{step}/")} == {
                k: v for k, v in before.items() if k.startswith(f"checkpoints/{step}/")}
  assert checkpoint.complete_steps(ckpt_dir) == [2, 4]  # the new run's own checkpoints
  # Corrupt bytes of the right size: found only by the CRC32s at restore; refused the same way.
  for step in (2, 4):
    _flip_state_bytes(os.path.join(ckpt_dir, str(step)))
  rc, out, err = train(tmp_path, env)
  assert rc == 2, out[-2000:] + err[-3000:]
  assert f"every checkpoint in {ckpt_dir} is damaged" in err and "CRC32" in err
  assert sorted(checkpoint.step_dirs(ckpt_dir)) == [2, 4]  # still in place
  rc, out, err = train(tmp_path, env, "--config.checkpoint.start_fresh_if_damaged=true")
  assert rc == 0, err[-3000:]
  assert os.path.isdir(os.path.join(ckpt_dir, checkpoint.DAMAGED, "4.1"))
  assert os.path.isdir(os.path.join(ckpt_dir, checkpoint.DAMAGED, "2.1"))


def test_bad_config_leaves_a_new_workdir_absent_and_an_existing_one_untouched(env, tmp_path):
  new = tmp_path / "new" / "run"
  # Passes flag parsing, fails in the run's validation (after the lock and log were made).
  rc, out, err = train(new, env, "--config.train.microbatch_size=3")
  assert rc == 2, out[-2000:] + err[-3000:]
  assert err.startswith("error: ") and "Traceback" not in err
  assert not new.exists()  # neither the lock, the log nor the directory stays
  existing = tmp_path / "mine"
  existing.mkdir()
  (existing / "notes.txt").write_text("keep me")
  rc, out, err = train(existing, env, "--config.train.microbatch_size=3")
  assert rc == 2
  assert (existing / "notes.txt").read_text() == "keep me"
  # An existing directory keeps its (now released) lock file and the log with the traceback.
  assert "bad input" in (existing / cli.LOG_FILE).read_text()
  assert (existing / workdir_lib.LOCK_NAME).read_text() == ""


def test_bad_token_ids_at_the_first_batch_leave_a_new_workdir_absent(env, tmp_path):
  data = tmp_path / "data" / "web"
  data.mkdir(parents=True)
  np.save(data / "part-00000.npy", np.full(4_000, 5_000, np.uint16))  # ids >= vocab_size 500
  new = tmp_path / "new" / "run"
  # Fails at the first batch, after config.json, metrics, TensorBoard and checkpoints/ exist.
  rc, out, err = train(new, env, "--config.data.mixture=all",
                       f"--config.data.data_dir={tmp_path / 'data'}")
  assert rc == 2, out[-2000:] + err[-3000:]
  assert err.startswith("error: source 'web': token id 5000 >= vocab_size 500")
  assert "Traceback" not in err
  assert not new.exists()


def test_loss_rise_rule_on_planted_curves():
  from olmo_jax.hooks import LossRise

  def said(losses):
    rule = LossRise()
    return [step for step, x in enumerate(losses, 1) if rule.update(step, {"ce": x})]

  assert said([10.8, 9.0, 7.5, 6.0, 5.5, 5.0]) == []  # training
  assert said([10.8, 13.0, 10.0, 14.0, 9.0, 12.0, 9.0]) == []  # spikes that come back
  assert said([10.8, 11.7, 11.7, 11.7, 11.7]) == []  # within 1 nat of the start
  assert said([10.8, 12.0, float("nan"), 20.0, 108.0, 108.0, 108.0]) == [5]  # once
  assert said([3.0, 2.9, 4.5, 4.6, 4.7]) == [5]  # a resumed run: its own first value


def test_diverging_run_is_warned_once_and_a_normal_run_not(env, tmp_path):
  off = ("--config.checkpoint.enabled=false",)
  # lr 1e3 under a warmup longer than the run: the loss climbs from 6.2 into the thousands
  # while every value stays finite, so only this rule says anything.
  rc, out, err = train(tmp_path / "a", env, "--config.train.lr=1e3",
                       "--config.train.warmup_steps=100", "--config.train.steps=6", *off)
  assert rc == 0, err[-3000:]
  warnings = [x for x in err.splitlines() if x.startswith("warning: ")]
  assert len(warnings) == 1 and "the run is diverging; lower train.lr" in warnings[0], err
  assert re.match(r"warning: loss \S+ at step 4 \(lr 40\) has stayed more than 1 nat above "
                  r"its first logged value 6\.\d+ for 3 logged steps", warnings[0]), warnings
  assert "diverging" not in out
  rc, out, err = train(tmp_path / "b", env, "--config.train.steps=40", *off)
  assert rc == 0, err[-3000:]
  assert "warning" not in err and "diverging" not in out + err, err
