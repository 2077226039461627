"""Host memory settings for training on CPU.

XLA:CPU allocates each step's temporaries afresh (for the 20M model about 1.6 GB per
step) and glibc returns blocks that large to the kernel on free, so every step touches them
as new pages again: about 500k page faults and a fifth of the step's CPU time spent in the
kernel. `keep_freed_memory()` makes glibc serve large blocks from its heap and keep freed
memory for reuse, which removes those faults. The process keeps its peak memory mapped;
nothing else changes (same values, same allocations).

It must run before JAX creates its CPU client (the client's threads pick their malloc arena
when they first allocate), so `python -m olmo_jax.train` calls it first thing. Set
OLMO_JAX_HOST_MALLOC=default to leave glibc's settings alone.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pkgutil
import platform
import sys

# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
INT_MAX = 2**31 - 1

ENV = "OLMO_JAX_HOST_MALLOC"
_applied = False


def _accelerator_plugin_installed() -> bool:
  """True when a JAX GPU/TPU plugin is importable (checked without starting JAX)."""
  for name in ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
               "jax_rocm7_plugin"):
    if importlib.util.find_spec(name) is not None:
      return True
  try:
    import jax_plugins  # namespace package the PJRT plugins install into
  except ImportError:
    return False
  return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def cpu_training() -> bool:
  """Whether JAX will run on the CPU here, decided without initialising a backend."""
  platforms = os.environ.get("JAX_PLATFORMS", "") or os.environ.get("JAX_PLATFORM_NAME", "")
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not _accelerator_plugin_installed()


def _jax_backend_started() -> bool:
  xb = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(xb, "_backends", None))


def keep_freed_memory(force: bool = False) -> bool:
  """Keeps freed host memory mapped for reuse (glibc only). Returns whether it applied.

  Applies when training runs on the CPU (or `force`), before JAX has started a backend, on
  glibc, unless OLMO_JAX_HOST_MALLOC=default. Safe to call more than once.
  """
  global _applied
  if _applied:
    return True
  if os.environ.get(ENV, "").lower() == "default":
    return False
  if not force and (not cpu_training() or _jax_backend_started()):
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # One arena: a thread's own arena maps every large block afresh whatever the settings.
  # No mmap for large blocks and no trimming: freed blocks stay in the heap for reuse.
  ok = all(mallopt(param, value) == 1 for param, value in
           ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, INT_MAX)))
  _applied = ok
  return ok
