"""A private one-node SLURM cluster for the tests (and for trying the launchers by hand).

    python tests/slurm_cluster.py up DIR     # install if needed, start, print its environment
    python tests/slurm_cluster.py down DIR   # cancel its jobs, stop its daemons

The cluster is one node (this host, under its own name so that jax.distributed's coordinator,
the first host of the node list, resolves) with `CPUS` CPU slots, its own munge key and socket,
ports, state and logs under DIR: it never touches a system SLURM, and `SLURM_CONF` points the
clients (sbatch, srun, squeue, scancel, scontrol) at it. Daemons run as root, as slurmd must to
start jobs; where the SLURM and munge binaries are missing they are installed from the
distribution (Debian/Ubuntu packages munge, slurmctld, slurmd, slurm-client; no recommends, and
no service started by the install). The downloaded packages stay in $OLMO_JAX_APT_CACHE
(default ~/.cache/olmo-jax/apt), which a CI cache can keep between runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "scontrol")
CPUS = 4  # CPU slots of the node: a 2-task launcher job plus array tasks beside it
START_TIMEOUT_S = 60
_POLICY_RC = "/usr/sbin/policy-rc.d"
# Clusters started for a process (a test session): OWNER_PID-N files holding the directory, so
# that a later start stops those whose owner died without stopping them (a killed session).
REGISTRY = "/tmp/olmo-jax-slurm-clusters"


def missing_binaries() -> list[str]:
  return [b for b in BINARIES if shutil.which(b, path=_sbin_path()) is None]


def _sbin_path() -> str:
  return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def unavailable_reason() -> str | None:
  """Why a private cluster cannot be had here (one line), or None when it can."""
  if not sys.platform.startswith("linux"):
    return f"SLURM tests skipped: a private SLURM cluster needs Linux (this is {sys.platform})"
  if os.geteuid() != 0:
    return (f"SLURM tests skipped: a private SLURM cluster needs root (slurmd starts jobs as "
            f"their owner); running as uid {os.geteuid()}")
  if missing_binaries() and shutil.which("apt-get") is None:
    return (f"SLURM tests skipped: {', '.join(missing_binaries())} not installed and no apt-get "
            f"to install {' '.join(PACKAGES)}")
  return None


def _apt(*args: str, cache: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
  return subprocess.run(["apt-get", "-q", "-y", "-o", f"Dir::Cache::Archives={cache}", *args],
                        env=env, capture_output=True, text=True)


def install() -> float:
  """Installs the packages if any binary is missing; returns the seconds it took (0 if none).

  Serialised by a lock file, so that parallel test workers install once. A temporary
  policy-rc.d keeps the packages' own services from starting (we start ours, elsewhere).
  """
  with open("/tmp/olmo-jax-slurm-install.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not missing_binaries():
      return 0.0
    t0 = time.perf_counter()
    cache = os.environ.get("OLMO_JAX_APT_CACHE",
                           os.path.expanduser("~/.cache/olmo-jax/apt"))
    os.makedirs(os.path.join(cache, "partial"), exist_ok=True)
    own_policy = not os.path.exists(_POLICY_RC)
    if own_policy:
      with open(_POLICY_RC, "w") as f:
        f.write("#!/bin/sh\nexit 101\n")
      os.chmod(_POLICY_RC, 0o755)
    try:
      proc = _apt("install", "--no-install-recommends", *PACKAGES, cache=cache)
      if proc.returncode != 0:  # no package lists yet (a fresh image): fetch them, retry
        _apt("update", cache=cache)
        proc = _apt("install", "--no-install-recommends", *PACKAGES, cache=cache)
    finally:
      if own_policy:
        os.remove(_POLICY_RC)
    if proc.returncode != 0:
      raise RuntimeError(f"apt-get install {' '.join(PACKAGES)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _slurm_conf(d: str, node: str, first_job_id: int) -> str:
  return f"""\
ClusterName=olmojax
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
FirstJobId={first_job_id}
MaxArraySize=10001
KillWait=5
MinJobAge=600
InactiveLimit=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName={node} NodeAddr=127.0.0.1 CPUs={CPUS} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@dataclasses.dataclass
class Cluster:
  """A started cluster: `env` is os.environ with SLURM_CONF (and the sbin dirs on PATH)."""

  dir: str

  @property
  def conf(self) -> str:
    return os.path.join(self.dir, "slurm.conf")

  @property
  def env(self) -> dict:
    return dict(os.environ, SLURM_CONF=self.conf, PATH=_sbin_path())

  def run(self, *argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), env=kw.pop("env", self.env), capture_output=True,
                          text=True, timeout=kw.pop("timeout", 60), **kw)
    if check and proc.returncode != 0:
      raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return proc

  def jobs(self) -> list[str]:
    """Ids of the jobs (array tasks as JOB_TASK) still pending or running."""
    return self.run("squeue", "-h", "-r", "-o", "%i").stdout.split()

  def wait(self, job: str | None = None, timeout_s: float = 600) -> None:
    """Waits until `job` (all jobs when None) has left the queue."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
      left = self.jobs()
      if not [j for j in left if job is None or j == job or j.startswith(f"{job}_")]:
        return
      time.sleep(0.5)
    raise TimeoutError(f"SLURM jobs {job or 'all'} still queued after {timeout_s} s")

  def job_state(self, job: str) -> tuple[str, str]:
    """(JobState, ExitCode) of a finished or running job, e.g. ('COMPLETED', '0:0')."""
    out = self.run("scontrol", "-o", "show", "job", job).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return fields["JobState"], fields["ExitCode"]

  def _pid(self, name: str) -> int | None:
    try:
      with open(os.path.join(self.dir, f"{name}.pid")) as f:
        return int(f.read().strip())
    except (OSError, ValueError):
      return None

  def stop(self) -> None:
    """Cancels every job, stops slurmctld, slurmd and munged, and waits until they are gone."""
    ctld = self._pid("slurmctld")
    if os.path.exists(self.conf) and ctld and _alive(ctld):
      with contextlib.suppress(Exception):
        self.run("scancel", "--full", "--user=root", check=False)
        self.wait(timeout_s=30)
      with contextlib.suppress(Exception):
        self.run("scontrol", "shutdown", check=False, timeout=20)
    pids = [p for p in map(self._pid, ("slurmd", "slurmctld", "munged")) if p]
    deadline = time.time() + 15
    for sig in (signal.SIGTERM, signal.SIGKILL):
      for pid in pids:
        with contextlib.suppress(ProcessLookupError):
          if time.time() > deadline or sig == signal.SIGTERM:
            os.kill(pid, sig)
      while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
      deadline = time.time()  # the SIGKILL round does not wait again
    for name in ("slurmd", "slurmctld", "munged"):
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(self.dir, f"{name}.pid"))
    for entry in os.listdir(REGISTRY) if os.path.isdir(REGISTRY) else ():
      with contextlib.suppress(OSError), open(os.path.join(REGISTRY, entry)) as f:
        if f.read().strip() == self.dir:
          os.remove(os.path.join(REGISTRY, entry))


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie child of ours counts as gone.
  with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
    return f.read().split(")")[-1].split()[0] != "Z"
  return False


def _start_daemons(c: Cluster) -> None:
  d = c.dir
  with open(os.path.join(d, "munge.key"), "wb") as f:
    f.write(os.urandom(1024))
  os.chmod(os.path.join(d, "munge.key"), 0o400)
  sbin = _sbin_path()
  subprocess.run([shutil.which("munged", path=sbin), "--force",
                  f"--socket={d}/munge.socket", f"--key-file={d}/munge.key",
                  f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log",
                  f"--seed-file={d}/munged.seed"], check=True, capture_output=True)
  for daemon in ("slurmctld", "slurmd"):
    subprocess.run([shutil.which(daemon, path=sbin), "-f", c.conf], env=c.env, check=True,
                   capture_output=True)


def _sweep() -> None:
  """Stops the clusters whose owning process is gone."""
  for entry in os.listdir(REGISTRY) if os.path.isdir(REGISTRY) else ():
    path = os.path.join(REGISTRY, entry)
    if not _alive(int(entry.split("-")[0])):
      with contextlib.suppress(OSError), open(path) as f:
        Cluster(f.read().strip()).stop()
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def start(d: str, owner: int | None = None) -> Cluster:
  """Installs (if needed) and starts a cluster under directory `d`; returns once it is idle.
  With `owner` (a pid), a later start stops this cluster if that process died first."""
  reason = unavailable_reason()
  if reason:
    raise RuntimeError(reason)
  install()
  _sweep()
  d = os.path.abspath(d)
  c = Cluster(d)
  c.stop()  # a cluster left in `d` by an interrupted run
  if owner is not None:
    os.makedirs(REGISTRY, exist_ok=True)
    with open(os.path.join(REGISTRY, f"{owner}-{abs(hash(d))}"), "w") as f:
      f.write(d)
  os.makedirs(d, exist_ok=True)
  os.chmod(d, 0o755)
  for sub in ("state", "spool"):
    shutil.rmtree(os.path.join(d, sub), ignore_errors=True)
    os.makedirs(os.path.join(d, sub))
  node = socket.gethostname().split(".")[0]
  with open(c.conf, "w") as f:
    f.write(_slurm_conf(d, node, random.randrange(1000, 60000)))
  try:
    _start_daemons(c)
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
      state = c.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
      if state == "idle":
        return c
      time.sleep(0.3)
    raise RuntimeError(f"the SLURM node is {state!r}, not idle, after {START_TIMEOUT_S} s; "
                       f"see {d}/slurmctld.log and {d}/slurmd.log")
  except BaseException:
    c.stop()
    raise


def main(argv: list[str]) -> int:
  if len(argv) != 2 or argv[0] not in ("up", "down"):
    print(__doc__.split("\n\n")[0], file=sys.stderr)
    return 2
  if argv[0] == "down":
    Cluster(os.path.abspath(argv[1])).stop()
    return 0
  c = start(argv[1])
  print(f"export SLURM_CONF={c.conf} PATH={_sbin_path()}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
