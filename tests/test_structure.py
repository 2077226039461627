"""The structure rules as tests, read from the source with `ast` (no project module is imported).

  - no function or method over 60 lines, anywhere in the repository;
  - no file over 500 lines unless FILES_OVER_500 names it, with the reason;
  - no import cycle between project modules (module-level imports);
  - no project import inside a function beyond what DEFERRED_IMPORTS allows for its file.

Both allowlists are ratchets: an entry that is no longer needed (a file now short, a count now
lower) fails too, so they only ever shrink. Extending one is a visible edit of this file.
"""

from __future__ import annotations

import ast
import collections
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("olmo_jax", "data_pipeline", "eval")
DIRS = PACKAGES + ("scripts", "benchmarks", "tests", "configs")
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 500

# Files over MAX_FILE_LINES lines, each with why it is still one file.
FILES_OVER_500 = {
    "data_pipeline/curation.py": "the curation stages (dedup, MinHash, quality rules, top-p%, "
                                 "subsampling) and their CLI in one file; to be split by stage",
    "data_pipeline/sources.py": "one reader per source format (tokens, jsonl, parquet, "
                                "ArrayRecord, TFDS); to be split by format",
    "data_pipeline/tokenize.py": "the tokenize command with its parallel writer; a user-facing "
                                 "`python -m data_pipeline.tokenize`, split with its rename",
    "eval/tasks.py": "the OLMES task registry, request loading and few-shot formats",
    "olmo_jax/checkpoint.py": "the Orbax manager with save, restore, resume and preemption",
    "olmo_jax/hf.py": "the HF <-> JAX mapping for three layouts, read from the parameter tables",
    "olmo_jax/plan.py": "the memory/compile plan: analytic estimate, compiled plan and fixes",
    "tests/test_curation.py": "the tests of data_pipeline/curation.py, split with it",
}

# Project imports inside functions, per file: the count that exists today (to shrink, never to
# grow). The entry points defer what `--help` and the one-line input errors do not need.
DEFERRED_IMPORTS = {
    "benchmarks/bench_checkpoint.py": 6,
    "benchmarks/bench_pack.py": 9,
    "benchmarks/bench_curation.py": 6,
    "benchmarks/bench_eval.py": 9,
    "benchmarks/bench_train_cpu.py": 7,
    "benchmarks/bench_train_gpu.py": 12,
    "benchmarks/compile_matrix.py": 8,
    "configs/train.py": 1,
    "data_pipeline/curation.py": 1,
    "data_pipeline/data_plan.py": 3,
    "data_pipeline/tokenize.py": 1,
    "eval/evaluation.py": 4,
    "eval/harness.py": 3,
    "eval/inloop.py": 2,
    "eval/resume.py": 1,
    "eval/run.py": 6,
    "olmo_jax/config.py": 1,
    "olmo_jax/datadecide/__main__.py": 10,
    "olmo_jax/datadecide/recipes.py": 2,
    "olmo_jax/datadecide/scorers.py": 7,
    "olmo_jax/datadecide/study.py": 3,
    "olmo_jax/datadecide/synthetic.py": 4,
    "olmo_jax/demo.py": 7,
    "olmo_jax/hf.py": 1,
    "olmo_jax/load.py": 3,
    "olmo_jax/plan.py": 12,
    "olmo_jax/train.py": 28,
    "olmo_jax/train_pack.py": 5,
    "olmo_jax/workdir.py": 2,
    "scripts/convert_from_hf.py": 9,
    "scripts/convert_to_hf.py": 5,
    "tests/conftest.py": 4,
    "tests/eval_fixtures.py": 1,
    "tests/test_convert.py": 3,
    "tests/test_curation_fidelity.py": 1,
    "tests/test_datadecide_report.py": 5,
    "tests/test_datadecide_statistics.py": 3,
    "tests/test_datadecide_study.py": 14,
    "tests/test_errors.py": 1,
    "tests/test_eval_harness.py": 1,
    "tests/test_eval_packed.py": 2,
    "tests/test_eval_metrics.py": 4,
    "tests/test_eval_run.py": 13,
    "tests/test_eval_scorer.py": 1,
    "tests/test_eval_tasks.py": 1,
    "tests/test_gcs.py": 8,
    "tests/test_guards.py": 1,
    "tests/test_params.py": 3,
}


def _sources() -> dict[str, str]:
  """{path relative to the repository: text} of every Python file in DIRS."""
  out = {}
  for top in DIRS:
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
      dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
      for name in sorted(filenames):
        if name.endswith(".py"):
          path = os.path.join(dirpath, name)
          with open(path, encoding="utf-8") as f:
            out[os.path.relpath(path, ROOT).replace(os.sep, "/")] = f.read()
  return out


SOURCES = _sources()
TREES = {path: ast.parse(text, filename=path) for path, text in SOURCES.items()}


def module_name(path: str) -> str:
  name = path[:-3].replace("/", ".")
  return name[:-len(".__init__")] if name.endswith(".__init__") else name


MODULES = {module_name(p): p for p in SOURCES}


def imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
  """The project modules an import statement loads (`from pkg import mod` names pkg.mod)."""
  if isinstance(node, ast.Import):
    names = [a.name for a in node.names]
  else:
    base = node.module or ""
    names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
  return [n for n in names if n.split(".")[0] in PACKAGES]


def _type_checking_only(node: ast.AST) -> bool:
  """`if TYPE_CHECKING:` (annotations only: nothing is imported when the program runs)."""
  test = getattr(node, "test", None) if isinstance(node, ast.If) else None
  return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
      isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def project_imports(tree: ast.AST) -> tuple[list[str], list[tuple[int, str]]]:
  """(module-level project imports, [(line, module)] of those inside a function); imports
  under `if TYPE_CHECKING:` are not counted."""
  top, deferred = [], []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      if _type_checking_only(child):
        continue
      if isinstance(child, (ast.Import, ast.ImportFrom)):
        for name in imported_modules(child):
          (deferred.append((child.lineno, name)) if in_function else top.append(name))
      visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                     ast.Lambda)))
  visit(tree, False)
  return top, deferred


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def connect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while not component or component[-1] != v:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      connect(v)
  return cycles


def test_no_function_over_60_lines():
  long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
          for path, tree in TREES.items() for node in ast.walk(tree)
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
  assert not long, f"functions over {MAX_FUNCTION_LINES} lines: split them\n" + "\n".join(long)


def test_no_file_over_500_lines_but_the_allowlisted():
  lines = {path: text.count("\n") for path, text in SOURCES.items()}
  long = sorted(p for p, n in lines.items() if n > MAX_FILE_LINES and p not in FILES_OVER_500)
  assert not long, (f"files over {MAX_FILE_LINES} lines: split them\n"
                    + "\n".join(f"{p} ({lines[p]} lines)" for p in long))
  stale = sorted(p for p in FILES_OVER_500 if lines.get(p, 0) <= MAX_FILE_LINES)
  assert not stale, f"no longer over {MAX_FILE_LINES} lines: drop from FILES_OVER_500: {stale}"
  assert all(reason.strip() for reason in FILES_OVER_500.values())


def test_no_import_cycle_between_project_modules():
  graph = {module_name(path): {m for m in project_imports(tree)[0] if m in MODULES}
           for path, tree in TREES.items()}
  cycles = import_cycles(graph)
  assert not cycles, "import cycles (module-level imports):\n" + "\n".join(
      " <-> ".join(c) for c in cycles)


def test_project_imports_inside_functions_only_where_allowed():
  counts = collections.Counter()
  where = collections.defaultdict(list)
  for path, tree in TREES.items():
    for line, name in project_imports(tree)[1]:
      counts[path] += 1
      where[path].append(f"{path}:{line} {name}")
  over = [f"{p}: {n} > {DEFERRED_IMPORTS.get(p, 0)}\n  " + "\n  ".join(where[p])
          for p, n in sorted(counts.items()) if n > DEFERRED_IMPORTS.get(p, 0)]
  assert not over, ("project imports inside functions: move them to the module top (a deferred "
                    "import only for a heavy optional dependency)\n" + "\n".join(over))
  lower = {p: counts[p] for p, n in DEFERRED_IMPORTS.items() if counts[p] < n}
  assert not lower, f"fewer deferred imports now: lower DEFERRED_IMPORTS to {lower}"


def test_the_rules_see_the_whole_repository():
  """The checks above read every package (guards against a walk that silently finds nothing)."""
  for top in DIRS:
    assert any(p.startswith(top + "/") for p in SOURCES), top
  assert "olmo_jax.model" in MODULES and "data_pipeline.data_plan" in MODULES
  assert import_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
  top, deferred = project_imports(ast.parse(
      "import olmo_jax.model\nif TYPE_CHECKING:\n  import olmo_jax.trainer\n"
      "def f():\n  from eval import tasks\n  import numpy\n"))
  assert top == ["olmo_jax.model"] and deferred == [(5, "eval.tasks")]
