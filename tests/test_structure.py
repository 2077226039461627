"""The structure rules as tests, read from the source with `ast` (no project module is imported).

  - no function or method over 60 lines, anywhere in the repository;
  - no file over 500 lines unless FILES_OVER_500 names it, with the reason;
  - no import cycle between project modules (module-level imports), nor one that imports
    inside functions close, beyond HIDDEN_CYCLES;
  - no project import inside a function beyond what DEFERRED_IMPORTS allows for its file;
  - no two modules of the packages with the same name, none named like a standard-library
    module (`python -m data_pipeline.tokenize` would shadow `tokenize` for a script run from
    inside the package);
  - no name read through a module that only imports it (a re-export), but through the
    modules REEXPORTING_MODULES names, and never in tests.

The allowlists are ratchets: an entry that is no longer needed (a file now short, a count now
lower, a cycle gone) fails too, so they only ever shrink. Extending one is a visible edit of
this file.
"""

from __future__ import annotations

import ast
import collections
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("olmo_jax", "data_pipeline", "eval")
DIRS = PACKAGES + ("scripts", "benchmarks", "tests", "configs")
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 500

# Files over MAX_FILE_LINES lines, each with why it is still one file.
FILES_OVER_500 = {
    "eval/tasks.py": "the OLMES task registry, request loading and few-shot formats",
}

# Project imports inside functions, per file: the count that exists today (to shrink, never to
# grow). The entry points defer what `--help` and the one-line input errors do not need.
DEFERRED_IMPORTS = {
    "benchmarks/bench_checkpoint.py": 6,
    "benchmarks/bench_eval.py": 9,
    "benchmarks/bench_train_cpu.py": 7,
    "benchmarks/bench_train_gpu.py": 12,
    "benchmarks/compile_matrix.py": 8,
    "eval/evaluation.py": 4,
    "eval/harness.py": 3,
    "eval/inloop.py": 2,
    "eval/resume.py": 1,
    "eval/run.py": 6,
    "olmo_jax/datadecide/__main__.py": 11,
    "olmo_jax/datadecide/scorers.py": 7,
    "olmo_jax/datadecide/study.py": 2,
    "olmo_jax/datadecide/synthetic.py": 2,
    "olmo_jax/demo.py": 6,
    "olmo_jax/hf.py": 1,
    "olmo_jax/load.py": 4,
    "olmo_jax/plan.py": 5,
    "olmo_jax/plan_compile.py": 7,
    "olmo_jax/train.py": 22,
    "olmo_jax/train_pack.py": 3,
    "scripts/convert_from_hf.py": 9,
    "scripts/convert_to_hf.py": 5,
    "tests/conftest.py": 4,
    "tests/eval_fixtures.py": 1,
    "tests/test_convert.py": 1,
    "tests/test_datadecide_report.py": 5,
    "tests/test_datadecide_statistics.py": 3,
    "tests/test_datadecide_study.py": 14,
    "tests/test_errors.py": 1,
    "tests/test_eval_harness.py": 1,
    "tests/test_eval_packed.py": 2,
    "tests/test_eval_metrics.py": 3,
    "tests/test_eval_run.py": 12,
    "tests/test_eval_scorer.py": 1,
    "tests/test_eval_tasks.py": 1,
    "tests/test_guards.py": 1,
}


# Import cycles that only imports inside functions close (each with why it is still there).
HIDDEN_CYCLES: dict[tuple[str, str], str] = {}

# Modules that gather other modules' names for their package, each with why. Tests import every
# name from the module that defines it.
REEXPORTING_MODULES: dict[str, str] = {}


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


def test_no_import_cycle_hidden_inside_functions():
  graph = {}
  for path, tree in TREES.items():
    top, deferred = project_imports(tree)
    graph[module_name(path)] = {m for m in top + [d for _, d in deferred] if m in MODULES}
  cycles = {tuple(c) for c in import_cycles(graph)}
  new = sorted(cycles - set(HIDDEN_CYCLES))
  assert not new, "import cycles closed by imports inside functions:\n" + "\n".join(
      " <-> ".join(c) for c in new)
  stale = sorted(set(HIDDEN_CYCLES) - cycles)
  assert not stale, f"no longer a cycle: drop from HIDDEN_CYCLES: {stale}"


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
  assert {"tokenize", "inspect"} <= set(sys.stdlib_module_names)
  defined, imported = module_bindings(ast.parse(
      "from data_pipeline.tokenizer import EOS_TOKEN_ID\nfrom olmo_jax import params\n"
      "if True:\n  from math import pi\nSEQ_LEN = 1\ndef f():\n  from math import e\n"))
  assert defined == {"SEQ_LEN", "f"} and set(imported) == {"EOS_TOKEN_ID", "pi"}
  bindings = {"olmo_jax.sizes": (defined, imported), "olmo_jax.datadecide.report":
              ({"x"}, {"sigmoid": "olmo_jax.datadecide.fits"})}
  reads = reexport_reads("x.py", ast.parse(
      "from olmo_jax import sizes\nfrom olmo_jax.datadecide import report as A\n"
      "sizes.EOS_TOKEN_ID, A.sigmoid, sizes.SEQ_LEN, A.x\n"
      "from olmo_jax.sizes import pi, SEQ_LEN\n"), bindings)
  assert sorted(via for via, _ in reads) == ["olmo_jax.datadecide.report", "olmo_jax.sizes",
                                              "olmo_jax.sizes"]


def test_module_names_are_unique_and_shadow_no_standard_library_module():
  names = collections.defaultdict(list)
  for path in SOURCES:
    if path.split("/")[0] in PACKAGES and not path.endswith(("__init__.py", "__main__.py")):
      names[os.path.basename(path)[:-3]].append(path)
  twice = {n: ps for n, ps in names.items() if len(ps) > 1}
  assert not twice, f"modules of the same name: rename one of each: {twice}"
  dirs = {os.path.basename(os.path.dirname(p)) for p in SOURCES if p.split("/")[0] in PACKAGES}
  shadows = sorted((set(names) | dirs) & set(sys.stdlib_module_names))
  assert not shadows, f"named like standard-library modules: rename {shadows}"


def module_bindings(tree: ast.Module) -> tuple[set[str], dict[str, str]]:
  """(names a module defines, {name: module it was imported from} for the names it only
  imports), from its module-level statements (those under if/try/with included)."""
  defined, imported = set(), {}
  stack = list(tree.body)
  while stack:
    node = stack.pop()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      defined.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
        defined |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    elif isinstance(node, ast.ImportFrom) and node.module:
      for a in node.names:
        if f"{node.module}.{a.name}" not in MODULES:  # a module is no re-export
          imported[a.asname or a.name] = node.module
    elif isinstance(node, (ast.If, ast.Try, ast.With)):
      stack += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                *(s for h in getattr(node, "handlers", []) for s in h.body)]
  return defined, {k: v for k, v in imported.items() if k not in defined}


def reexport_reads(path: str, tree: ast.AST, bindings: dict) -> list[tuple[str, str]]:
  """(module read through, where and what) of each `from M import x` and `M.x` in one file
  where project module M only imports x."""
  out, alias = [], {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      for a in node.names:
        if f"{node.module}.{a.name}" in MODULES:
          alias[a.asname or a.name] = f"{node.module}.{a.name}"
        elif node.module in bindings and a.name in bindings[node.module][1]:
          out.append((node.module, f"{path}:{node.lineno} from {node.module} import {a.name} "
                                   f"(defined in {bindings[node.module][1][a.name]})"))
    elif isinstance(node, ast.Import):
      alias.update({a.asname: a.name for a in node.names if a.asname and a.name in MODULES})
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and alias.get(node.value.id) in bindings):
      mod = alias[node.value.id]
      if node.attr in bindings[mod][1]:
        out.append((mod, f"{path}:{node.lineno} {node.value.id}.{node.attr} (defined in "
                         f"{bindings[mod][1][node.attr]})"))
  return out


def test_names_are_read_from_their_home_not_through_a_reexport():
  bindings = {m: module_bindings(TREES[p]) for m, p in MODULES.items()}
  reads = [r for path, tree in TREES.items() for r in reexport_reads(path, tree, bindings)]
  bad = sorted(what for via, what in reads
               if what.startswith("tests/") or via not in REEXPORTING_MODULES)
  assert not bad, ("names read through a module that only imports them; import them from "
                   "their home:\n" + "\n".join(bad))
  stale = [m for m in REEXPORTING_MODULES if all(via != m for via, _ in reads)]
  assert not stale, f"no module reads through these now: drop from REEXPORTING_MODULES: {stale}"
