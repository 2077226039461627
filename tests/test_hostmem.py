"""Host malloc settings for CPU training: large freed blocks are reused without page faults."""

import os
import platform
import subprocess
import sys

import pytest

from olmo_jax import hostmem

PROBE = r"""
import ctypes, resource
from olmo_jax import hostmem
applied = hostmem.keep_freed_memory(force=True)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def use_block(n=64 << 20):  # what XLA does with a step's temporaries: allocate, touch, free
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
use_block()  # the heap grows once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  use_block()
print(int(applied), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
"""


def _probe(env_value):
  env = dict(os.environ)
  env.pop(hostmem.ENV, None)
  if env_value is not None:
    env[hostmem.ENV] = env_value
  out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                       check=True).stdout.split()
  return int(out[0]), int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc malloc settings")
def test_freed_large_blocks_are_reused_without_page_faults():
  applied, faults = _probe(None)
  assert applied == 1
  skipped, default_faults = _probe("default")
  assert skipped == 0
  # A 64 MB block is 16k pages: with glibc's defaults each allocation faults them all in
  # again; kept in the heap, it faults (almost) none.
  assert default_faults > 10_000
  assert faults < 1_000


def test_not_applied_once_a_jax_backend_has_started():
  code = ("import jax; jax.devices(); from olmo_jax import hostmem; "
          "print(int(hostmem.keep_freed_memory()))")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop(hostmem.ENV, None)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       check=True).stdout.split()
  assert out[-1] == "0"


def test_cpu_training_follows_jax_platforms(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not hostmem.cpu_training()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert hostmem.cpu_training()
