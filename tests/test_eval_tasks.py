"""eval/tasks.py: the shipped OLMES request files, MMLU in OLMES formats, suites, errors."""

import gzip
import json
import os

import pytest

from eval import tasks

OLMES = ("arc_easy", "arc_challenge", "boolq", "csqa", "hellaswag", "openbookqa", "piqa",
         "socialiqa", "winogrande", "mmlu")


def test_suites_and_registry():
  olmes = tasks.resolve_tasks("olmes")
  assert [t.family for t in olmes] == list(OLMES)
  assert [t.variant for t in olmes] == ["olmes_rc_5shot", "test_rc_5shot", "rc_5shot",
                                        "rc_5shot", "rc_5shot", "test_rc_5shot", "rc_5shot",
                                        "rc_5shot", "rc_5shot", "rc_5shot"]
  reg = tasks.registry()
  for family in tasks.REQUEST_FAMILIES[:-1]:
    for variant in ("rc_5shot", "mc_5shot", "rc_0shot", "val_rc_5shot", "val_mc_5shot"):
      assert f"{family}:{variant}" in reg, (family, variant)
  for family in ("arc_easy", "arc_challenge", "openbookqa"):
    assert f"{family}:test_rc_5shot" in reg and f"{family}:test_mc_5shot" in reg
  assert reg["gsm8k"].name == "gsm8k:gold_bpb_5shot" and reg["gsm8k"].is_bpb
  # OLMES paper metrics by default, the files' choice kept alongside.
  assert reg["arc_challenge"].primary_metric == "acc_uncond"
  assert reg["arc_challenge"].file_primary_metric == "acc_per_char"
  assert reg["arc_easy:mc_5shot"].primary_metric == "acc_raw"
  seed = [t.name for t in tasks.resolve_tasks("seed")]
  assert "mmlu:rc_5shot" in seed and "lm_eval:truthfulqa_mc2" in seed
  assert "lm_eval:gsm8k" in seed
  assert len(tasks.resolve_tasks("core")) == 4
  # each task once; core's ARC-Easy is the validation one, olmes's the test one
  assert len(tasks.resolve_tasks("olmes,arc_easy,core")) == 11


def _docs(name, limit=None):
  return tasks.load_instances(tasks.registry()[name], limit)


def test_olmes_sample_is_the_one_olmes_draws():
  # The shipped PIQA and SocialIQA rc_5shot files are OLMES's 1000-document samples of the
  # validation split that val_rc_5shot holds whole: drawing with olmes_sample gives them back.
  for family in ("piqa", "socialiqa"):
    full, shipped = _docs(f"{family}:val_rc_5shot"), _docs(f"{family}:rc_5shot")
    drawn = [full[i] for i in tasks.olmes_sample(len(full), 1000)]
    assert len(full) > 1000 and len(shipped) == 1000
    assert [d.continuations for d in drawn] == [d.continuations for d in shipped]
    assert [d.contexts[0][-200:] for d in drawn] == [d.contexts[0][-200:] for d in shipped]
  assert tasks.olmes_sample(570, 1000) == list(range(570))  # a smaller split: all, in order


def test_olmes_and_seed_score_arc_and_openbookqa_on_the_test_split():
  reg = tasks.registry()
  for suite in ("olmes", "seed"):
    by_family = {t.family: t for t in tasks.resolve_tasks(suite)}
    for family in ("arc_easy", "arc_challenge", "openbookqa"):
      assert by_family[family].split == "test", (suite, family)
    for family in ("boolq", "hellaswag", "piqa", "winogrande"):
      assert by_family[family].split == "validation", (suite, family)
    assert by_family["mmlu"].split == "test"
  assert {t.split for t in tasks.resolve_tasks("core")} == {"validation"}  # in-loop
  # ARC-Easy: OLMES's 1000 of the 2376 test questions, numbered 0..999 in draw order, each
  # with its unconditional requests; ARC-Challenge (1172) and OBQA (500): all of them.
  arc_e, full = _docs("arc_easy"), _docs("arc_easy:test_rc_5shot")
  order = tasks.olmes_sample(len(full), 1000)
  assert len(full) == 2376 and [d.doc_id for d in arc_e] == list(range(1000))
  assert [d.native_id for d in arc_e] == [full[i].native_id for i in order]
  assert all(d.uncond_contexts for d in arc_e)
  assert len(_docs("arc_challenge")) == 1172 and len(_docs("openbookqa")) == 500
  val = {d.native_id for d in _docs("arc_easy:rc_5shot")}
  assert not val & {d.native_id for d in full}  # the validation and test questions differ
  assert reg["arc_easy"].split_text == "test, OLMES's 1000-document sample"
  assert [d.native_id for d in _docs("arc_easy", 5)] == [d.native_id for d in arc_e[:5]]


def test_unknown_names_fail_listing_the_known_ones():
  with pytest.raises(tasks.TaskError) as e:
    tasks.resolve_tasks("olmes,arc_eazy")
  msg = str(e.value)
  assert "arc_eazy" in msg and "olmes" in msg and "arc_easy" in msg and "hellaswag" in msg
  with pytest.raises(tasks.TaskError, match="limit"):
    tasks.load_instances(tasks.registry()["piqa"], limit=0)


@pytest.mark.parametrize("name", OLMES[:-1] + ("gsm8k",))
def test_request_files_give_documents_with_their_choices(name):
  t = tasks.registry()[name]
  insts = tasks.load_instances(t, limit=4)
  assert len(insts) == 4
  for inst in insts:
    assert len(inst.contexts) == len(inst.continuations) >= 1
    assert 0 <= inst.label < len(inst.continuations)
    assert all(c.startswith(" ") for c in inst.continuations)
  if t.primary_metric == "acc_uncond":
    assert all(i.uncond_contexts == ["Answer:"] * len(i.contexts) for i in insts)
  if name == "winogrande":  # partial scoring: the context changes, the continuation does not
    assert insts[0].contexts[0] != insts[0].contexts[1]
    assert insts[0].continuations[0] == insts[0].continuations[1]


def test_full_request_file_matches_its_config():
  for name, n in (("arc_challenge:rc_5shot", 299), ("arc_challenge", 1172)):
    t = tasks.registry()[name]
    insts = tasks.load_instances(t)
    with open(os.path.join(t.path, "config.json")) as f:
      assert len(insts) == json.load(f)["num_instances"] == n


def test_bad_request_file_is_one_clear_error(tmp_path):
  bad = tmp_path / "mytask"
  bad.mkdir()
  (bad / "requests.jsonl").write_text('{"doc_id": 0, "request": {"context": "a", '
                                      '"continuation": " b"}}\n{not json\n')
  [t] = tasks.resolve_tasks(str(bad))
  with pytest.raises(tasks.TaskError, match="line 2 does not parse"):
    tasks.load_instances(t)
  with gzip.open(bad / "requests.jsonl.gz", "wt") as f:
    f.write('{"doc_id": 0}\n')
  with pytest.raises(tasks.TaskError, match="line 1 lacks"):
    tasks.load_instances(tasks.resolve_tasks(str(bad))[0])


def test_mmlu_follows_the_olmes_format_for_all_57_subjects():
  import datasets
  assert len(tasks.MMLU_SUBJECTS) == 57
  assert sorted(os.listdir(tasks.mmlu_dir())) == sorted(tasks.MMLU_SUBJECTS)
  for subject in tasks.MMLU_SUBJECTS:
    dev = list(datasets.load_from_disk(os.path.join(tasks.mmlu_dir(), subject, "dev")))
    test0 = datasets.load_from_disk(os.path.join(tasks.mmlu_dir(), subject, "test"))[0]
    assert len(dev) == 5
    header = ("The following are multiple choice questions (with answers) about "
              + subject.replace("_", " ") + ".\n\n")
    for variant, formulation in (("rc_5shot", "rc"), ("mc_5shot", "mc")):
      [inst] = tasks.mmlu_subject_instances(subject, variant, limit=1)
      ctx = inst.contexts[0]
      assert ctx.startswith(header) and ctx.endswith("\nAnswer:")
      assert inst.label == test0["answer"] and inst.subtask == subject
      # The OLMES format written out: 5 dev examples with their gold answers (dataset
      # order), each "\n\n"-terminated, then the question.
      def render(ex, with_answer):
        q = "Question: " + ex["question"].strip() + "\n"
        if formulation == "mc":
          q += "".join(f" {'ABCD'[i]}. {c}\n" for i, c in enumerate(ex["choices"]))
        q += "Answer:"
        if with_answer:
          q += " " + (ex["choices"][ex["answer"]] if formulation == "rc"
                      else "ABCD"[ex["answer"]]) + "\n\n"
        return q
      expected = header + "".join(render(ex, True) for ex in dev) + render(test0, False)
      assert ctx == expected, subject
      if formulation == "rc":
        assert inst.continuations == [" " + c for c in test0["choices"]]
      else:
        assert inst.continuations == [" A", " B", " C", " D"]


def test_mmlu_prompt_literal():
  [inst] = tasks.mmlu_subject_instances("abstract_algebra", "mc_5shot", limit=1)
  q = inst.contexts[0].split("\n\n")[-1]
  assert q == ("Question: Find the degree for the given field extension Q(sqrt(2), sqrt(3), "
               "sqrt(18)) over Q.\n A. 0\n B. 4\n C. 2\n D. 6\nAnswer:")
  first_shot = inst.contexts[0].split("\n\n")[1]
  assert first_shot == ("Question: Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\n"
                        " A. 0\n B. 1\n C. 2\n D. 3\nAnswer: B")


def test_list_says_which_split_each_suite_scores():
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  p = subprocess.run([sys.executable, "-m", "eval.run", "--list"], cwd=root, env=env,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  suites = {line.split(":", 1)[0][len("suite "):]: line for line in p.stdout.splitlines()
            if line.startswith("suite ")}
  for suite in ("olmes", "seed"):
    assert ("arc_easy = arc_easy:olmes_rc_5shot (test, OLMES's 1000-document sample)"
            in suites[suite])
    assert "arc_challenge = arc_challenge:test_rc_5shot (test)" in suites[suite]
    assert "openbookqa = openbookqa:test_rc_5shot (test)" in suites[suite]
    assert "winogrande = winogrande:rc_5shot (validation)" in suites[suite]
  assert "arc_easy:rc_5shot (validation)" in suites["core"]
  rows = {line.split()[0]: line for line in p.stdout.splitlines() if line and
          not line.startswith("suite ")}
  assert rows["arc_easy:val_rc_5shot"].endswith("validation")
  assert rows["openbookqa:test_rc_5shot"].endswith("test")


def test_task_kinds_load_their_documents_and_compute_their_metrics(tmp_path):
  """Each task's kind loads it and scores its documents: a single-continuation request
  document is gold-only (bits_per_byte alone), a multiple-choice one gets every metric, and
  lm-eval tasks are not scored here."""
  from eval import metrics
  reg = tasks.registry()
  assert reg["arc_challenge"].kind is tasks.REQUESTS and reg["mmlu"].kind is tasks.MMLU
  assert sorted(n for n, t in reg.items() if not t.scored_here) == sorted(tasks.LM_EVAL_SEED)
  assert all(reg[n].kind is tasks.LM_EVAL for n in tasks.LM_EVAL_SEED)
  gsm = tasks.load_instances(reg["gsm8k"], 2)
  assert len(gsm) == 2 and all(i.gold_only and len(i.continuations) == 1 for i in gsm)
  assert reg["gsm8k"].kind.metrics(gsm[0], [-3.0], [2], [5], [5], None) == {
      "bits_per_byte": 3.0 * metrics.LOG2_E / 5}
  arc = tasks.load_instances(reg["arc_challenge"], 1)[0]
  n = len(arc.continuations)
  m = reg["arc_challenge"].kind.metrics(arc, [-1.0] * n, [1] * n, [2] * n, [2] * n, [-1.0] * n)
  assert not arc.gold_only and set(m) == set(metrics.ALL_METRICS)
  rows = [{"doc_id": 0, "idx": i, "label": 1, "request": {"context": "Q:", "continuation": c}}
          for i, c in enumerate((" a", " b"))]
  (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (t,) = tasks.resolve_tasks([str(tmp_path)])
  assert t.kind is tasks.FILE and t.scored_here
  (doc,) = tasks.load_instances(t)
  assert doc.continuations == [" a", " b"] and doc.label == 1 and not doc.gold_only
  (lm_task,) = tasks.resolve_tasks(["lm_eval:piqa"])
  assert lm_task.kind is tasks.LM_EVAL and not lm_task.scored_here
  with pytest.raises(tasks.TaskError, match="lm-evaluation-harness"):
    tasks.load_instances(lm_task)
