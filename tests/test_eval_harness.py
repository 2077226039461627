"""eval/harness.py: lm-eval with `--model olmo_jax` and with `--model hf` on the converted
checkpoint give the same results on local offline tasks (multiple choice over a local JSON
file, TruthfulQA mc1/mc2 and GSM8K generation through lm-eval's own task definitions)."""

import json
import os
import subprocess
import sys

import eval_fixtures  # noqa: F401  (offline environment first)
import pytest
from eval_fixtures import ROOT, export_hf, write_tiny_checkpoint

LM_EVAL_TASKS = os.path.join(os.path.dirname(__import__("lm_eval").__file__), "tasks")

MC_DOCS = [
    {"question": "What color is the sky on a clear day?", "choices": ["blue", "green", "red"],
     "label": 0},
    {"question": "How many legs does a spider have?", "choices": ["six", "eight", "ten"],
     "label": 1},
    {"question": "Which animal says moo?", "choices": ["cat", "cow", "a small bird"],
     "label": 1},
]
MC_YAML = """task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: choices
metric_list:
  - metric: acc
  - metric: acc_norm
"""
TQA_DOCS = [
    {"question": "What happens if you crack your knuckles a lot?",
     "mc1_targets": {"choices": ["Nothing in particular happens.", "You will get arthritis."],
                     "labels": [1, 0]},
     "mc2_targets": {"choices": ["Nothing in particular happens.", "It is harmless.",
                                 "You will get arthritis."], "labels": [1, 1, 0]}},
    {"question": "What is the capital of France?",
     "mc1_targets": {"choices": ["Paris", "Lyon", "Marseille"], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["Paris", "The capital is Paris.", "Lyon"],
                     "labels": [1, 1, 0]}},
]
TQA_YAML = """include: {base}
task: local_{name}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    validation: {data}
"""
GSM_DOCS = [
    {"question": "Tom has 3 apples and buys 2 more. How many apples does he have?",
     "answer": "He has 3 + 2 = <<3+2=5>>5 apples.\n#### 5"},
    {"question": "A box holds 4 pens. How many pens are in 3 boxes?",
     "answer": "3 * 4 = <<3*4=12>>12 pens.\n#### 12"},
    {"question": "Sara had 10 dollars and spent 7. How much is left?",
     "answer": "10 - 7 = <<10-7=3>>3 dollars.\n#### 3"},
]
GSM_YAML = """include: {base}
task: local_gsm8k
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    train: {data}
    test: {data}
num_fewshot: 2
generation_kwargs:
  until: ["Question:", "\\n\\n"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: 12
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("harness")
  workdir = str(root / "run")
  mcfg, params = write_tiny_checkpoint(workdir)
  hf_dir = export_hf(mcfg, params, str(root / "hf"))
  tdir = root / "tasks"
  tdir.mkdir()

  def data(name, docs):
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path

  (tdir / "local_mc.yaml").write_text(MC_YAML.format(data=data("mc", MC_DOCS)))
  for name in ("truthfulqa_mc1", "truthfulqa_mc2"):
    (tdir / f"local_{name}.yaml").write_text(TQA_YAML.format(
        base=os.path.join(LM_EVAL_TASKS, "truthfulqa", f"{name}.yaml"), name=name,
        data=data("tqa", TQA_DOCS)))
  (tdir / "local_gsm8k.yaml").write_text(GSM_YAML.format(
      base=os.path.join(LM_EVAL_TASKS, "gsm8k", "gsm8k.yaml"), data=data("gsm", GSM_DOCS)))
  return root, workdir, hf_dir, str(tdir)


def _evaluate(lm, tasks, include_path):
  from lm_eval import simple_evaluate
  from lm_eval.tasks import TaskManager
  res = simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(
      include_path=include_path), log_samples=True)
  return res


@pytest.mark.slow
def test_olmo_jax_and_hf_models_agree_on_local_tasks(setup):
  from lm_eval.models.huggingface import HFLM

  from eval.harness import OlmoJaxLM
  root, workdir, hf_dir, tdir = setup
  tasks = ["local_mc", "local_truthfulqa_mc1", "local_truthfulqa_mc2", "local_gsm8k"]
  our_lm = OlmoJaxLM(checkpoint=workdir)
  hf_lm = HFLM(pretrained=hf_dir, dtype="float32", device="cpu", batch_size=1)
  ours = _evaluate(our_lm, tasks, tdir)
  theirs = _evaluate(hf_lm, tasks, tdir)
  for task in tasks:
    a, b = ours["results"][task], theirs["results"][task]
    for k, v in b.items():
      if isinstance(v, float) and "stderr" not in k:
        assert a[k] == pytest.approx(v, abs=1e-4), (task, k, a[k], v)
    # Per request: the same log-likelihoods and the same generated text.
    assert len(ours["samples"][task]) == len(theirs["samples"][task]) >= 2
    for sa, sb in zip(ours["samples"][task], theirs["samples"][task]):
      ra, rb = sa["resps"], sb["resps"]
      if task == "local_gsm8k":
        assert ra == rb, (ra, rb)
        assert len(ra[0][0]) > 0
      else:
        for x, y in zip(ra, rb):
          assert float(x[0][0]) == pytest.approx(float(y[0][0]), abs=1e-4)
          assert bool(x[0][1]) == bool(y[0][1])
  # Rolling log-likelihood (perplexity tasks), one text longer than the 1024-token window.
  from lm_eval.api.instance import Instance
  long_text = " ".join(d["question"] + " " + d["answer"] for d in GSM_DOCS) * 30
  reqs = [Instance("loglikelihood_rolling", {}, (t,), i)
          for i, t in enumerate(["A short text about apples.", long_text])]
  assert len(our_lm.tok.encode(long_text).ids) > 1024
  for a, b in zip(our_lm.loglikelihood_rolling(reqs), hf_lm.loglikelihood_rolling(reqs)):
    assert a == pytest.approx(b, abs=2e-3 + 1e-6 * abs(b))


@pytest.mark.slow
def test_harness_cli_runs_lm_eval_with_our_model(setup):
  root, workdir, hf_dir, tdir = setup
  env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
  out = root / "cli_out"
  p = subprocess.run(
      [sys.executable, "-m", "eval.harness", "--checkpoint", workdir, "--tasks", "local_mc",
       "--include_path", tdir, "--output_path", str(out)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "local_mc" in p.stdout and "acc" in p.stdout
  results = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs
             if f.startswith("results")]
  assert results
  p = subprocess.run([sys.executable, "-m", "eval.harness", "--tasks", "local_mc"], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2 and "--checkpoint" in p.stderr
  # eval.run mixes native tasks and lm-eval tasks in one metrics.json.
  p = subprocess.run(
      [sys.executable, "-m", "eval.run", "--checkpoint", workdir, "--tasks",
       "boolq,lm_eval:local_mc", "--include_path", tdir, "--limit", "2", "--output",
       str(root / "mixed"), "--no_progress"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  m = json.loads((root / "mixed" / "metrics.json").read_text())
  assert set(m["tasks"]) == {"boolq:rc_5shot", "lm_eval:local_mc"} and not m["errors"]
  assert 0.0 <= m["tasks"]["lm_eval:local_mc"]["acc,none"] <= 1.0


@pytest.mark.slow
def test_harness_unknown_task_or_dataset_not_offline_is_one_error_line(setup, tmp_path):
  _, workdir, _, tdir = setup
  # An empty HF cache and no network: lm-eval's piqa cannot load its dataset.
  env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
             HF_HOME=str(tmp_path / "hf_home"))
  for task, needle in (("nosuchtask", "Tasks not found: nosuchtask"),
                       ("piqa", "could not load a task's dataset")):
    p = subprocess.run([sys.executable, "-m", "eval.harness", "--checkpoint", workdir,
                        "--tasks", task, "--limit", "2"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and lines[-1].startswith("error: ") and needle in lines[-1]
    assert sum(line.startswith("error:") for line in lines) == 1
  # An HF directory the OLMo tokenizer does not fit (no tokenizer.json, another vocabulary).
  from test_eval_run import _hf_dir_with_vocab
  hf_dir = _hf_dir_with_vocab(str(tmp_path / "hf32k"), 32000)
  p = subprocess.run([sys.executable, "-m", "eval.harness", "--checkpoint", hf_dir, "--tasks",
                      "local_mc", "--include_path", tdir, "--limit", "2"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=900)
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
  assert lines[-1].startswith("error: ") and "no tokenizer.json" in lines[-1], lines
