"""One trainer per run directory in a bucket: a lock object `<workdir>/trainer.lock` with a lease.

A bucket has no flock. The lock is an object created only if absent (a generation
precondition, ifGenerationMatch=0, which GCS checks atomically), holding the holder's host,
PID and start time, as the local lock file does. The holder rewrites it every
`lease_s / 4` seconds (a heartbeat, each write conditional on the generation it wrote last)
and deletes it on release. Same guarantees and messages as the local lock
(olmo_jax/workdir.py):
- A second trainer fails at once, before it writes anything, naming the holder.
- A killed trainer does not block the next one for ever: its lock is taken over (with a
  warning naming it) as soon as it is known to be dead: at once from the same host when its
  PID is gone, from any host once its heartbeat is older than the lease (the object's
  update time, set by GCS, against this host's clock). The takeover is itself conditional on
  the generation read, so of two trainers taking over the same stale lock one wins.
The lease is `OLMO_JAX_LOCK_LEASE_S` seconds (default 120).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import threading
import time

from olmo_jax import paths
from olmo_jax import workdir as workdir_lib
from olmo_jax.workdir import Holder, WorkdirBusyError

DEFAULT_LEASE_S = 120.0


def _client():
  return paths.storage_client()


def _parse(raw: bytes) -> Holder | None:
  try:
    d = json.loads(raw.decode())
    return Holder(str(d["host"]), int(d["pid"]), float(d["started"]), str(d.get("command", "")))
  except (ValueError, KeyError, TypeError, UnicodeDecodeError):
    return None


class BucketWorkdirLock:
  """The exclusive lock of one gs:// workdir, held from `acquire` until `release` or its lease
  runs out after the process ends."""

  def __init__(self, workdir: str, lease_s: float | None = None,
               role: workdir_lib.Role = workdir_lib.TRAINER):
    self.workdir = paths.abspath(workdir)
    self.role = role
    self.path = f"{self.workdir}/{role.lock_name}"
    self.lease_s = float(lease_s or os.environ.get("OLMO_JAX_LOCK_LEASE_S", DEFAULT_LEASE_S))
    self.created = False  # whether the workdir was empty before acquire()
    bucket, _, name = self.path[len("gs://"):].partition("/")
    self._blob_args = (bucket, name)
    self._gen: int | None = None
    self._stop = threading.Event()
    self._beat: threading.Thread | None = None
    self._me: Holder | None = None

  def _blob(self):
    bucket, name = self._blob_args
    return _client().bucket(bucket).blob(name)

  def _write(self, if_generation_match: int) -> int:
    """Writes our holder record if the object is at that generation; its new generation."""
    d = dict(dataclasses.asdict(self._me), heartbeat=time.time(), lease_s=self.lease_s)
    blob = self._blob()
    blob.upload_from_string(json.dumps(d), content_type="application/json",
                            if_generation_match=if_generation_match)
    return int(blob.generation)

  def acquire(self) -> str | None:
    """Takes the lock or raises WorkdirBusyError; returns a warning if a stale lock was taken."""
    from google.api_core import exceptions as gexc
    self.created = not paths.exists(self.workdir)
    self._me = Holder(socket.gethostname(), os.getpid(), time.time(), " ".join(sys.argv))
    try:
      self._gen = self._write(0)  # create only if absent
      warning = None
    except gexc.PreconditionFailed:
      warning = self._take_over_if_stale()
    self._beat = threading.Thread(target=self._heartbeat, name="olmo_lock_heartbeat",
                                  daemon=True)
    self._beat.start()
    return warning

  def _take_over_if_stale(self) -> str | None:
    from google.api_core import exceptions as gexc
    bucket, name = self._blob_args
    try:
      blob = _client().bucket(bucket).get_blob(name)  # generation and update time
      raw = blob.download_as_bytes(if_generation_match=blob.generation) if blob else None
    except (gexc.NotFound, gexc.PreconditionFailed):  # released or rewritten meanwhile
      blob = None
    if blob is None:  # try once more from scratch
      return self._retry_create()
    previous = _parse(raw)
    age = time.time() - blob.updated.timestamp()
    state = self._stale_state(previous, age)
    if state is None:
      raise WorkdirBusyError(workdir_lib.busy_message(self.workdir, self.path, previous,
                                                        self.role))
    try:
      self._gen = self._write(int(blob.generation))
    except gexc.PreconditionFailed:  # another trainer took it first
      raise WorkdirBusyError(workdir_lib.busy_message(self.workdir, self.path, None,
                                                      self.role)) from None
    return (workdir_lib.takeover_message(self.workdir, previous, state, self.role)
            if previous else None)

  def _retry_create(self) -> None:
    from google.api_core import exceptions as gexc
    try:
      self._gen = self._write(0)
    except gexc.PreconditionFailed:
      raise WorkdirBusyError(workdir_lib.busy_message(self.workdir, self.path, None,
                                                      self.role)) from None

  def _stale_state(self, previous: Holder | None, age: float) -> str | None:
    """Why the recorded holder no longer runs, or None when it may still be running."""
    if previous is None:  # unreadable record: only its age can tell
      return f"its record is unreadable and {age:.0f} s old" if age > self.lease_s else None
    if previous.host == self._me.host and not workdir_lib._pid_running(previous.pid):
      return "that process is no longer running"
    if age > self.lease_s:
      return (f"its last heartbeat was {age:.0f} s ago, beyond the lease of "
              f"{self.lease_s:.0f} s")
    return None

  def _heartbeat(self) -> None:
    from google.api_core import exceptions as gexc
    while not self._stop.wait(self.lease_s / 4):
      try:
        self._gen = self._write(self._gen)
      except gexc.PreconditionFailed:
        msg = (f"workdir {self.workdir}: another trainer took over the lock {self.path} (this "
               "trainer's heartbeat was late); stop this trainer, both write the same run")
        logging.error(msg)
        print(f"error: {msg}", file=sys.stderr, flush=True)
        return
      except Exception as e:  # a transient bucket error: the next beat retries
        logging.warning("lock heartbeat for %s failed: %s", self.path, e)

  def release(self) -> None:
    """Stops the heartbeat and deletes the lock object (if still ours)."""
    if self._gen is None:
      return
    from google.api_core import exceptions as gexc
    self._stop.set()
    if self._beat is not None:
      self._beat.join()
    gen, self._gen = self._gen, None
    try:
      self._blob().delete(if_generation_match=gen)
    except (gexc.NotFound, gexc.PreconditionFailed):
      pass

  def release_and_tidy(self, own_files: tuple[str, ...] = ()) -> bool:
    """Releases the lock; a workdir that was empty before acquire() and holds nothing but
    the lock and `own_files` is left empty again. Returns whether it was."""
    if self._gen is None:
      return False
    names = set(paths.listdir(self.workdir))
    removed = False
    if self.created and names <= {self.role.lock_name, *own_files}:
      paths.discard_mirror(self.workdir)  # its log must not be uploaded at exit
      for name in names - {self.role.lock_name}:
        paths.remove(f"{self.workdir}/{name}")
      removed = True
    self.release()
    return removed

  def __enter__(self) -> BucketWorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
