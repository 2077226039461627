"""JAX's persistent compilation cache, for commands that compile the same programs again.

Scoring a checkpoint compiles one program per batch shape (eval/scorer.py), and a study
scores many checkpoints of the same model shapes, each in a new process: with a cache
directory, every process after the first loads those programs instead of compiling them.
"""

from __future__ import annotations

import os


def enable(directory: str) -> str:
  """Compiled programs are kept in (and read from) `directory`; call before the first jit.

  Every program is kept, however quick its compilation (JAX's default keeps only slow ones).
  Returns the absolute path.
  """
  import jax
  path = os.path.abspath(directory)
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
