"""One definition of each repeated computation, read from the source with `ast`, and the
facts that let the one definition stand in for the others (the same tokens as lm-eval's
TemplateLM, the same rolling windows as lm-eval's, token files read with their header).

Each rule in RULES names what it counts and where its one definition lives; `where(rule)`
lists every occurrence, so a failure says which file repeats it.
"""

from __future__ import annotations

import ast

import eval_fixtures  # noqa: F401  (offline HF environment first)
import numpy as np
import pytest
from lm_eval import utils as lm_eval_utils
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from test_structure import TREES

from data_pipeline.tokenizer import load_tokenizer
from eval import lm
from eval.encoding import Encoder
from olmo_jax.datadecide.scorers import HeldoutScorer

PROJECT = ("olmo_jax/", "data_pipeline/", "eval/", "scripts/")


PROJECT_TREES = {p: t for p, t in TREES.items() if p.startswith(PROJECT)}


def _functions(tree: ast.AST):
  """(outermost function, node) for every node inside a top-level function or method."""
  for top in ast.walk(tree):
    if isinstance(top, ast.ClassDef) or top is tree:
      for f in top.body:
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
          for node in ast.walk(f):
            yield f, node


def _src(node: ast.AST) -> str:
  return ast.unparse(node)


def _is_call(node, name: str) -> bool:
  """A call of `name` (a bare name or an attribute's last part)."""
  f = node.func if isinstance(node, ast.Call) else None
  return (isinstance(f, ast.Name) and f.id == name) or (
      isinstance(f, ast.Attribute) and f.attr == name)


def rolling_windows(tree):
  """Rolling log-likelihood windows: eval/lm.py's `windows`, or lm-eval's generator."""
  for node in ast.walk(tree):
    if isinstance(node, ast.FunctionDef) and node.name == "windows":
      yield node
    elif isinstance(node, (ast.Name, ast.Attribute)) and _src(node).endswith(
        "get_rolling_token_windows"):
      yield node


def greedy_decoders(tree):
  """Functions picking the next token as the argmax of the model's output (model.py's
  token_logprobs only reports whether a target is the argmax)."""
  seen = set()
  for f, node in _functions(tree):
    if _is_call(node, "argmax") and _src(node.func).startswith("jnp.") and \
        f.name != "token_logprobs" and f.name not in seen:
      seen.add(f.name)
      yield f


def token_file_readers(tree):
  """Readers of a token file's ids: data_pipeline/heldout.py's open_tokens or np.fromfile."""
  for node in ast.walk(tree):
    if isinstance(node, ast.FunctionDef) and node.name == "open_tokens":
      yield node
    elif _is_call(node, "fromfile"):
      yield node


def checkpoint_loaders(tree):
  """Functions turning a checkpoint into params and a ModelConfig (they call restore_params)."""
  seen = set()
  for f, node in _functions(tree):
    if _is_call(node, "restore_params") and f.name not in seen:
      seen.add(f.name)
      yield f


def requests_per_document(tree):
  """`len(<document>.continuations) * ...`: the number of requests of one document."""
  for node in ast.walk(tree):
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and \
        _is_call(node.left, "len") and _src(node.left).endswith(".continuations)"):
      yield node


def task_name_parsers(tree):
  """Comma-separated task names split apart (`tasks.split(",")` and the like)."""
  for f, node in _functions(tree):
    if _is_call(node, "split") and node.args and _src(node.args[0]) == "','" and \
        ("task" in _src(node.func.value) or "task" in f.name):
      yield node


def lm_eval_name_parsers(tree):
  """`lm_eval:<task>` split into its prefix and lm-eval's task name."""
  for node in ast.walk(tree):
    if _is_call(node, "split") and node.args and _src(node.args[0]) == "':'" and \
        len(node.args) > 1 and "name" in _src(node.func.value):
      yield node


def ties_choices(tree):
  """The tuple of decision-accuracy tie rules."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Tuple) and _src(node) == "('half', 'datadecide')":
      yield node


def heldout_checks(tree):
  """`... heldout_fraction > 0` / `<= 0`: whether a run holds documents out."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and \
        isinstance(node.ops[0], (ast.Gt, ast.LtE)) and "heldout_fraction" in _src(node.left) \
        and _src(node.comparators[0]) == "0":
      yield node


def encode_pair_splits(tree):
  """The context/continuation split: our own `len(c) - len(c.rstrip())`, or a call of
  lm-eval's TemplateLM._encode_pair."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and _src(node) == "TemplateLM._encode_pair":
      yield node
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and \
        _is_call(node.left, "len") and _src(node.right).endswith(".rstrip())"):
      yield node


def platform_resolvers(tree):
  for node in ast.walk(tree):
    if isinstance(node, ast.FunctionDef) and node.name == "resolve_platform":
      yield node


# rule -> (counter, the file of its one definition)
RULES = {
    "rolling log-likelihood windows": (rolling_windows, "eval/lm.py"),
    "greedy decoding": (greedy_decoders, "eval/scorer.py"),
    "token file reading": (token_file_readers, "data_pipeline/heldout.py"),
    "checkpoint -> (ModelConfig, params)": (checkpoint_loaders, "olmo_jax/load.py"),
    "requests per document": (requests_per_document, "eval/evaluation.py"),
    "task-name parsing": (task_name_parsers, "eval/tasks.py"),
    "lm_eval:<task> parsing": (lm_eval_name_parsers, "eval/tasks.py"),
    "ties choices": (ties_choices, "olmo_jax/datadecide/__init__.py"),
    "heldout_fraction > 0": (heldout_checks, "data_pipeline/data_plan.py"),
    "context/continuation split": (encode_pair_splits, "eval/encoding.py"),
    "resolve_platform": (platform_resolvers, "olmo_jax/runtime.py"),
}


def where(rule: str, trees: dict[str, ast.AST] = PROJECT_TREES) -> list[str]:
  """'path:line' of every occurrence of a rule in the project packages and scripts."""
  counter = RULES[rule][0]
  return [f"{p}:{n.lineno}" for p, t in trees.items() for n in counter(t)]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_computation_is_defined_once(rule):
  found = where(rule)
  assert len(found) == 1 and found[0].split(":")[0] == RULES[rule][1], (
      f"{rule}: defined {len(found)} times ({found}); keep the one in {RULES[rule][1]} and "
      "call it")


def test_the_rules_find_what_they_count():
  """Each counter sees a planted repeat (guards against a rule that can never fail)."""
  planted = {
      "rolling log-likelihood windows": "def windows(t):\n  pass\n",
      "greedy decoding": "def f(x):\n  return jnp.argmax(x)\n",
      "token file reading": "def f(p):\n  return np.fromfile(p, '<u2')\n",
      "checkpoint -> (ModelConfig, params)": "def f(p):\n  return ck.restore_params(p)\n",
      "requests per document": "n = len(i.continuations) * 2\n",
      "task-name parsing": "def f(a):\n  return a.tasks.split(',')\n",
      "lm_eval:<task> parsing": "k = name.split(':', 1)[1]\n",
      "ties choices": "T = ('half', 'datadecide')\n",
      "heldout_fraction > 0": "ok = d.heldout_fraction > 0\n",
      "context/continuation split": "n = len(c) - len(c.rstrip())\n",
      "resolve_platform": "def resolve_platform():\n  pass\n",
  }
  assert set(planted) == set(RULES)
  for rule, text in planted.items():
    assert len(where(rule, {"eval/planted.py": ast.parse(text)})) == 1, rule


# ------------------------------------------------------------------ what makes them one


class _RecordingLM(TemplateLM):
  """lm-eval's TemplateLM over our tokenizer that returns the token ids it would score."""

  def __init__(self, tok, eos_id):
    super().__init__()
    self.tok, self._eos = tok, eos_id

  @property
  def eot_token_id(self):
    return self._eos

  def tok_encode(self, string, add_special_tokens=None, **kw):
    return self.tok.encode(string, add_special_tokens=add_special_tokens is not False).ids

  def _loglikelihood_tokens(self, requests, **kw):
    return [(ctx, cont) for _, ctx, cont in requests]

  def loglikelihood_rolling(self, requests, disable_tqdm=False):
    raise AssertionError("not used: only loglikelihood's encoding is compared")

  def generate_until(self, requests, disable_tqdm=False):
    raise AssertionError("not used: only loglikelihood's encoding is compared")


PAIRS = [("Question: Is it?\nAnswer:", " yes"), ("Question: Is it?\nAnswer: ", "no"),
         ("The cat sat on the", " mat."), ("Trailing spaces   ", "  word"),
         ("", " alone"), ("Tab\t", "x"), ("Zürich –", " 東京"), ("a\n\n", "b"),
         ("", "<|endoftext|>after"), ("x", "")]


def test_our_encoding_is_lm_evals_template_lm():
  tok = load_tokenizer("olmo")
  eos = tok.token_to_id("<|endoftext|>")
  theirs = _RecordingLM(tok, eos).loglikelihood(
      [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)],
      disable_tqdm=True)
  ours = Encoder(tok, eos).pairs(PAIRS)
  assert [(list(c), list(k)) for c, k in ours] == [(list(c), list(k)) for c, k in theirs]
  assert ours[8][0] == [eos]  # an empty context before an EOS continuation: lm-eval's rule


@pytest.mark.parametrize("n", [0, 1, 5, 8, 9, 17, 40])
def test_lm_windows_are_lm_evals_rolling_windows(n):
  """At stride = the context window, eval/lm.py's windows are lm-eval's
  get_rolling_token_windows(context_len=1) made disjoint: harness and eval.lm agree."""
  ids = list(range(100, 100 + n))
  theirs = [lm_eval_utils.make_disjoint_window(w) for w in
            lm_eval_utils.get_rolling_token_windows(ids, prefix_token=7, max_seq_len=8,
                                                    context_len=1)]
  assert lm.windows(ids, 8, prefix=7) == [(list(c), list(k)) for c, k in theirs]


@pytest.mark.parametrize("layout", ["raw_uint16", "npy_uint16", "raw_uint32", "npy_uint32"])
def test_heldout_scorer_reads_token_files_as_the_data_pipeline_does(tmp_path, layout):
  ids = (np.arange(5 * 17) * 7919 % 70000).astype(np.uint32 if "32" in layout else np.uint16)
  path = str(tmp_path / "held.npy")
  if layout.startswith("npy"):
    np.save(path, ids)
  else:
    ids.tofile(path)
  dtype = "uint32" if layout == "raw_uint32" else "uint16"  # an .npy header names its own
  got = HeldoutScorer(path, seq_len=16, windows=4, batch=2, dtype=dtype).tokens()
  assert got.dtype == np.int32 and got.shape == (4, 17)
  assert np.array_equal(got.ravel(), ids[:4 * 17].astype(np.int32))


def test_the_rules_read_the_project():
  for top in PROJECT:
    assert any(p.startswith(top) for p in PROJECT_TREES), top
  assert all(home in PROJECT_TREES for _, home in RULES.values())
