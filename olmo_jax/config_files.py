"""One config from files and overrides: the loader every entry point uses.

`load_config(argv)` composes the config of `python -m olmo_jax.train` (and of each replica of
`olmo_jax.train_pack`; the seed's `scripts/olmo/train.py` and its YAML go through it too).
Precedence, lowest first: the config file (`--config FILE[:ARG]`, default
configs/train.py:4M), then each `--config_file` of overrides in the order given (a YAML tree
or a one-section .py such as configs/training_configs/default_training.py), then every
`--config.<path>=<value>` and alias on the command line, wherever it stands (those last are
set by ml_collections' config_flags, after `check_flag_path` named any unknown field).
`apply_overrides` is the one function that sets fields from a mapping: YAML files, one-section
files and a DataDecide study's per-cell overrides (`with_overrides`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any, Sequence

import ml_collections
import yaml

from olmo_jax import config as config_lib

YAML_SUFFIXES = (".yaml", ".yml")


def load_python_config(spec: str) -> ml_collections.ConfigDict:
  """Runs get_config of a config file given as `PATH[:ARG]`."""
  path, arg = config_lib.split_spec(spec)
  if not path.endswith(".py"):
    raise ValueError(f"config file {spec!r}: expected a .py config file (PATH.py[:ARG]) "
                     f"or a YAML file of overrides ({' or '.join(YAML_SUFFIXES)})")
  return config_lib.load_config_file(path, arg)


def load_yaml(path: str) -> dict:
  """The mapping of a YAML overrides file; an empty file is no override."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  with open(path) as f:
    try:
      tree = yaml.safe_load(f)
    except yaml.YAMLError as e:
      raise ValueError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
  if tree is None:
    return {}
  if not isinstance(tree, dict):
    raise ValueError(f"{path}: expected a mapping of config sections (e.g. 'train:' with "
                     f"'steps: 100' under it), got a {type(tree).__name__}")
  return tree


def _is_full_config(c: ml_collections.ConfigDict) -> bool:
  return "model" in c and "train" in c


def section_of(c: ml_collections.ConfigDict, base: ml_collections.ConfigDict,
               source: str) -> str:
  """The section of `base` that a one-section config `c` fills; a ValueError if not exactly one.

  E.g. training_configs/default_training.py defines the fields of `train` only.
  """
  keys = set(c.keys())
  matches = [name for name, sub in base.items()
             if isinstance(sub, ml_collections.ConfigDict) and keys <= set(sub.keys())]
  if len(matches) != 1:
    what = f"several sections ({', '.join(matches)})" if matches else "no section"
    raise ValueError(f"{source}: its fields ({', '.join(sorted(keys))}) match {what} of the "
                     f"config tree; give a full config (with model and train sections), one "
                     f"section's fields, or a YAML file of overrides")
  return matches[0]


def _coerce(current: Any, value: Any, where: str) -> Any:
  """`value` as the type of the field it replaces; a ValueError naming the field if it is not."""
  kind = type(current)
  if current is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
    return value
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if kind is float and isinstance(value, str):
    try:  # YAML 1.1 reads 1e-3 (no dot) as a string
      return float(value)
    except ValueError:
      pass
  names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
  raise ValueError(f"{where} must be {names.get(kind, kind.__name__)} (as its default "
                   f"{current!r}), got {value!r}")


def apply_overrides(c: ml_collections.ConfigDict, tree: Mapping, source: str,
                    prefix: str = "") -> None:
  """Sets every leaf of the nested mapping `tree` in `c`; unknown keys are errors naming them."""
  for key, value in tree.items():
    path = f"{prefix}{key}"
    where = f"{source}: {path}"
    if not isinstance(key, str) or key not in c:
      known = ", ".join(sorted(c.keys()))
      raise ValueError(f"{source}: unknown key {path!r} (the config has no such field; "
                       f"known here: {known})")
    current = c[key]
    if isinstance(current, ml_collections.ConfigDict):
      if not isinstance(value, Mapping):
        raise ValueError(f"{where} is a section: give its fields under it (e.g. "
                         f"'{key}:' then '  {next(iter(current.keys()))}: ...'), got {value!r}")
      apply_overrides(current, value, source, path + ".")
    elif isinstance(value, Mapping):
      raise ValueError(f"{where} is a single value (default {current!r}), not a section")
    else:
      c[key] = _coerce(current, value, where)


def flatten(tree, prefix: str = "") -> dict[str, Any]:
  """{"a.b.c": leaf} of a nested dict or ConfigDict (unflatten's inverse)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, (Mapping, ml_collections.ConfigDict)):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def unflatten(flat: Mapping[str, Any]) -> dict:
  """{"train.lr": 1e-3} -> {"train": {"lr": 1e-3}}."""
  tree: dict = {}
  for key, value in flat.items():
    *path, leaf = key.split(".")
    node = tree
    for p in path:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def with_overrides(c: ml_collections.ConfigDict, flat: Mapping[str, Any],
                   source: str) -> ml_collections.ConfigDict:
  """A copy of `c` with {"train.lr": 0.004, ...} set as `--config.train.lr=...` would set it
  (apply_overrides: unknown keys and values of the wrong type are errors naming them)."""
  out = ml_collections.ConfigDict(c.to_dict())
  apply_overrides(out, unflatten(flat), source)
  return out


def load_config(argv: Sequence[str], default: str) -> tuple[ml_collections.ConfigDict,
                                                             list[str]]:
  """(the config from the files named in argv, argv left for the flag parser).

  `argv` is translated already (see translate_aliases); `--config` and `--config_file` are
  taken out of it, everything else (overrides, --workdir, absl's flags) stays.
  """
  base_spec, files, rest = None, [], []
  for a in argv:
    name, _, val = a.partition("=")
    if name == "--config":
      if base_spec is not None:
        raise ValueError(f"two config files: --config {base_spec} and --config {val}")
      base_spec = val
    elif name == "--config_file":
      files.append(val)
    else:
      rest.append(a)
  base, overrides = None, []  # overrides: (source, nested mapping or one-section ConfigDict)
  for spec in files:
    if spec.lower().endswith(YAML_SUFFIXES):
      overrides.append((spec, load_yaml(spec)))
      continue
    c = load_python_config(spec)
    if not _is_full_config(c):
      overrides.append((spec, c))
    elif base_spec is not None:
      raise ValueError(f"two full configs: {base_spec} and --config_file {spec}; give one, "
                       f"and put further changes in --config.<field>=<value> or a YAML file")
    else:
      base_spec, base = spec, c
  if base is None:
    base_spec = base_spec or default
    base = load_python_config(base_spec)
    if not _is_full_config(base):
      raise ValueError(f"--config {base_spec}: not a full config (it has no model and train "
                       f"sections); pass a section file as --config_file, over the default")
  for source, tree in overrides:
    if isinstance(tree, ml_collections.ConfigDict):
      tree = {section_of(tree, base, source): tree.to_dict()}
    apply_overrides(base, tree, source)
  for a in rest:
    if a.startswith("--config."):
      check_flag_path(base, a.partition("=")[0][len("--config."):])
  return base, rest


def _did_you_mean(key: str, known) -> str:
  close = difflib.get_close_matches(key, [str(k) for k in known], n=1, cutoff=0.6)
  return f"; Did you mean {close[0]}?" if close else ""


def check_flag_path(c: ml_collections.ConfigDict, path: str) -> None:
  """A ValueError unless `--config.<path>` names a field of `c`, with the closest name.

  Checked before the flags are parsed: ml_collections would raise an AttributeError there.
  """
  node = c
  parts = path.split(".")
  for i, key in enumerate(parts):
    key, indexed, _ = key.partition("[")  # config_flags' `field[0]`: an element of a sequence
    if not isinstance(node, ml_collections.ConfigDict):
      raise ValueError(f"flag --config.{path}: config.{'.'.join(parts[:i])} is a single value, "
                       f"not a section")
    if key not in node:
      section = f"config.{'.'.join(parts[:i])}" if i else "the config"
      raise ValueError(f"flag --config.{path}: {section} has no field {key!r}"
                       f"{_did_you_mean(key, node.keys())} (its fields: "
                       f"{', '.join(sorted(node.keys()))})")
    if indexed:
      return  # the element and below: config_flags checks them
    node = node[key]
