"""The command line of `python -m olmo_jax.train`: aliases, config files, overrides, logs.

Precedence, lowest first: the config file (`--config FILE[:ARG]`, default
configs/train.py:4M), then each `--config_file` of overrides in the order given (a YAML tree
or a one-section .py such as configs/training_configs/default_training.py), then every
`--config.<path>=<value>` and alias on the command line, wherever it stands.

Logs: by default the terminal shows the trainer's own output, warnings, and one `error:` line
per failure; library INFO logs (absl, Orbax, JAX) and library error dumps go only to
`<workdir>/train.log`. `--verbosity=0` (INFO) or `--verbosity=1` (DEBUG) shows every log on
stderr too, in absl's format.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import traceback
from collections.abc import Mapping
from typing import Any, Sequence

import ml_collections

from olmo_jax import config as config_lib

# The PyTorch pipeline's flags -> ours. Flags here (and --config, --workdir) come out of
# `translate_aliases` in the `--flag=value` form, so a value is never taken for a flag.
ALIASES = {
    "--model_size": "--config.model.size",
    "--data_path": "--config.data.data_dir",
    "--output_dir": "--workdir",
    "--config_file": "--config_file",
}
_VALUE_FLAGS = {**ALIASES, "--config": "--config", "--workdir": "--workdir"}
YAML_SUFFIXES = (".yaml", ".yml")
LOG_FILE = "train.log"
# Source trees of the project: log records from elsewhere are library records.
_PROJECT_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
    for d in ("olmo_jax", "data_pipeline", "eval", "scripts"))


def translate_aliases(argv: Sequence[str]) -> list[str]:
  """Maps the PyTorch pipeline's flags onto ours; `--f v` and `--f=v` both become `--f=v`."""
  out, i, argv = [], 0, list(argv)
  while i < len(argv):
    name, eq, val = argv[i].partition("=")
    if name in _VALUE_FLAGS:
      if not eq:
        if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
          raise ValueError(f"flag {name} needs a value ({name} VALUE or {name}=VALUE)")
        val, i = argv[i + 1], i + 1
      out.append(f"{_VALUE_FLAGS[name]}={val}")
    else:
      out.append(argv[i])
    i += 1
  return out


def _split_spec(spec: str) -> tuple[str, str | None]:
  """'configs/train.py:150M' -> ('configs/train.py', '150M'); a path alone -> (path, None)."""
  if ".py:" in spec:
    path, _, arg = spec.partition(".py:")
    return path + ".py", arg
  return spec, None


def load_python_config(spec: str) -> ml_collections.ConfigDict:
  """Runs get_config of a config file given as `PATH[:ARG]`."""
  path, arg = _split_spec(spec)
  if not path.endswith(".py"):
    raise ValueError(f"config file {spec!r}: expected a .py config file (PATH.py[:ARG]) "
                     f"or a YAML file of overrides ({' or '.join(YAML_SUFFIXES)})")
  return config_lib.load_config_file(path, arg)


def load_yaml(path: str) -> dict:
  """The mapping of a YAML overrides file; an empty file is no override."""
  import yaml
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


class _TerminalFilter(logging.Filter):
  """Quiet terminal: the project's warnings and errors, libraries' warnings only.

  A library error (Orbax's failed-save dumps, for instance) reaches the trainer as an
  exception, which prints it as one `error:` line; its record and traceback go to the log
  file alone. Records marked `file_only` (the trainer's own traceback of a failure) too.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if getattr(record, "file_only", False) or record.levelno < logging.WARNING:
      return False
    if record.pathname.startswith(_PROJECT_DIRS):
      return True
    return record.levelno < logging.ERROR or record.levelno >= logging.CRITICAL


class _OneLineFormatter(logging.Formatter):
  """`warning: message`: the first line only, no traceback."""

  def format(self, record: logging.LogRecord) -> str:
    return f"{record.levelname.lower()}: {record.getMessage().splitlines()[0]}"


def _in_project(tb) -> bool:
  return any(f.filename.startswith(_PROJECT_DIRS) for f in traceback.extract_tb(tb))


def _log_library_traceback(exc_type, exc, tb) -> None:
  logging.getLogger(__name__).error("exception printed by a library",
                                    exc_info=(exc_type, exc, tb), extra={"file_only": True})


def _quiet_excepthook(exc_type, exc, tb) -> None:
  """sys.excepthook of a quiet run: shown if it passes through project code (a bug), else logged.

  Native library code prints tracebacks through this hook (PyErr_Print); they go to the log file.
  """
  if _in_project(tb):
    sys.__excepthook__(exc_type, exc, tb)
  else:
    _log_library_traceback(exc_type, exc, tb)


def _quiet_unraisablehook(args) -> None:
  """sys.unraisablehook of a quiet run, as _quiet_excepthook.

  After a failed save, TensorStore callbacks into Orbax's closed event loop raise dozens of
  these, some while the process exits.
  """
  if _in_project(args.exc_traceback):
    sys.__unraisablehook__(args)
  else:
    _log_library_traceback(args.exc_type, args.exc_value, args.exc_traceback)


def setup_logging(verbosity: int | None, log_file: str | None = None) -> None:
  """Routes Python/absl logging: quiet terminal unless `verbosity` is given, full log file.

  verbosity: None for the quiet default; else absl's levels (-1 warning, 0 info, 1 debug)
    and every record at that level goes to stderr in absl's format.
  """
  from absl import logging as absl_logging
  root = logging.getLogger()
  for h in list(root.handlers):
    root.removeHandler(h)
  terminal = logging.StreamHandler(sys.stderr)
  if verbosity is None:
    sys.excepthook, sys.unraisablehook = _quiet_excepthook, _quiet_unraisablehook
    terminal.addFilter(_TerminalFilter())
    terminal.setFormatter(_OneLineFormatter())
    terminal_level = logging.WARNING
  else:
    terminal.setFormatter(absl_logging.PythonFormatter())
    terminal_level = (absl_logging.converter.absl_to_standard(verbosity) if verbosity <= 0
                      else logging.DEBUG - (verbosity - 1))
  terminal.setLevel(terminal_level)
  root.addHandler(terminal)
  level = terminal_level
  if log_file:
    fh = logging.FileHandler(log_file)
    fh.setFormatter(absl_logging.PythonFormatter())
    fh.setLevel(min(logging.INFO, terminal_level))
    root.addHandler(fh)
    level = min(level, logging.INFO)
  root.setLevel(level)
  absl_logging.get_absl_logger().setLevel(logging.NOTSET)  # follows the root's level
