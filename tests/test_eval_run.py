"""`python -m eval.run` in a subprocess, as the README prints it: outputs and bad input."""

import json
import os
import subprocess
import sys

import pytest
from eval_fixtures import ROOT, export_hf, write_tiny_checkpoint


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
  assert set(m["tasks"]) == {"arc_challenge:rc_5shot", "winogrande:rc_5shot",
                             "gsm8k:gold_bpb_5shot"}
  arc = m["tasks"]["arc_challenge:rc_5shot"]
  for k in ("acc_raw", "acc_per_token", "acc_per_char", "acc_uncond", "correct_prob",
            "margin_per_char", "total_prob_per_token", "norm_correct_prob", "bits_per_byte"):
    assert k in arc
  assert m["primary_metrics"]["arc_challenge:rc_5shot"] == "acc_uncond"
  assert m["tasks"]["gsm8k:gold_bpb_5shot"]["bits_per_byte"] > 0
  assert m["step"] == 0 and m["checkpoint"] == os.path.abspath(workdir)
  assert m["config"]["model"]["model"]["d_model"] == 64
  preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
  assert len(preds) == 6
  assert {len(r["logprobs"]) for r in preds if r["task"].startswith("arc")} == {4}
  assert "acc_uncond" in p.stdout and "arc_challenge:rc_5shot" in p.stdout
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
  from eval.run import Encoder, load_model
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
