"""The training command line as users type it, each run a `python -m olmo_jax.train` subprocess.

Aliases of the PyTorch pipeline, config files and YAML overrides, one trainer per workdir,
quiet logs and one error line per failure.
"""

import json
import os
import re
import resource
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO

from olmo_jax import cli, config_files, workdir
from olmo_jax import config as config_lib
from olmo_jax.cli import translate_aliases
from olmo_jax.train import DEFAULT_CONFIG

TINY = ["--config.train.batch_size=4", "--config.train.seq_len=32",
        "--config.train.warmup_steps=1", "--config.train.progress_bar=false"]
ABSL_INFO = re.compile(r"^I\d{4} ")  # absl's INFO prefix, e.g. 'I1201 20:15:47.695584 ...'


def _env():
  env = dict(os.environ)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user's shell has
  return env


def _train(*args, **kw) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "olmo_jax.train", *args], capture_output=True,
                        text=True, cwd=REPO, env=_env(), timeout=600, **kw)


def _metrics_steps(out) -> list[int]:
  with open(os.path.join(out, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """Two sources of token files (.npy, uint16), as the tokenizer writes them."""
  d = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  for name in ("web", "code"):
    os.makedirs(d / name)
    np.save(d / name / "part-00000.npy", rng.integers(0, 50_000, 20_000).astype(np.uint16))
  return str(d)


def test_quickstart_command_with_yaml_runs_quietly(data_dir, tmp_path):
  out = str(tmp_path / "run")
  proc = _train("--model_size", "4M", "--data_path", data_dir, "--output_dir", out,
                "--config_file", "configs/training_configs/default_training.yaml",
                "--config.train.steps=4", "--config.checkpoint.every=2",
                "--config.train.log_every=2", *TINY)
  assert proc.returncode == 0, proc.stderr
  saved = config_lib.load_json(os.path.join(out, "config.json"))
  assert (saved.model.size, saved.train.steps, saved.data.data_dir) == ("4M", 4, data_dir)
  assert saved.train.weight_decay == 0.05 and saved.train.eps == 1e-8  # from the YAML
  assert _metrics_steps(out) == [2, 4]
  # Quiet: no library INFO line on the terminal (there were ~160 for a 6-step run) ...
  lines = proc.stderr.splitlines()
  assert not [x for x in lines if ABSL_INFO.match(x) or "INFO" in x], proc.stderr
  assert len(lines) <= 3, proc.stderr
  # ... they are in the run's log file; the data sources it trained on are reported.
  with open(os.path.join(out, cli.LOG_FILE)) as f:
    log = f.read()
  assert "Saving checkpoint at step 2" in log
  assert all(re.search(rf"\b{s}\b", log + proc.stdout) for s in ("web", "code"))
  with open(os.path.join(out, workdir.LOCK_NAME)) as f:
    assert f.read() == ""  # released


@pytest.mark.slow
def test_equals_form_and_training_section_file(data_dir, tmp_path):
  out = str(tmp_path / "run")
  proc = _train("--model_size=6M", f"--data_path={data_dir}", f"--output_dir={out}",
                "--config_file=configs/training_configs/default_training.py",
                "--config.train.steps=2", "--config.checkpoint.enabled=false",
                "--config.train.log_every=1", *TINY)
  assert proc.returncode == 0, proc.stderr
  saved = config_lib.load_json(os.path.join(out, "config.json"))
  assert (saved.model.size, saved.train.steps, saved.data.data_dir) == ("6M", 2, data_dir)
  assert _metrics_steps(out) == [1, 2]


@pytest.mark.slow
def test_full_config_file_with_overrides_and_verbose_logs(tmp_path):
  # `--config_file configs/train.py:6M` with an override once said "defined twice".
  out = str(tmp_path / "run")
  proc = _train("--config_file", "configs/train.py:6M", "--config.train.steps=1",
                "--output_dir", out, "--config.data.mixture=synthetic",
                "--config.checkpoint.enabled=false", "--verbosity=0", *TINY)
  assert proc.returncode == 0, proc.stderr
  saved = config_lib.load_json(os.path.join(out, "config.json"))
  assert (saved.model.size, saved.train.steps) == ("6M", 1)
  assert any(ABSL_INFO.match(x) for x in proc.stderr.splitlines())  # --verbosity brings them


def test_unknown_yaml_key_fails_before_the_workdir_is_touched(tmp_path):
  path = tmp_path / "overrides.yaml"
  path.write_text("train:\n  stepz: 3\n")
  out = tmp_path / "run"
  proc = _train("--config_file", str(path), "--output_dir", str(out))
  assert proc.returncode == 2
  assert proc.stderr.startswith(f"error: {path}: unknown key 'train.stepz'"), proc.stderr
  assert len(proc.stderr.splitlines()) == 1
  assert not out.exists()


@pytest.mark.parametrize("yaml_text,message", [
    ("trian:\n  steps: 3\n", "unknown key 'trian'"),
    ("train:\n  steps: many\n", "train.steps must be an integer"),
    ("train:\n  progress_bar: 1\n", "train.progress_bar must be true or false"),
    ("train: 3\n", "train is a section"),
    ("train:\n  steps:\n    x: 1\n", "train.steps is a single value"),
    ("- steps\n", "expected a mapping"),
    ("train: [\n", "not valid YAML"),
])
def test_bad_yaml_overrides_name_the_key(tmp_path, yaml_text, message):
  path = tmp_path / "overrides.yaml"
  path.write_text(yaml_text)
  with pytest.raises(ValueError, match=re.escape(message)) as e:
    config_files.load_config(["prog", f"--config_file={path}"], f"{DEFAULT_CONFIG}:4M")
  assert str(path) in str(e.value)


def test_bad_flags_are_one_line_errors(tmp_path):
  for args, message in [(["--model_size"], "--model_size needs a value"),
                        (["--config.train.steps=abc"], "config.train.steps"),
                        (["--no_such_flag=1"], "no_such_flag"),
                        (["--config.train.progress_bar", "false"], "unexpected argument"),
                        # A mistyped field: once a raw AttributeError traceback with exit 1.
                        (["--config.train.stepz=3"], "config.train has no field 'stepz'; "
                         "Did you mean steps?"),
                        (["--config.trian.steps=3"], "Did you mean train?"),
                        (["--config.train.steps.x=3"], "config.train.steps is a single value")]:
    proc = _train(*args, "--output_dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ")
  assert not (tmp_path / "run").exists()


def test_precedence_file_then_yaml_then_command_line(tmp_path):
  yaml_path = tmp_path / "o.yaml"
  yaml_path.write_text("train:\n  steps: 7\n  lr: 1e-3\n  z_loss: 1\nmodel:\n  variant: olmo2\n")
  argv = translate_aliases(["prog", "--config_file", str(yaml_path), "--model_size", "20M",
                            "--config", f"{DEFAULT_CONFIG}:6M", "--config.train.steps=9"])
  c, rest = config_files.load_config(argv, "unused")
  assert (c.model.size, c.model.variant) == ("6M", "olmo2")  # the file, then the YAML
  assert (c.train.steps, c.train.lr, c.train.z_loss) == (7, 1e-3, 1.0)  # YAML: 1e-3, 1 -> floats
  assert rest == ["prog", "--config.model.size=20M", "--config.train.steps=9"]  # flags win
  with pytest.raises(ValueError, match="two full configs"):
    config_files.load_config(
        ["prog", f"--config={DEFAULT_CONFIG}:4M", "--config_file=configs/train.py"], "unused")


def test_shipped_yaml_equals_the_python_training_config():
  yaml_path = os.path.join(REPO, "configs", "training_configs", "default_training.yaml")
  c, _ = config_files.load_config(["prog", f"--config_file={yaml_path}"], f"{DEFAULT_CONFIG}:4M")
  assert c.to_dict() == config_lib.load_config_file(DEFAULT_CONFIG, "4M").to_dict()


def test_pytorch_pipeline_flag_aliases():
  argv = translate_aliases(["prog", "--model_size", "150M", "--data_path=/d", "--output_dir",
                            "/o", "--config_file", "c.yaml", "--config.train.steps=3",
                            "--config", "x.py:4M"])
  assert argv == ["prog", "--config.model.size=150M", "--config.data.data_dir=/d",
                  "--workdir=/o", "--config_file=c.yaml", "--config.train.steps=3",
                  "--config=x.py:4M"]


def test_lock_names_the_holder_and_takes_over_a_dead_ones(tmp_path):
  first = workdir.WorkdirLock(str(tmp_path))
  assert first.acquire() is None
  with pytest.raises(workdir.WorkdirBusyError, match=f"PID {os.getpid()} on host "):
    workdir.WorkdirLock(str(tmp_path)).acquire()  # another open file: flock conflicts
  first.release()
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / workdir.LOCK_NAME).write_text(json.dumps(
      {"host": socket.gethostname(), "pid": dead.pid, "started": time.time()}))
  lock = workdir.WorkdirLock(str(tmp_path))
  warning = lock.acquire()
  assert f"PID {dead.pid}" in warning and "no longer running" in warning
  lock.release()


def test_second_trainer_on_a_workdir_fails_at_once(tmp_path):
  out = str(tmp_path / "run")
  args = [sys.executable, "-m", "olmo_jax.train", "--output_dir", out,
          "--config.data.mixture=synthetic", "--config.train.steps=60",
          "--config.train.log_every=5", "--config.checkpoint.every=30", *TINY]
  first = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  lock_path = os.path.join(out, workdir.LOCK_NAME)
  deadline = time.time() + 120
  while not (os.path.exists(lock_path) and os.path.getsize(lock_path)):
    assert first.poll() is None and time.time() < deadline, "the first trainer did not start"
    time.sleep(0.05)
  second = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
  first_running = first.poll() is None
  _, first_err = first.communicate(timeout=600)
  assert second.returncode == 2
  assert f"in use by another trainer (PID {first.pid} on host {socket.gethostname()}" \
      in second.stderr, second.stderr
  assert len(second.stderr.splitlines()) == 1
  assert first_running  # the second did not wait for the lock
  assert first.returncode == 0, first_err
  assert _metrics_steps(out) == list(range(5, 61, 5))  # each step once
  assert sorted(os.listdir(os.path.join(out, "checkpoints")))[:2] == ["30", "60"]


def test_stale_lock_of_a_dead_trainer_is_taken_over(tmp_path):
  out = tmp_path / "run"
  out.mkdir()
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (out / workdir.LOCK_NAME).write_text(json.dumps(
      {"host": socket.gethostname(), "pid": dead.pid, "started": time.time() - 60}))
  proc = _train("--output_dir", str(out), "--config.data.mixture=synthetic",
                "--config.train.steps=1", "--config.checkpoint.enabled=false", *TINY)
  assert proc.returncode == 0, proc.stderr
  warning = [x for x in proc.stderr.splitlines() if x.startswith("warning: ")]
  assert len(warning) == 1 and "took over the lock left by a trainer" in warning[0]
  assert f"PID {dead.pid}" in warning[0] and "no longer running" in warning[0]


def _limit_file_size():
  # A real write fault: files over 2 MiB cannot be written (EFBIG, as a full disk's ENOSPC);
  # Python ignores SIGXFSZ, so the write fails instead of killing the process.
  resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))


def test_failed_save_prints_one_error_line(tmp_path):
  out = str(tmp_path / "run")
  proc = _train("--output_dir", out, "--config.data.mixture=synthetic",
                "--config.train.steps=4", "--config.checkpoint.every=2",
                "--config.train.log_every=2", *TINY, preexec_fn=_limit_file_size)
  assert proc.returncode == 1
  lines = proc.stderr.splitlines()
  errors = [x for x in lines if x.startswith("error: ")]
  assert len(errors) == 1 and "saving checkpoint step 2" in errors[0], proc.stderr
  assert "File too large" in errors[0] and cli.LOG_FILE in errors[0]
  assert "Traceback" not in proc.stderr and len(lines) <= 3, proc.stderr  # once 843 lines
  with open(os.path.join(out, cli.LOG_FILE)) as f:
    assert "Traceback" in f.read()  # the details are kept
  with open(os.path.join(out, workdir.LOCK_NAME)) as f:
    assert f.read() == ""
