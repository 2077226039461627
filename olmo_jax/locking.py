"""The lock of a workdir or output directory, wherever it lives: `flock` on a local disk
(olmo_jax/workdir.py), a leased lock object in a bucket (olmo_jax/gcs_lock.py)."""

from __future__ import annotations

from olmo_jax import gcs_lock, paths
from olmo_jax.workdir import TRAINER, Role, WorkdirLock


def lock_for(workdir: str, role: Role = TRAINER):
  """The lock of a workdir: flock on a local disk, a leased lock object in a bucket (gs://)."""
  if paths.is_remote(workdir):
    return gcs_lock.BucketWorkdirLock(workdir, role=role)
  return WorkdirLock(workdir, role)
