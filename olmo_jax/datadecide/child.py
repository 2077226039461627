"""`python -m olmo_jax.datadecide.child PARENT_PID CMD...`: CMD, ending when PARENT_PID ends.

The study starts every training run through this: it asks Linux for SIGTERM when its parent
dies (PR_SET_PDEATHSIG, kept across exec), then becomes CMD. A killed study therefore leaves
no orphan trainer writing into a cell that the next study run will resume. Setting this up
here, not in a `preexec_fn`, keeps the study process from forking while JAX threads run.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> int:
  parent, cmd = int(sys.argv[1]), sys.argv[2:]
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
  except (OSError, AttributeError):
    pass  # not Linux: children may outlive a killed study
  if os.getppid() != parent:  # the study died before the request took effect
    return 1
  os.execvp(cmd[0], cmd)
  return 1  # unreachable: execvp replaces this process or raises


if __name__ == "__main__":
  sys.exit(main())
