"""Which devices JAX uses here, and compile-only devices of accelerators that are not here.

Devices at hand: JAX picks them; on a host without accelerators the entry points'
`runtime.init()` makes that a plain CPU host (olmo_jax/runtime.py).

Devices not at hand (`--dry_run` / the plan for plan.platform=gpu|tpu): the compilers are
loaded on demand and give compile-only devices (jax.experimental.topologies) that the real
train step is lowered and compiled for:
  gpu  the CUDA PJRT plugin with an XLA GPU target description (gpu_targets/*.txtpb, written from
       the cards' published specifications) and a topology of hosts x devices per host;
  tpu  libtpu with a topology name such as v5p:2x2x2 and a number of slices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys

from olmo_jax import runtime

TARGET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")
# plan.device_kind -> target description file (gpu_targets/<name>.txtpb).
GPU_TARGETS = {"a100": "a100_80gb", "a100_80gb": "a100_80gb", "a100_40gb": "a100_40gb",
               "h100": "h100_80gb", "h100_80gb": "h100_80gb", "h200": "h200_141gb",
               "h200_141gb": "h200_141gb"}
# HBM per chip (bytes) by the compile-only TPU device's kind (Cloud TPU documentation).
TPU_MEMORY = {"tpu v4": 32 * 2**30, "tpu v5 lite": 16 * 2**30, "tpu v5e": 16 * 2**30,
              "tpu v5p": 95 * 2**30, "tpu v5": 95 * 2**30, "tpu v6 lite": 32 * 2**30,
              "tpu v6e": 32 * 2**30}


def compiler_installed(platform: str) -> bool:
  """Whether the compile-only compiler for `platform` (gpu | tpu) is installed."""
  from importlib import metadata
  try:
    metadata.version({"gpu": "jax-cuda12-plugin", "tpu": "libtpu"}[platform])
    return True
  except metadata.PackageNotFoundError:
    return False


@contextlib.contextmanager
def _quiet_stderr():
  """Silences native stderr (the CUDA stubs' 'no driver' lines) while a compiler loads."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(os.devnull, "w") as null:
    os.dup2(null.fileno(), 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def load_cuda_compiler() -> None:
  """Registers the CUDA PJRT plugin for compile-only use; ImportError when not installed."""
  from jax._src import xla_bridge as xb
  if "cuda" in xb._topology_factories:
    return
  runtime.allow_cuda()
  xb.backends()  # the devices at hand first (plugin discovery runs once)
  with _quiet_stderr():
    plugin = importlib.import_module(runtime.CUDA_PJRT)
    if "cuda" not in xb._topology_factories:
      plugin.initialize()
  if "cuda" not in xb._topology_factories:
    raise ImportError("the CUDA plugin did not register (pip install jax-cuda12-plugin "
                      "jax-cuda12-pjrt at the jax version)")


@dataclasses.dataclass(frozen=True)
class Target:
  """Compile-only devices of a target and what the plan needs to know about them."""

  platform: str  # gpu | tpu
  device_kind: str
  devices: tuple  # jax compile-only devices
  hosts: int  # GPU hosts, or TPU slices
  topology: str
  device_memory: int  # bytes per device

  def describe(self) -> dict:
    key = "hosts" if self.platform == "gpu" else "slices"
    return {"platform": self.platform, "device_kind": self.device_kind,
            "devices": len(self.devices), key: self.hosts, "topology": self.topology}


def gpu_target_config(kind: str) -> tuple[str, str]:
  """(description file name, its text) for plan.device_kind, e.g. h100 or a100_40gb."""
  key = kind.lower().replace("-", "_").replace(" ", "_")
  if key not in GPU_TARGETS:
    raise ValueError(f"plan.device_kind={kind!r} has no GPU target description; choose one "
                     f"of {sorted(GPU_TARGETS)}")
  name = GPU_TARGETS[key]
  with open(os.path.join(TARGET_DIR, name + ".txtpb")) as f:
    return name, f.read()


def gpu_target(kind: str, devices: int, hosts: int = 1) -> Target:
  """`devices` compile-only GPUs of `kind` over `hosts` hosts."""
  if hosts < 1 or devices % hosts:
    raise ValueError(f"plan.devices={devices} must split evenly over plan.hosts={hosts}")
  name, text = gpu_target_config(kind)
  load_cuda_compiler()
  from jax.experimental import topologies
  topology = f"1x{hosts}x{devices // hosts}"
  topo = topologies.get_topology_desc(platform="cuda", target_config=text, topology=topology)
  memory = int(text.split("device_memory_size:")[1].split()[0])
  return Target("gpu", name, tuple(topo.devices), hosts, topology, memory)


def tpu_target(topology: str, slices: int = 1) -> Target:
  """Compile-only TPU chips of a topology name (e.g. v5p:2x2x2) over `slices` slices."""
  if not topology:
    raise ValueError("plan.platform=tpu: set plan.topology, e.g. v5e:4x4 or v5p:2x2x2")
  from jax.experimental import topologies
  if not runtime.tpu_present():  # no chips to guard: compile-only libtpu in any number of processes
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  kw = {"num_slices": slices} if slices > 1 else {}
  try:
    with _quiet_stderr():  # libtpu's notes on the missing TPU metadata of a CPU host
      topo = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kw)
  except RuntimeError as e:
    if "INVALID_ARGUMENT" not in str(e):
      raise  # no TPU compiler here: the caller falls back to the analytic plan
    raise ValueError(f"plan.topology={topology!r} is not a TPU topology ("
                     f"{str(e).splitlines()[0][:120]}); use a name such as v4:2x2x2, "
                     "v5e:4x4, v5p:2x2x2 or v6e:4x4") from None
  kind = topo.devices[0].device_kind.lower()
  memory = next((m for k, m in sorted(TPU_MEMORY.items(), key=lambda kv: -len(kv[0]))
                 if kind.startswith(k)), 0)
  return Target("tpu", kind, tuple(topo.devices), slices, topology, memory)
