"""Atomic writes on a local disk: a reader sees the old file (or directory) or the whole new one.

The lowest layer of the project (standard library only), so that data_pipeline, olmo_jax and
eval share one writer; `olmo_jax.paths.write_atomic` adds `gs://` paths on top of it.
A temporary name carries `.tmp-` and the process id, so that concurrent writers never share
one and readers that list a directory can skip files in flight (`".tmp" in name`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable


def tmp_name(path: str) -> str:
  """The temporary name `path` is written under before the rename."""
  return f"{path}.tmp-{os.getpid()}"


def write_atomic(path: str, data: str | bytes | Iterable) -> int:
  """Writes the whole file at `path` under a temporary name, then renames it into place.

  data: str (UTF-8), bytes, or an iterable of bytes-like chunks (e.g. numpy arrays, written
  as their raw bytes, so that a large file is never joined in memory). Returns the bytes
  written. On failure the temporary file is removed and `path` is untouched.
  """
  if isinstance(data, str):
    data = data.encode()
  chunks = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
  tmp = tmp_name(path)
  n = 0
  try:
    with open(tmp, "wb") as f:
      for chunk in chunks:
        n += f.write(memoryview(chunk).cast("B"))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return n


def write_json(path: str, obj, **dumps_kwargs) -> None:
  """write_atomic of json.dumps(obj, **dumps_kwargs) (the default `indent=1`)."""
  dumps_kwargs.setdefault("indent", 1)
  write_atomic(path, json.dumps(obj, **dumps_kwargs))


def leftover_dirs(output: str) -> list[str]:
  """Temporary directories beside `output` that `replacing_directory` leaves only when its
  process is killed (kill -9, power loss): `.NAME.tmp-*`, sorted."""
  parent, name = os.path.split(os.path.abspath(output))
  if not os.path.isdir(parent):
    return []
  prefix = f".{name}.tmp-"
  return sorted(os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(prefix))


def remove_leftovers(output: str) -> list[tuple[str, int]]:
  """Removes `leftover_dirs(output)`; returns (path, bytes) of each. Call it only while
  holding the output's lock: a live writer's temporary directory looks the same."""
  removed = []
  for path in leftover_dirs(output):
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    shutil.rmtree(path, ignore_errors=True)
    removed.append((path, size))
  return removed


@contextlib.contextmanager
def replacing_directory(output: str):
  """Yields a fresh temporary directory beside `output`; on success it becomes `output`.

  The old `output` (if any) is moved aside and removed only after the new one is in place;
  on failure the temporary directory is removed and `output` is untouched. A killed process
  leaves `.NAME.tmp-*` beside `output` (see leftover_dirs / remove_leftovers).
  """
  output = os.path.abspath(output)
  parent, name = os.path.split(output)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the output is an ordinary dir
  old = tmp + ".old"
  if os.path.exists(output):
    os.rename(output, old)
  os.rename(tmp, output)
  shutil.rmtree(old, ignore_errors=True)


def default_file_mode() -> int:
  """The mode open() gives a new file: 0666 less the umask (0644 under the usual 022)."""
  return 0o666 & ~_umask()


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask
