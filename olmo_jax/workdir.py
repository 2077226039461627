"""One trainer per workdir: an exclusive lock on `<workdir>/trainer.lock` naming its holder.

The same lock owns any result directory: `eval.run` holds `<output>/eval.lock` and
`scripts/convert_to_hf.py` holds `.<name>.lock` beside its output (a `Role` names the writer
and the flag in the messages).

Guarantees:
- A second trainer on a workdir fails at once, before it writes anything there, with an
  error naming the holder (host, PID, start time).
- A crashed trainer (kill -9 included) never blocks the next one: the lock is `flock` on the
  open file, which the kernel drops when the process ends, however it ends. The file still
  names the dead holder; the next trainer takes the lock over with a warning naming it.

The file is never deleted, only emptied on release: deleting a lock file races with a process
that opened it just before the unlink and would then lock an orphaned inode.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import socket
import sys
import time

LOCK_NAME = "trainer.lock"


class WorkdirBusyError(RuntimeError):
  """Another trainer holds the workdir; the message names it."""


@dataclasses.dataclass(frozen=True)
class Role:
  """Who owns a directory, as the messages name it: `<noun> DIR is in use by another
  <writer> (...); ... choose another <flag>`."""
  noun: str = "workdir"
  writer: str = "trainer"
  flag: str = "--workdir"
  lock_name: str = LOCK_NAME


TRAINER = Role()
EVALUATION = Role("output", "evaluation", "--output", "eval.lock")
CONVERSION = Role("output", "conversion", "--output", "")  # lock beside: see lock_beside


@dataclasses.dataclass(frozen=True)
class Holder:
  host: str
  pid: int
  started: float  # Unix time
  command: str = ""

  def describe(self) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
    return f"PID {self.pid} on host {self.host}, started {when}"


def _read_holder(fd: int) -> Holder | None:
  """The holder recorded in the lock file, or None (empty, released, or unreadable)."""
  raw = os.pread(fd, 1 << 16, 0)
  try:
    d = json.loads(raw.decode())
    return Holder(str(d["host"]), int(d["pid"]), float(d["started"]), str(d.get("command", "")))
  except (ValueError, KeyError, TypeError, UnicodeDecodeError):
    return None


def _pid_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it exists, owned by another user
    return True
  return True


def busy_message(workdir: str, path: str, holder: Holder | None, role: Role = TRAINER) -> str:
  who = holder.describe() if holder else "a process that has not yet written its name"
  return (f"{role.noun} {workdir} is in use by another {role.writer} ({who}); wait for it to "
          f"finish, stop it, or choose another {role.flag}; lock file {path}")


def takeover_message(workdir: str, previous: Holder, state: str, role: Role = TRAINER) -> str:
  article = "an" if role.writer[0] in "aeiou" else "a"
  return (f"{role.noun} {workdir}: took over the lock left by {article} {role.writer} that ended "
          f"without releasing it ({previous.describe()}): {state}")


def lock_beside(directory: str, role: Role = CONVERSION) -> WorkdirLock:
  """The lock of a directory that is replaced as a whole (written beside it, then renamed):
  `.<name>.lock` in its parent, which the rename does not move."""
  parent, name = os.path.split(os.path.abspath(directory))
  return WorkdirLock(directory, role, lock_path=os.path.join(parent, f".{name}.lock"))


class WorkdirLock:
  """The exclusive lock of one workdir, held from `acquire` until `release` or process exit."""

  def __init__(self, workdir: str, role: Role = TRAINER, lock_path: str | None = None):
    self.workdir = workdir
    self.role = role
    self.path = lock_path or os.path.join(workdir, role.lock_name)
    self._fd: int | None = None
    self.created = False  # whether acquire() made the workdir

  def acquire(self) -> str | None:
    """Takes the lock or raises WorkdirBusyError; returns a warning if a stale lock was taken."""
    self.created = not os.path.exists(self.workdir)
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read_holder(fd)
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
        raise WorkdirBusyError(f"cannot lock {self.path} ({e.strerror}); the file system of "
                               f"{self.role.flag} must support flock") from None
      raise WorkdirBusyError(busy_message(self.workdir, self.path, holder, self.role)) from None
    self._fd = fd
    previous = _read_holder(fd)
    me = Holder(socket.gethostname(), os.getpid(), time.time(), " ".join(sys.argv))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(dataclasses.asdict(me)).encode(), 0)
    os.fsync(fd)
    if previous is None or previous.pid == me.pid and previous.host == me.host:
      return None
    if previous.host != me.host:
      state = "its lock is free, so it is not running"
    elif _pid_running(previous.pid):
      state = "it no longer holds the lock (its PID now belongs to another process)"
    else:
      state = "that process is no longer running"
    return takeover_message(self.workdir, previous, state, self.role)

  def release(self) -> None:
    """Empties the lock file and unlocks it (the kernel unlocks it anyway at exit)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)

  def release_and_tidy(self, own_files: tuple[str, ...] = ()) -> bool:
    """Releases the lock; a workdir that acquire() created is removed again when it holds
    nothing but the lock file and `own_files` (names written by this process, e.g. its log).

    For a run that stopped on bad input before writing anything: the user's directory is left
    as it was found. Returns whether the workdir was removed. The lock file is unlinked while
    still locked, so a trainer that opens it after this cannot find the directory half gone.
    """
    if self._fd is None:
      return False
    names = set(os.listdir(self.workdir)) if os.path.isdir(self.workdir) else set()
    removed = False
    lock_name = os.path.basename(self.path)
    inside = os.path.dirname(self.path) == self.workdir.rstrip(os.sep)
    if self.created and inside and names <= {lock_name, *own_files}:
      for name in names:  # the lock file last: unlinked while still locked
        if name != lock_name:
          os.unlink(os.path.join(self.workdir, name))
      os.unlink(self.path)
      try:
        os.rmdir(self.workdir)
        removed = True
      except OSError:  # another process wrote there meanwhile: its files stay
        pass
    self.release()
    return removed

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
