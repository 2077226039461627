"""Multi-process start-up: one `initialize()` for TPU pods, SLURM, explicit flags and one host.

Every process of a multi-host run calls `initialize()` before anything touches a device; JAX's
own distributed runtime (jax.distributed) then joins the processes, and the mesh spans the
devices of all of them. Which cluster we are in is decided once, in this order:

  explicit   --coordinator HOST:PORT --num_processes N --process_id I (any platform, CPU too)
  SLURM      SLURM_JOB_ID with SLURM_NTASKS > 1: coordinator = first node of the step's node
             list, process = SLURM_PROCID. One task per node sees all the node's GPUs; several
             tasks per node get one GPU each (SLURM_LOCALID), unless srun already bound one GPU
             per task (CUDA_VISIBLE_DEVICES names a single device).
  TPU pod    libtpu installed and TPU chips present: jax.distributed.initialize() auto-detects
             the slice's workers from the TPU metadata (a single-host slice is fine too).
  one host   nothing to do.

JAX's own SLURM detection always pins one GPU per process, which is wrong for one task per
node; that is why SLURM is read here.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import logging
import os
import re
import socket
import sys
import threading
from typing import Mapping

from olmo_jax import runtime

DEFAULT_SLURM_PORT_BASE = 61440  # ports 61440-65535, picked from the job id as JAX does
DEFAULT_TIMEOUT_S = 300  # JAX's own default for joining the run
# JAX aborts the process (a fatal log, no exception) when its own deadline passes, so its
# deadline is set past ours and ours ends the process with an `error:` line instead.
_JAX_GRACE_S = 60


@dataclasses.dataclass(frozen=True)
class Setup:
  """How this process joins the run (kind 'single' means no jax.distributed at all)."""

  kind: str  # explicit | slurm | tpu | single
  coordinator: str | None = None
  num_processes: int = 1
  process_id: int = 0
  local_device_ids: tuple[int, ...] | None = None


def first_slurm_host(nodelist: str) -> str:
  """First host of a SLURM node list: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
  m = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?", nodelist.strip())
  if not m or not (m.group(1) or m.group(2)):
    raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
  prefix, ranges = m.group(1), m.group(2)
  if ranges is None:
    return prefix
  return prefix + re.split(r"[-,]", ranges, maxsplit=1)[0]


def _int_env(env: Mapping[str, str], *names: str) -> int | None:
  for n in names:
    if env.get(n, "").strip():
      return int(re.match(r"\d+", env[n].strip()).group(0))
  return None


def _tpu_present() -> bool:
  return importlib.util.find_spec("libtpu") is not None and runtime.tpu_present()


def detect(coordinator: str | None = None, num_processes: int | None = None,
           process_id: int | None = None, env: Mapping[str, str] | None = None,
           tpu: bool | None = None) -> Setup:
  """The Setup for explicit arguments, else the environment; ValueError names a bad flag."""
  env = os.environ if env is None else env
  given = {"--coordinator": coordinator, "--num_processes": num_processes,
           "--process_id": process_id}
  if any(v is not None for v in given.values()):
    missing = [k for k, v in given.items() if v is None]
    if missing and not (num_processes == 1 and coordinator is None):
      raise ValueError(f"multi-process flags go together: also pass {' '.join(missing)} "
                       "(same --coordinator and --num_processes on every process)")
    if num_processes is not None and num_processes < 1:
      raise ValueError(f"--num_processes={num_processes} must be >= 1")
    if num_processes == 1:
      return Setup("single")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, {num_processes})")
    if not re.fullmatch(r"[^\s:]+:\d+", coordinator):
      raise ValueError(f"--coordinator={coordinator!r} must be HOST:PORT, e.g. 10.0.0.1:1234")
    return Setup("explicit", coordinator, num_processes, process_id)
  ntasks = _int_env(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
  if env.get("SLURM_JOB_ID") and ntasks and ntasks > 1 and "SLURM_PROCID" in env:
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    port = env.get("JAX_COORDINATOR_PORT") or str(
        DEFAULT_SLURM_PORT_BASE + int(env["SLURM_JOB_ID"]) % 4096)
    nodes = _int_env(env, "SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES") or 1
    local = None
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if ntasks > nodes and len(visible) != 1:  # several tasks per node: one GPU each
      local = (int(env.get("SLURM_LOCALID", "0")),)
    return Setup("slurm", f"{first_slurm_host(nodelist)}:{port}", ntasks,
                 int(env["SLURM_PROCID"]), local)
  if tpu if tpu is not None else _tpu_present():
    return Setup("tpu")
  return Setup("single")


_done: Setup | None = None


def waiting_line(setup: Setup, timeout_s: int) -> str:
  """What a process says while it joins the run: who waits for whom, for how long."""
  if setup.kind == "tpu":
    return f"waiting for the TPU slice's coordinator (from the TPU metadata), up to {timeout_s} s"
  who = ("the other processes at" if setup.process_id == 0 else "the coordinator")
  return (f"waiting for {who} {setup.coordinator}, process {setup.process_id} of "
          f"{setup.num_processes}, up to {timeout_s} s")


def timeout_line(setup: Setup, timeout_s: int) -> str:
  """The `error:` line of a join that did not complete within `timeout_s`."""
  if setup.kind == "tpu":
    return (f"error: the TPU slice's coordinator did not answer within {timeout_s} s; check "
            "that every worker of the slice runs the same command (--coordinator_timeout)")
  if setup.process_id == 0:
    return (f"error: not every one of the {setup.num_processes} processes joined the "
            f"coordinator {setup.coordinator} (this process, 0) within {timeout_s} s; start "
            "them all with the same --coordinator and --num_processes, or raise "
            "--coordinator_timeout")
  return (f"error: the coordinator {setup.coordinator} did not answer within {timeout_s} s "
          f"(process {setup.process_id} of {setup.num_processes}); start process 0 on that "
          "host and port, check that the port is reachable, or raise --coordinator_timeout")


def port_in_use_message(setup: Setup) -> str:
  port = setup.coordinator.rsplit(":", 1)[1]
  flag = ("JAX_COORDINATOR_PORT (or the job id's default port)" if setup.kind == "slurm"
          else "--coordinator HOST:PORT")
  return (f"coordinator {setup.coordinator}: port {port} is already in use on this host "
          f"(another run's coordinator?); stop that process or choose another port with {flag}")


def check_port_free(setup: Setup) -> None:
  """ValueError when process 0 cannot listen on the coordinator's port (checked before JAX
  tries, which fails with a long RPC-server traceback)."""
  port = int(setup.coordinator.rsplit(":", 1)[1])
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
    try:
      s.bind(("", port))
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        raise ValueError(port_in_use_message(setup)) from None
      raise ValueError(f"coordinator {setup.coordinator}: cannot listen on port {port} "
                       f"({e.strerror}); choose another port") from None


def _join(setup: Setup, timeout_s: int) -> None:
  """jax.distributed.initialize under our deadline: on expiry, one `error:` line, exit 1."""
  import jax
  print(waiting_line(setup, timeout_s), file=sys.stderr, flush=True)

  def expire():
    print(timeout_line(setup, timeout_s), file=sys.stderr, flush=True)
    os._exit(1)  # the join blocks inside JAX; nothing of the run exists yet

  timer = threading.Timer(timeout_s, expire)
  timer.daemon = True
  timer.start()
  try:
    if setup.kind == "tpu":
      jax.distributed.initialize(initialization_timeout=timeout_s + _JAX_GRACE_S)
    else:
      jax.distributed.initialize(setup.coordinator, num_processes=setup.num_processes,
                                 process_id=setup.process_id,
                                 local_device_ids=setup.local_device_ids,
                                 initialization_timeout=timeout_s + _JAX_GRACE_S)
  except Exception as e:  # taken between our check and JAX's bind
    if "Failed to start RPC server" in str(e) or "ddress already in use" in str(e):
      raise ValueError(port_in_use_message(setup)) from None
    raise
  finally:
    timer.cancel()


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = DEFAULT_TIMEOUT_S) -> Setup:
  """Joins this process to the run (see the module docstring); a no-op on one host.

  Must run before the first JAX computation or device query. Safe to call twice.
  timeout_s: how long to wait for the other processes (exit 1 with an `error:` line after).
  """
  global _done
  if _done is not None:
    return _done
  if timeout_s <= 0:
    raise ValueError(f"--coordinator_timeout={timeout_s} must be > 0 (seconds)")
  setup = detect(coordinator, num_processes, process_id)
  if setup.kind in ("explicit", "slurm") and setup.process_id == 0:
    check_port_free(setup)
  if setup.kind != "single":
    import jax
    _join(setup, timeout_s)
    logging.info("jax.distributed (%s): process %d of %d, %d local devices", setup.kind,
                 jax.process_index(), jax.process_count(), jax.local_device_count())
  _done = setup
  return setup


def is_first_process(setup: Setup) -> bool:
  """Whether this is process 0 of the run (after `initialize`)."""
  if setup.kind == "single":
    return True
  if setup.kind == "tpu":  # the pod's own metadata numbers the processes
    import jax
    return jax.process_index() == 0
  return setup.process_id == 0


def define_flags() -> None:
  """The absl flags --coordinator, --num_processes, --process_id (for `initialize_from_flags`)."""
  from absl import flags
  flags.DEFINE_string("coordinator", None, "Multi-process: HOST:PORT of process 0's "
                      "coordinator (with --num_processes and --process_id).")
  flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
  flags.DEFINE_integer("coordinator_timeout", DEFAULT_TIMEOUT_S, "Multi-process: seconds to "
                       "wait for the coordinator and the other processes before giving up.")


def initialize_from_flags(flag_values) -> Setup:
  return initialize(flag_values.coordinator, flag_values.num_processes, flag_values.process_id,
                    flag_values.coordinator_timeout)
