"""The process's JAX runtime: the CPU default on a host without accelerators, and the platform.

`init()` is the one runtime initialisation; the entry points (`python -m olmo_jax.train`,
`olmo_jax.demo`, `olmo_jax.datadecide`, `eval.run`, scripts/*.py, benchmarks/*.py) call it
first, before JAX is imported. Importing `olmo_jax` or any library module changes nothing.

On a host with no accelerator (no /dev/nvidia*, /dev/accel*, /dev/vfio/N, /dev/kfd, no TPU
environment) `init()` sets JAX_PLATFORMS=cpu unless the user set JAX_PLATFORMS, and keeps the
CUDA plugin's modules from loading. A CPU host with libtpu and the CUDA compile plugin
installed then starts exactly as one without them: no TPU initialisation, no CUDA driver
messages. A TPU VM or GPU host is left alone: JAX picks its devices as always.

`resolve_platform` is the one place the platform of the devices in use is read (cpu | gpu |
tpu); the config, the kernels, the trainer and the plan ask it.
"""

from __future__ import annotations

import glob
import importlib.abc
import importlib.machinery
import os
import sys

_CUDA_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin")
CUDA_PJRT = "jax_plugins.xla_cuda12"


def tpu_present(env=None) -> bool:
  """TPU chips on this host: their device files, or a TPU VM's environment."""
  env = os.environ if env is None else env
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
              or env.get("TPU_ACCELERATOR_TYPE") or env.get("TPU_WORKER_HOSTNAMES"))


def gpu_present() -> bool:
  """NVIDIA (/dev/nvidia0...) or AMD (/dev/kfd) GPUs on this host."""
  return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


class _NoCuda(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Keeps the CUDA plugin unloaded on a host without GPUs: its extension packages import as
  missing (as when not installed) and its PJRT plugin module as one with nothing to register."""

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in _CUDA_MODULES:
      raise ModuleNotFoundError(f"no GPU on this host: {name} is not loaded", name=name)
    if name == CUDA_PJRT:
      return importlib.machinery.ModuleSpec(name, self)
    return None

  def create_module(self, spec):
    return None

  def exec_module(self, module):
    module.initialize = lambda: None


_NO_CUDA = _NoCuda()


def init() -> None:
  """On a host without accelerators: JAX_PLATFORMS=cpu (unless set) and no CUDA plugin.

  Call it first in an entry point: it is fully effective before JAX is imported (the CUDA
  plugin's modules load with JAX), and sets the platform as long as no backend has started.
  Safe to call more than once.
  """
  if tpu_present() or gpu_present():
    return
  wanted = os.environ.get("JAX_PLATFORMS")
  if wanted is None:
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported first: its config read the environment already
      sys.modules["jax"].config.update("jax_platforms", "cpu")
  elif any(p.strip() in ("cuda", "gpu") for p in wanted.split(",")):
    return  # asked for explicitly: let JAX say what is missing
  if "jax" not in sys.modules and _NO_CUDA not in sys.meta_path:
    sys.meta_path.insert(0, _NO_CUDA)


def allow_cuda() -> None:
  """Lets the CUDA plugin load after `init()` kept it out (for compile-only GPU devices)."""
  if _NO_CUDA in sys.meta_path:
    sys.meta_path.remove(_NO_CUDA)
  for name in [n for n in sys.modules if n == CUDA_PJRT or n.split(".")[0] in _CUDA_MODULES]:
    del sys.modules[name]


def resolve_platform(platform: str = "auto") -> str:
  """'auto': the platform of the devices in use (cpu | gpu | tpu); any other name as given."""
  if platform != "auto":
    return platform
  import jax  # deferred: init() must be able to run before JAX loads
  return device_platform(jax.devices()[0])


def device_platform(device) -> str:
  """A JAX device's platform with CUDA and ROCm as 'gpu'."""
  return "gpu" if device.platform in ("gpu", "cuda", "rocm") else device.platform
