"""The trainer end to end: learning, schedule, logging, accumulation, start-up validation."""

import glob
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from olmo_jax import config as config_lib
from olmo_jax import hooks, optim, trainer
from olmo_jax.cli import translate_aliases
from olmo_jax.train import run


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_4m_learns_repetitive_stream_and_follows_schedule(tiny_train_config, tmp_path):
  c = tiny_train_config
  c.train.steps = 200
  c.train.warmup_steps = 20
  c.train.lr = 3e-3
  c.train.log_every = 1
  result = run(c, str(tmp_path), print_fn=lambda s: None)
  losses = dict(result.history)
  assert losses[1] > 0.9 * math.log(50304)
  assert losses[200] < 0.25 * math.log(50304), losses[200]  # far below ln(V) = 10.8
  m = {r["step"]: r for r in _metrics(tmp_path)}
  peak, w, T = 3e-3, 20, 200
  assert m[w]["lr"] == pytest.approx(peak, rel=1e-6)  # warmup end
  assert m[1]["lr"] == pytest.approx(peak / w, rel=1e-6)
  mid = (w + T) // 2
  expected_mid = 0.01 * peak + 0.99 * peak * 0.5 * (1 + math.cos(math.pi * (mid - w) / (T - w)))
  assert m[mid]["lr"] == pytest.approx(expected_mid, rel=1e-5)
  assert m[T]["lr"] == pytest.approx(0.01 * peak, rel=1e-5)  # final step: 1% of peak
  assert m[T]["tokens"] == T * 4 * 32


def test_workdir_has_config_metrics_and_tensorboard(tiny_train_config, tmp_path):
  run(tiny_train_config, str(tmp_path), print_fn=lambda s: None)
  saved = config_lib.load_json(os.path.join(tmp_path, "config.json"))
  assert saved.train.steps == 20 and saved.model.d_model == 64
  assert saved.derived.non_embedding_params == 3_744_832
  rows = _metrics(tmp_path)
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(rows[-1])
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  events = glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
  assert events
  tags = {v.tag for e in EventFileLoader(events[0]).Load() for v in e.summary.value}
  assert {"loss", "lr", "grad_norm"} <= tags


def test_gradient_accumulation_matches_full_batch(tiny_model_config, train_state):
  cfg = tiny_model_config()
  import optax
  tx = optax.sgd(1.0)  # params move by exactly the gradient (Adam would amplify rounding)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 500, (8, 17)), jnp.int32)
  out = {}
  for m in (1, 4):
    state = train_state(cfg, tx)
    step = trainer.make_train_step(cfg, tx, trainer.StepConfig(microbatches=m))
    state, metrics = step(state, {"input_ids": ids})
    out[m] = (float(metrics["loss"]), float(metrics["grad_norm"]), state["params"])
  assert out[1][0] == pytest.approx(out[4][0], rel=1e-5)
  assert out[1][1] == pytest.approx(out[4][1], rel=1e-4)
  for a, b in zip(jax.tree.leaves(out[1][2]), jax.tree.leaves(out[4][2])):
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_z_loss_and_nan_skip_and_fp16_scaling(tiny_model_config, train_state):
  cfg = tiny_model_config()
  tx = optim.make_optimizer(peak_lr=1e-3, warmup_steps=0, total_steps=10)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 500, (4, 9)), jnp.int32)
  state = train_state(cfg, tx)
  step = trainer.make_train_step(cfg, tx, trainer.StepConfig(z_loss=1e-4))
  _, m = step(state, {"input_ids": ids})
  assert float(m["loss"]) == pytest.approx(float(m["ce"] + 1e-4 * m["z_loss"]), rel=1e-6)
  # A NaN in the params makes the step non-finite: 'skip' keeps the old params.
  state = train_state(cfg, tx)
  state["params"]["lm_head"] = state["params"]["lm_head"].at[0, 0].set(jnp.nan)
  before = np.asarray(state["params"]["embed"])
  skip = trainer.StepConfig(policy=trainer.UpdatePolicy(nonfinite="skip"))
  step = trainer.make_train_step(cfg, tx, skip)
  state, m = step(state, {"input_ids": ids})
  assert not bool(m["finite"])
  np.testing.assert_array_equal(np.asarray(state["params"]["embed"]), before)
  # fp16 with dynamic loss scaling: an overflowing scale halves and the update is skipped.
  cfg16 = tiny_model_config(dtype="float16")
  state = train_state(cfg16, tx, loss_scale=2.0 ** 30)
  scaled = trainer.StepConfig(policy=trainer.UpdatePolicy(loss_scaling=True))
  step = trainer.make_train_step(cfg16, tx, scaled)
  state, m = step(state, {"input_ids": ids})
  assert not bool(m["finite"]) and float(state["loss_scale"]["scale"]) == 2.0 ** 29
  state = train_state(cfg16, tx, loss_scale=1024.0)
  state, m = step(state, {"input_ids": ids})
  assert bool(m["finite"]) and math.isfinite(float(m["loss"]))
  assert int(state["loss_scale"]["good_steps"]) == 1


@pytest.mark.parametrize("field,value,message", [
    ("model.size", "3M", "model.size='3M'"),
    ("model.variant", "gpt2", "model.variant='gpt2'"),
    ("model.n_heads", 7, "model.n_heads=7"),
    ("train.lr", -0.1, "train.lr=-0.1"),
    ("train.seq_len", 4096, "train.seq_len=4096 exceeds the RoPE table"),
    ("train.microbatch_size", 3, "train.microbatch_size=3"),
    ("model.remat", "some", "model.remat='some'"),
])
def test_bad_config_fails_at_startup_naming_the_field(tiny_train_config, field, value, message):
  section, name = field.split(".")
  tiny_train_config[section][name] = value
  with pytest.raises(ValueError) as e:
    run(tiny_train_config, None, print_fn=lambda s: None)
  assert message in str(e.value)


def test_cli_reports_bad_config_without_traceback(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "olmo_jax.train", "--config", f"{REPO}/configs/train.py:4M",
       "--workdir", str(tmp_path), "--config.model.n_heads=5"],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 2
  assert "model.n_heads=5 does not divide model.d_model=64" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_pytorch_pipeline_flag_aliases():
  argv = translate_aliases(["prog", "--model_size", "150M", "--data_path=/d", "--output_dir",
                            "/o", "--config_file", "c.py:4M", "--config.train.steps=3"])
  assert argv == ["prog", "--config.model.size=150M", "--config.data.data_dir=/d",
                  "--workdir=/o", "--config_file=c.py:4M", "--config.train.steps=3"]


def test_ladder_resolution_uses_published_numbers(tiny_train_config):
  c = config_lib.load_config_file(os.path.join(REPO, "configs", "train.py"), "150M")
  r = config_lib.resolve(c)
  assert (r.train.batch_size, r.train.steps, r.checkpoint.every) == (192, 38_157, 1250)
  assert r.train.lr == pytest.approx(0.0047 * (150e6 / 108e6) ** (-1 / 3))
  assert r.derived.compute_flops == float(13674492743500431360)
  r1b = config_lib.resolve(config_lib.load_config_file(os.path.join(REPO, "configs",
                                                                    "train.py"), "1B"))
  assert r1b.checkpoint.every == 2500


def test_hooks_plug_into_run_with_their_period(tiny_train_config, tmp_path):
  calls, every_step = [], []

  def probe(step, state):  # e.g. an orchestrator's evaluation: sees the state after `step`
    calls.append((step, int(state["step"])))
    return {"probe": float(step)}

  hook = hooks.CallbackHook(probe, every=6)
  run(tiny_train_config, str(tmp_path), print_fn=lambda s: None,
      extra_callbacks=[hook, lambda step, state: every_step.append(step)])
  assert calls == [(6, 6), (12, 12), (18, 18)]
  assert every_step == list(range(1, 21))
  rows = {r["step"]: r for r in _metrics(tmp_path)}
  assert sorted(rows) == [5, 6, 10, 12, 15, 18, 20]  # log_every=5, plus steps with metrics
  assert rows[12]["probe"] == 12.0 and "probe" not in rows[10]
