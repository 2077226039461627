"""The walk of the training config from `olmo_jax/train.py:run`, read from the source (AST).

    python benchmarks/config_walk.py [--verbose] [--root DIR]

Follows the config object (the tree `run` receives, and whatever holds it whole afterwards: a
resolved copy, a run spec) through every project function it is passed to, as a bare name.
Prints three counts and where each comes from:
  - files entered: the files of the functions that receive it;
  - stays: the call sites that pass it on (a function that receives it, once per call site);
  - returns: the return statements of those functions that hand back a value read from it
    (the config again, or something derived from its fields: a re-derivation);
and how many times the walk enters olmo_jax/config.py from another file (and how many of the
stays are in it).

A name holds the config when it is a parameter it was passed as, or is assigned the config,
a copy of it (`ConfigDict(x.to_dict())`), an object of a class of olmo_jax/config.py
constructed from it (a run spec), or the return of a walked function that returns it whole. A method
called on such an object is a stay in its class's file. Its fields (`cfg.train`) are values
read from it, not the config itself.
"""

from __future__ import annotations

import argparse
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("olmo_jax", "data_pipeline", "eval")
CONFIG_MODULE = "olmo_jax.config"


def index_project(root: str = REPO) -> tuple[dict, dict]:
  """({module: {function or Class.method: node}}, {module: {local name: target}})."""
  funcs, names = {}, {}
  for pkg in PACKAGES:
    for dirpath, _, files in os.walk(os.path.join(root, pkg)):
      for f in files:
        if not f.endswith(".py"):
          continue
        path = os.path.join(dirpath, f)
        mod = os.path.relpath(path, root)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        tree = ast.parse(open(path).read())
        funcs[mod], names[mod] = _functions(tree), _imports(tree, mod)
  return funcs, names


def _functions(tree) -> dict:
  """{function or Class.method: node}, and {Class: node} of each class (its constructor)."""
  out = {}
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      out[node.name] = node
    elif isinstance(node, ast.ClassDef):
      out[node.name] = node
      for sub in node.body:
        if isinstance(sub, ast.FunctionDef):
          out[f"{node.name}.{sub.name}"] = sub
  return out


def _imports(tree, mod: str) -> dict:
  """{local name: module or (module, name)} of every import in the file, top or deferred."""
  out = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      base = node.module
      if node.level:
        base = ".".join(mod.split(".")[:-node.level] + [node.module])
      for a in node.names:
        out[a.asname or a.name] = (base, a.name)
    elif isinstance(node, ast.Import):
      for a in node.names:
        out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
  return out


class Walk:
  """One walk from a start function and one of its parameters."""

  def __init__(self, funcs, names):
    self.funcs, self.names = funcs, names
    self.stays, self.returning, self.memo = [], [], {}
    self.classes: set = set()  # (module, Class) of objects built around the config

  def callee(self, mod: str, func: ast.expr):
    """(module, function key) a call goes to, or None outside the project."""
    target = None
    if isinstance(func, ast.Name):
      if func.id in self.funcs[mod]:
        return mod, func.id
      target = self.names[mod].get(func.id)
    elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
      imported = self.names[mod].get(func.value.id)
      if isinstance(imported, tuple):  # `from olmo_jax import plan` -> module olmo_jax.plan
        imported = ".".join(imported) if ".".join(imported) in self.funcs else None
      if isinstance(imported, str) and imported in self.funcs:
        target = (imported, func.attr)
    if isinstance(target, tuple) and target[0] in self.funcs:
      m, name = target
      if f"{name}.__init__" in self.funcs[m]:
        return m, f"{name}.__init__"
      if name in self.funcs[m]:
        return m, name
    return None

  def method(self, func: ast.expr, built):
    """(module, Class.method) of `x.method(...)` on an x built as one of self.classes."""
    if isinstance(func, ast.Attribute) and _holds(func.value, built):
      for m, cls in self.classes:
        if f"{cls}.{func.attr}" in self.funcs[m]:
          return m, f"{cls}.{func.attr}"
    return None

  def walk(self, mod: str, key: str, param: str) -> set[int]:
    """Walks `param` of function (mod, key); the positions of its returns that give it back
    whole (0 for a single value)."""
    if (mod, key, param) in self.memo:
      return self.memo[(mod, key, param)]
    self.memo[(mod, key, param)] = set()
    node = self.funcs[mod][key]
    held = {param}
    # Names holding an object built around the config: `self`, or a parameter annotated
    # with (or a local assigned) one of the classes built so far.
    built = {param} if param == "self" or self._annotated_built(node, param) else set()
    for stmt in _in_order(node):
      if isinstance(stmt, ast.Call):
        self._call(mod, key, stmt, held, built)
      elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
        self._assign(mod, stmt, held, built)
    whole = set()
    for ret in (n for n in ast.walk(node) if isinstance(n, ast.Return) and n.value):
      values = ret.value.elts if isinstance(ret.value, ast.Tuple) else [ret.value]
      whole |= {i for i, v in enumerate(values) if _holds(v, held) or self._built(mod, v, held)}
      if any(isinstance(n, ast.Name) and n.id in held for n in ast.walk(ret.value)):
        self.returning.append((mod, key, ret.lineno))
    self.memo[(mod, key, param)] = whole
    return whole

  def _built(self, mod: str, v: ast.expr, held) -> bool:
    """`v` constructs a class of the config module from the config (a run spec; recorded in
    self.classes). Other objects built from it (a checkpointer, a hook) are not the config."""
    target = self.callee(mod, v.func) if isinstance(v, ast.Call) else None
    if (target is None or target[0] != CONFIG_MODULE
        or not _builds(self.funcs[target[0]][target[1]], v, held)):
      return False
    self.classes.add((target[0], target[1].split(".")[0]))
    return True

  def _annotated_built(self, node, param: str) -> bool:
    ann = next((a.annotation for a in node.args.args if a.arg == param), None)
    name = ann.attr if isinstance(ann, ast.Attribute) else getattr(ann, "id", None)
    return any(cls == name for _, cls in self.classes)

  def _call(self, mod, key, call, held, built) -> None:
    bound = self.method(call.func, built)
    if bound is not None:
      self.stays.append(((mod, key), bound))
      self.walk(*bound, "self")
      return
    target = self.callee(mod, call.func)
    if target is None or isinstance(self.funcs[target[0]][target[1]], ast.ClassDef):
      return
    tnode = self.funcs[target[0]][target[1]]
    params = [a.arg for a in tnode.args.args]
    if params[:1] == ["self"]:
      params = params[1:]
    passed = [(params[i] if i < len(params) else None, a) for i, a in enumerate(call.args)]
    passed += [(k.arg, k.value) for k in call.keywords]
    for name, arg in passed:
      if name and _holds(arg, held):
        self.stays.append(((mod, key), target))
        self.walk(*target, name)

  def _assign(self, mod, stmt, held, built) -> None:
    v = stmt.value
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    got, new = set(), False
    if _holds(v, held):
      got = {0}
    elif isinstance(v, ast.Call):
      if _is_copy(v, held):
        got = {0}
      target = self.callee(mod, v.func)
      if self._built(mod, v, held):
        got, new = {0}, True  # an object built around the config holds it
      elif target is not None and not isinstance(self.funcs[target[0]][target[1]],
                                                 ast.ClassDef):
        for name, arg in zip([a.arg for a in self.funcs[target[0]][target[1]].args.args],
                             v.args):
          if _holds(arg, held):
            got |= self.walk(*target, name)
    for t in targets:
      elts = t.elts if isinstance(t, ast.Tuple) else [t]
      for i, e in enumerate(elts):
        if isinstance(e, ast.Name) and (i in got or (len(elts) == 1 and got)):
          held.add(e.id)
          if new or _holds(v, built):
            built.add(e.id)


def _holds(e: ast.expr, held) -> bool:
  """Whether `e` is a held name: the config itself, not one of its fields."""
  return isinstance(e, ast.Name) and e.id in held


def _builds(node, call: ast.Call, held) -> bool:
  """A project class constructed from the config (or from values read from it)."""
  return (isinstance(node, ast.ClassDef) or node.name == "__init__") and any(
      isinstance(n, ast.Name) and n.id in held
      for a in [*call.args, *[k.value for k in call.keywords]] for n in ast.walk(a))


def _is_copy(call: ast.Call, held) -> bool:
  """`ConfigDict(x.to_dict())` of a held x."""
  return any(isinstance(n, ast.Name) and n.id in held for a in call.args
             for n in ast.walk(a)) and any(isinstance(n, ast.Attribute) and n.attr == "to_dict"
                                           for a in call.args for n in ast.walk(a))


def _in_order(node):
  """The calls and assignments of a function body in source order (nested functions too)."""
  found = [n for n in ast.walk(node) if isinstance(n, (ast.Call, ast.Assign, ast.AnnAssign))]
  return sorted(found, key=lambda n: (n.lineno, n.col_offset,
                                      0 if isinstance(n, ast.Call) else 1))


def measure(root: str = REPO, start=("olmo_jax.train", "run"), param: str = "config") -> dict:
  """The counts of the walk of the source tree at `root` (see module docstring)."""
  w = Walk(*index_project(root))
  w.walk(*start, param)
  entered = {start[0]} | {t[0] for _, t in w.stays}
  return {"files": sorted(entered), "stays": w.stays, "returns": sorted(w.returning),
          "config_stays": [s for s in w.stays if s[1][0] == CONFIG_MODULE],
          "config_entries": [s for s in w.stays
                             if s[1][0] == CONFIG_MODULE and s[0][0] != CONFIG_MODULE]}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--verbose", action="store_true")
  ap.add_argument("--root", default=REPO, help="a source tree (e.g. `git archive` of a commit)")
  a = ap.parse_args()
  m = measure(a.root)
  print(f"files entered: {len(m['files'])}; stays: {len(m['stays'])}; returns: "
        f"{len(m['returns'])}; {CONFIG_MODULE} entered {len(m['config_entries'])} time(s) "
        f"from other files ({len(m['config_stays'])} stays in it)")
  if a.verbose:
    print("files:", ", ".join(m["files"]))
    for (fm, fk), (tm, tk) in m["stays"]:
      print(f"  stay  {fm}.{fk} -> {tm}.{tk}")
    for mod, key, line in m["returns"]:
      print(f"  return  {mod}.{key} (line {line})")


if __name__ == "__main__":
  main()
