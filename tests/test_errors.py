"""Bad input on the command lines, as a user types it: one `error:` line naming the input and
the fix, exit 2 (3: a --dry_run that does not fit), in seconds, and nothing left behind.

The table of these messages is in docs/errors.md. Bucket paths are tested in test_gcs.py,
locked outputs in test_eval_run.py and test_convert.py, resume changes in test_resume.py.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.data.mixture=synthetic", "--config.model.size=custom", "--config.model.d_model=32",
    "--config.model.n_heads=2", "--config.model.n_layers=2", "--config.model.vocab_size=500",
    "--config.model.embedding_size=512", "--config.train.batch_size=4",
    "--config.train.seq_len=32", "--config.train.progress_bar=False",
]


def train_cmd(*args):
  return [sys.executable, "-m", "olmo_jax.train", "--config",
          os.path.join(ROOT, "configs", "train.py") + ":4M", *TINY, *args]


def one_error_line(proc) -> str:
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  return lines[0]


def test_train_bad_input_is_one_line_before_the_compile_and_writes_nothing(cli_env, tmp_path):
  with socket.socket() as busy:  # a coordinator port that another process listens on
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases = {
        "seq_len": (["--config.train.seq_len=0"], {},
                    "error: train.seq_len=0 must be positive; set --config.train.seq_len=N "
                    "with N >= 1"),
        "hosts": (["--dry_run", "--config.plan.hosts=0"], {},
                  "error: plan.hosts=0 must be >= 1; set --config.plan.hosts=N with N >= 1"),
        "output": (["--dry_run", "--config.plan.output=/proc/x"], {},
                   "error: plan.output=/proc/x: cannot write in /proc ("),
        "devices": (["--config.train.batch_size=3"],
                    {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
                    "error: train.batch_size=3 must be divisible by the 2 batch shards of the "
                    "mesh (mesh.data * mesh.fsdp over 2 devices); set --config.train.batch_size "
                    "to a multiple of 2"),
        "port": ([f"--coordinator=127.0.0.1:{port}", "--num_processes=2", "--process_id=0"],
                 {}, f"error: coordinator 127.0.0.1:{port}: port {port} is already in use on "
                 "this host (another run's coordinator?); stop that process or choose another "
                 "port with --coordinator HOST:PORT"),
    }
    procs = {name: subprocess.Popen(train_cmd(f"--workdir={tmp_path / name}", *args),
                                    env=dict(cli_env, **env), cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (args, env, _) in cases.items()}
    for name, proc in procs.items():
      out, err = proc.communicate(timeout=300)
      proc.stderr = err
      assert proc.returncode == 2, (name, err[-3000:])
      assert one_error_line(proc).startswith(cases[name][2]), (name, err)
      assert "compiled" not in out, name  # stopped before the compile
      assert not (tmp_path / name).exists(), name  # no train.log, no trainer.lock


def test_dry_run_that_does_not_fit_exits_3_and_writes_the_plan(cli_env, tmp_path):
  plan_file = tmp_path / "plan.json"
  # Two CPU devices that are not at hand: the analytic plan (no compile, so a quick test).
  proc = subprocess.run(train_cmd("--dry_run", "--config.plan.device_memory_gb=0.0001",
                                  "--config.plan.platform=cpu", "--config.plan.devices=2",
                                  f"--config.plan.output={plan_file}"),
                        env=cli_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "DOES NOT FIT" in proc.stdout
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("does not fit: ") and last.endswith("exit code 3 (the plan above)")
  plan = json.loads(plan_file.read_text())
  assert plan["fits"] is False and plan["device_memory_bytes"] == 90_000  # 0.1 MB x 0.9


def test_trainer_gives_the_gpu_allocator_the_memory_its_plan_counts(cli_env):
  import ml_collections

  from olmo_jax import plan_options as plan
  opts = plan.plan_options({})
  assert plan.memory_fraction(opts, {}) == (0.9, "plan.headroom")
  env = {}
  assert plan.export_memory_fraction(ml_collections.ConfigDict(
      {"plan": {"headroom": 0.8}}), env) == 0.8 and env == {plan.MEM_FRACTION_ENV: "0.8"}
  # A fraction the environment sets is kept, and the plan counts that one instead.
  env = {plan.MEM_FRACTION_ENV: "0.7"}
  assert plan.export_memory_fraction(ml_collections.ConfigDict(
      {"plan": {"headroom": 0.8}}), env) == 0.7 and env[plan.MEM_FRACTION_ENV] == "0.7"
  assert plan.usable_fraction(opts, "tpu") == 0.9  # TPU and CPU: headroom as a margin
  with pytest.raises(ValueError, match="XLA_PYTHON_CLIENT_MEM_FRACTION='1.5' must be"):
    plan.memory_fraction(opts, {plan.MEM_FRACTION_ENV: "1.5"})
  # The real command line, in a process JAX has not started in: the variable it leaves set
  # for XLA's allocator is plan.headroom (bad input after that point: it exits 2 quickly).
  code = ("import os, sys; from olmo_jax import train; "
          "rc = train.main(sys.argv); "
          "print(rc, os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION'))")
  env = {k: v for k, v in cli_env.items() if k != plan.MEM_FRACTION_ENV}
  proc = subprocess.run([sys.executable, "-c", code, "--config.plan.headroom=0.85",
                         "--config.train.seq_len=0"], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.stdout.split() == ["2", "0.85"], proc.stdout + proc.stderr[-2000:]


def test_tokenize_non_utf8_names_file_and_line_and_the_fixed_rerun_runs(tmp_path):
  src, out = tmp_path / "a.jsonl", tmp_path / "out"
  src.write_bytes(b'{"text": "hello world"}\n{"text": "caf\xe9 au lait"}\n')
  cmd = [sys.executable, "-m", "data_pipeline.tokenize_files", "--inputs", str(src), "--output",
         str(out)]
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: {src}:2: not UTF-8 text (byte 0xe9 at byte 14 of the line); "
                    "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8"]
  assert not out.exists()  # nothing left that could block the rerun
  src.write_bytes('{"text": "hello world"}\n{"text": "café au lait"}\n'.encode())
  proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((out / "index.json").read_text())["documents"] == 2
