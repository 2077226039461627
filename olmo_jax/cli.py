"""The command line of `python -m olmo_jax.train`: the PyTorch pipeline's aliases and logs
(config files and overrides: olmo_jax/config_files.py).

Logs: by default the terminal shows the trainer's own output, warnings, and one `error:` line
per failure; library INFO logs (absl, Orbax, JAX) and library error dumps go only to
`<workdir>/train.log`. `--verbosity=0` (INFO) or `--verbosity=1` (DEBUG) shows every log on
stderr too, in absl's format.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Sequence

# The PyTorch pipeline's flags -> ours. Flags here (and --config, --workdir) come out of
# `translate_aliases` in the `--flag=value` form, so a value is never taken for a flag.
ALIASES = {
    "--model_size": "--config.model.size",
    "--data_path": "--config.data.data_dir",
    "--output_dir": "--workdir",
    "--config_file": "--config_file",
}
_VALUE_FLAGS = {**ALIASES, "--config": "--config", "--workdir": "--workdir"}
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
  if verbosity is not None:  # the first line of a verbose run says where its logs go
    logging.info("logging: %s and above to stderr%s", logging.getLevelName(terminal_level),
                 f", INFO and above to {log_file}" if log_file else "")
