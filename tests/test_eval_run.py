"""`python -m eval.run` in a subprocess, as the README prints it: outputs and bad input."""

import json
import os
import subprocess
import sys

import pytest
from eval_fixtures import ROOT, export_hf, tiny_eval_config, write_tiny_checkpoint

from olmo_jax import locking
from olmo_jax import workdir as workdir_lib
from olmo_jax.load import load_model


def run_cli(*args, timeout=900):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "eval.run", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  mcfg, params = write_tiny_checkpoint(workdir)
  return workdir, mcfg, params


@pytest.mark.slow
def test_run_writes_metrics_predictions_and_a_table(tiny_run, tmp_path):
  workdir, mcfg, params = tiny_run
  out = tmp_path / "out"
  p = run_cli("--checkpoint", workdir, "--tasks", "arc_challenge,winogrande,gsm8k",
              "--limit", "2", "--output", str(out))
  assert p.returncode == 0, p.stderr[-3000:]
  m = json.loads((out / "metrics.json").read_text())
  assert set(m["tasks"]) == {"arc_challenge:test_rc_5shot", "winogrande:rc_5shot",
                             "gsm8k:gold_bpb_5shot"}
  arc = m["tasks"]["arc_challenge:test_rc_5shot"]
  for k in ("acc_raw", "acc_per_token", "acc_per_char", "acc_uncond", "correct_prob",
            "margin_per_char", "total_prob_per_token", "norm_correct_prob", "bits_per_byte"):
    assert k in arc
  assert m["primary_metrics"]["arc_challenge:test_rc_5shot"] == "acc_uncond"
  assert m["tasks"]["gsm8k:gold_bpb_5shot"]["bits_per_byte"] > 0
  assert m["step"] == 0 and m["checkpoint"] == os.path.abspath(workdir)
  assert m["config"]["model"]["model"]["d_model"] == 64
  preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
  assert len(preds) == 6
  assert {len(r["logprobs"]) for r in preds if r["task"].startswith("arc")} == {4}
  assert "acc_uncond" in p.stdout and "arc_challenge:test_rc_5shot" in p.stdout
  assert "scoring requests" in p.stderr  # the progress bar
  # The same weights exported to HF score the same.
  hf_dir = export_hf(mcfg, params, str(tmp_path / "hf"))
  p2 = run_cli("--checkpoint", hf_dir, "--tasks", "arc_challenge,winogrande,gsm8k",
               "--limit", "2", "--output", str(tmp_path / "out_hf"), "--no_progress")
  assert p2.returncode == 0, p2.stderr[-3000:]
  m2 = json.loads((tmp_path / "out_hf" / "metrics.json").read_text())
  for task, vals in m["tasks"].items():
    for k, v in vals.items():
      assert abs(m2["tasks"][task][k] - v) < 1e-5, (task, k)


def test_run_on_one_document(tiny_run, tmp_path):
  workdir, _, _ = tiny_run
  p = run_cli("--checkpoint", workdir, "--tasks", "boolq", "--limit", "1", "--output",
              str(tmp_path / "o"), "--no_progress")
  assert p.returncode == 0, p.stderr[-3000:]
  m = json.loads((tmp_path / "o" / "metrics.json").read_text())
  assert m["counts"] == {"boolq:rc_5shot": 1}
  assert m["tasks"]["boolq:rc_5shot"]["acc_raw"] in (0.0, 1.0)
  # An earlier result is never replaced silently.
  p = run_cli("--checkpoint", workdir, "--tasks", "boolq", "--limit", "1", "--output",
              str(tmp_path / "o"))
  assert p.returncode == 2 and "--overwrite" in p.stderr
  assert json.loads((tmp_path / "o" / "metrics.json").read_text()) == m


def test_bad_input_is_one_clear_error_and_exit_2(tiny_run, tmp_path):
  workdir, _, _ = tiny_run
  out = str(tmp_path / "out")
  bad = tmp_path / "badtask"
  bad.mkdir()
  (bad / "requests.jsonl").write_text("this is not json\n")
  cases = [
      (("--checkpoint", str(tmp_path / "nope"), "--tasks", "piqa"), "does not exist"),
      (("--checkpoint", workdir, "--tasks", "piqa,nosuchtask"), "unknown task or suite"),
      (("--checkpoint", workdir, "--tasks", str(bad)), "does not parse"),
      (("--checkpoint", workdir, "--tasks", "piqa", "--limit", "0"), "--limit 0"),
  ]
  for args, needle in cases:
    p = run_cli(*args, "--output", out, timeout=300)
    assert p.returncode == 2, (args, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
  assert not os.path.exists(out)


def test_datadecide_study_scores_checkpoints_through_eval_run(tiny_run, tmp_path):
  from olmo_jax.datadecide.scorers import EvalRunScorer
  workdir, _, _ = tiny_run
  scorer = EvalRunScorer("winogrande", limit=1)
  out = str(tmp_path / "eval" / "0")
  first = scorer(None, 0, workdir, out)
  assert set(first) == {"winogrande:rc_5shot"} and "acc_raw" in first["winogrande:rc_5shot"]
  assert scorer(None, 0, workdir, out) == first  # a rerun (after a crash) replaces its output


def test_end_of_text_id_comes_from_the_hf_config_for_empty_contexts(tiny_run, tmp_path):
  from data_pipeline.tokenizer import EOS_TOKEN_ID, load_tokenizer
  from eval.encoding import Encoder
  workdir, mcfg, params = tiny_run
  assert load_model(workdir).eos_id == EOS_TOKEN_ID
  hf_dir = export_hf(mcfg, params, str(tmp_path / "hf"))
  assert load_model(hf_dir).eos_id == EOS_TOKEN_ID  # the export records OLMo's
  path = os.path.join(hf_dir, "config.json")
  config = json.load(open(path))
  config["eos_token_id"] = [7, 8]  # another tokenizer's, as a list (Llama 3 style)
  json.dump(config, open(path, "w"))
  model = load_model(hf_dir)
  assert model.eos_id == 7
  encoder = Encoder(load_tokenizer(model.tokenizer), model.eos_id)
  (ctx, cont), = encoder.pairs([("", " yes")])
  assert ctx == [7] and cont == load_tokenizer("olmo").encode(" yes").ids


@pytest.mark.slow
def test_compile_cache_serves_a_second_call_without_new_programs(tiny_run, tmp_path):
  workdir, _, _ = tiny_run
  cache = tmp_path / "cache"
  results = []
  for i in range(2):
    out = tmp_path / f"out{i}"
    p = run_cli("--checkpoint", workdir, "--tasks", "winogrande,arc_easy", "--limit", "3",
                "--compile_cache", str(cache), "--output", str(out), "--no_progress")
    assert p.returncode == 0, p.stderr[-3000:]
    results.append(json.load(open(out / "metrics.json"))["tasks"])
    if i == 0:
      first = set(os.listdir(cache))
      assert first  # the scoring programs were written
  assert set(os.listdir(cache)) == first  # the second call compiled nothing new
  assert results[0] == results[1]
  (tmp_path / "file").write_text("")
  p = run_cli("--checkpoint", workdir, "--tasks", "winogrande", "--compile_cache",
              str(tmp_path / "file"), "--output", str(tmp_path / "out3"))
  assert p.returncode == 2 and p.stderr.startswith("error: --compile_cache ")


def _train_tiny_run(workdir: str, seq_len: int, max_seq_len: int):
  """`python -m olmo_jax.train`: 2 steps of a d=64, 2-layer model with the real vocabulary."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  p = subprocess.run(
      [sys.executable, "-m", "olmo_jax.train", "--config", "configs/train.py:4M", "--workdir",
       workdir, "--config.data.mixture=synthetic", "--config.train.steps=2",
       "--config.train.batch_size=2", f"--config.train.seq_len={seq_len}",
       "--config.train.warmup_steps=1", "--config.train.progress_bar=false",
       "--config.model.size=custom", "--config.model.d_model=64", "--config.model.n_heads=4",
       "--config.model.n_layers=2", f"--config.model.max_seq_len={max_seq_len}",
       "--config.checkpoint.every=2"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.slow
def test_run_dir_and_its_hf_export_score_alike_with_default_arguments(tmp_path):
  # Trained at seq_len 32 with a 512-position model: both entry points score with the
  # model's 512-token window (not the training 32), so the same weights give the same values.
  run = str(tmp_path / "run")
  _train_tiny_run(run, seq_len=32, max_seq_len=512)
  hf_dir = str(tmp_path / "hf")
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  p = subprocess.run([sys.executable, "scripts/convert_to_hf.py", "--checkpoint", run,
                      "--output", hf_dir], cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  results = []
  for ckpt in (run, hf_dir):
    out = tmp_path / f"out-{os.path.basename(ckpt)}"
    p = run_cli("--checkpoint", ckpt, "--tasks", "arc_challenge,hellaswag,boolq", "--limit",
                "3", "--output", str(out), "--no_progress")
    assert p.returncode == 0, p.stderr[-3000:]
    results.append(json.loads((out / "metrics.json").read_text()))
  a, b = results
  assert a["tasks"] == b["tasks"]
  assert a["config"]["eval"]["max_length"] == b["config"]["eval"]["max_length"] == 512
  # 5-shot BoolQ passages run past 512 tokens: both cut the same requests, and say so.
  assert a["truncated"] == b["truncated"] and a["truncated"]["boolq:rc_5shot"] > 0
  assert a["truncated"]["hellaswag:rc_5shot"] == 0  # ~400-token contexts fit 512, not 32
  assert "left-truncated" in p.stdout


def _hf_dir_with_vocab(path: str, rows: int) -> str:
  """An HF export, without tokenizer files, of a tiny random model with `rows` embeddings."""
  from hf_fixtures import random_params

  from olmo_jax import hf
  from olmo_jax.model import ModelConfig
  cfg = ModelConfig(d_model=32, n_heads=4, n_layers=1, vocab_size=rows, embedding_size=rows,
                    max_seq_len=256)
  hf.export_hf(cfg, random_params(cfg), path, tokenizer=None, dtype="float32")
  return path


def test_a_tokenizer_that_does_not_fit_the_vocabulary_is_an_error(tmp_path):
  import shutil

  from data_pipeline.tokenizer import tokenizer_path
  hf_dir = _hf_dir_with_vocab(str(tmp_path / "hf32k"), 32000)
  out = str(tmp_path / "out")
  p = run_cli("--checkpoint", hf_dir, "--tasks", "piqa", "--limit", "2", "--output", out,
              timeout=300)
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2 and len(lines) == 1, p.stderr[-2000:]
  assert lines[0].startswith("error: ") and "no tokenizer.json" in lines[0]
  assert "32000" in lines[0] and "save_pretrained" in lines[0]
  # With a tokenizer.json of another (larger) vocabulary: its ids run past the 32,000 rows.
  shutil.copyfile(tokenizer_path("olmo"), os.path.join(hf_dir, "tokenizer.json"))
  p = run_cli("--checkpoint", hf_dir, "--tasks", "piqa", "--limit", "2", "--output", out,
              "--no_progress", timeout=300)
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2 and lines[-1].startswith("error: token id "), p.stderr[-2000:]
  assert "vocabulary of 32000" in lines[-1] and "tokenizer.json" in lines[-1]
  assert not os.path.exists(out)


@pytest.mark.slow
def test_non_finite_scores_are_an_error_and_nothing_is_written(tmp_path):
  import jax
  import numpy as np

  from olmo_jax import checkpoint
  from olmo_jax import config as config_lib
  workdir = str(tmp_path / "nan")
  _, params = write_tiny_checkpoint(str(tmp_path / "src"))  # a diverged run's weights:
  params = jax.tree.map(lambda x: np.full_like(np.asarray(x), np.nan), params)
  checkpoint.write_params_checkpoint(
      workdir, params, {"config": config_lib.to_dict(tiny_eval_config())})
  out = str(tmp_path / "out")
  p = run_cli("--checkpoint", workdir, "--tasks", "winogrande", "--limit", "2", "--output",
              out, "--no_progress")
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2 and lines[-1].startswith("error: "), p.stderr[-2000:]
  assert "not finite" in lines[-1] and "--dtype float32" in lines[-1]
  assert not os.path.exists(out)


def test_metrics_json_has_no_bare_nan(tmp_path):
  from eval.evaluation import _write_json, _write_jsonl
  _write_json(str(tmp_path / "m.json"), {"a": float("nan"), "b": [1.5, float("inf")]})
  _write_jsonl(str(tmp_path / "p.jsonl"), [{"lp": [float("-inf"), -1.0]}])
  assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.5, None]}
  assert "NaN" not in (tmp_path / "m.json").read_text()
  assert json.loads((tmp_path / "p.jsonl").read_text()) == {"lp": [None, -1.0]}


@pytest.mark.slow
def test_ctrl_c_keeps_the_scored_batches_and_the_same_command_resumes(tiny_run, tmp_path):
  import signal
  import time
  workdir, _, _ = tiny_run
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  # One document per batch: many small batches, so Ctrl-C lands mid-scoring.
  args = ["--checkpoint", workdir, "--tasks", "hellaswag", "--limit", "40", "--batch_tokens",
          "256", "--no_progress"]
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "eval.run", *args, "--output", str(out)]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  partial = out / "scores.partial.jsonl"
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if partial.exists() and len(partial.read_text().splitlines()) >= 3:
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-3000:]
  assert err.strip().splitlines()[-1].startswith("interrupted: ") and "Traceback" not in err
  assert partial.exists() and not (out / "metrics.json").exists()
  kept = sum(len(json.loads(line)["i"]) for line in partial.read_text().splitlines()[1:])
  assert 0 < kept < 160  # 40 documents x 4 endings
  p = run_cli(*args, "--output", str(out))  # the same command again
  assert p.returncode == 0, p.stderr[-3000:]
  resumed = json.loads((out / "metrics.json").read_text())
  assert resumed["config"]["eval"]["resumed_requests"] == kept
  assert f"resumed: {kept} requests" in p.stdout and not partial.exists()
  p = run_cli(*args, "--output", str(tmp_path / "whole"))  # uninterrupted
  assert p.returncode == 0, p.stderr[-3000:]
  whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
  assert resumed["tasks"] == whole["tasks"]
  preds = [(tmp_path / d / "predictions.jsonl").read_text() for d in ("out", "whole")]
  assert preds[0] == preds[1]


@pytest.mark.slow
def test_the_demo_hint_runs_offline(tiny_run, tmp_path):
  import shlex

  from olmo_jax.demo import offline_eval_command
  _, mcfg, params = tiny_run
  hf_dir = export_hf(mcfg, params, str(tmp_path / "hf dir"))  # a path that needs quoting
  argv = shlex.split(offline_eval_command(hf_dir, str(tmp_path / "eval-hf")))
  assert argv[:3] == ["python", "-m", "eval.run"]
  # No network: offline flags, and every proxied request would go to a closed local port.
  env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  p = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  m = json.loads((tmp_path / "eval-hf" / "metrics.json").read_text())
  assert m["counts"] == {"piqa:rc_5shot": 100}


def test_a_second_eval_run_on_a_held_output_is_refused_at_once(tiny_run, tmp_path):
  workdir, _, _ = tiny_run
  out = tmp_path / "out"
  lock = locking.lock_for(str(out), workdir_lib.EVALUATION)  # as a running eval.run holds it
  lock.acquire()
  try:
    p = run_cli("--checkpoint", workdir, "--tasks", "boolq", "--limit", "1", "--output",
                str(out), timeout=300)
  finally:
    lock.release()
  assert p.returncode == 2, p.stderr[-3000:]
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f"error: output {out} is in use by another evaluation (PID {os.getpid()} on host "), lines
  assert lines[0].endswith(f"choose another --output; lock file {out}/eval.lock")
  assert os.listdir(out) == ["eval.lock"]  # the holder's lock only: nothing written


@pytest.mark.slow
def test_two_concurrent_eval_runs_on_one_output_the_second_is_refused(tiny_run, tmp_path):
  import time
  workdir, mcfg, _ = tiny_run
  other = str(tmp_path / "other")
  write_tiny_checkpoint(other)
  out = tmp_path / "out"
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  first = subprocess.Popen([sys.executable, "-m", "eval.run", "--checkpoint", workdir, "--tasks",
                            "boolq", "--limit", "4", "--no_progress", "--output", str(out)],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  lock_file = out / "eval.lock"
  while not (lock_file.exists() and lock_file.read_text()):  # the first holds the output
    assert first.poll() is None, first.communicate()
    time.sleep(0.1)
  second = run_cli("--checkpoint", other, "--tasks", "boolq", "--limit", "4", "--output",
                   str(out), timeout=300)
  f_out, f_err = first.communicate(timeout=600)
  assert second.returncode == 2 and second.stderr.startswith(
      f"error: output {out} is in use by another evaluation (PID {first.pid} "), second.stderr
  assert first.returncode == 0, f_err[-3000:]
  m = json.loads((out / "metrics.json").read_text())
  assert m["checkpoint"] == os.path.abspath(workdir) and m["counts"] == {"boolq:rc_5shot": 4}
  assert sorted(os.listdir(out)) == ["eval.lock", "metrics.json", "predictions.jsonl"]
