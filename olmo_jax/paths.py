"""Run directories on a local disk or in a bucket (`gs://BUCKET/PATH`) behind one set of calls.

Local paths go to `os` exactly as before; `gs://` paths go to gcsfs (fsspec), the layer that
Orbax's etils.epath uses for the same URLs, so our files and Orbax's arrays see one store.
A bucket has objects, not files: a "directory" is a prefix (it exists once an object is
under it, `makedirs` is a no-op), one object upload is atomic (what `write_atomic` needs),
and nothing can be appended to. Files that grow (metrics.jsonl, the run log, TensorBoard
events) are therefore written to a local mirror (`mirror`) and uploaded every
`MIRROR_EVERY_S` seconds and at exit.

`STORAGE_EMULATOR_HOST=http://HOST:PORT` (the variable google-cloud-storage reads) points
every client at a GCS emulator; tensorstore, under Orbax, gets the same address (and a
placeholder token, so that it does not look for credentials the emulator does not need).

`check_bucket` is what every command runs on a gs:// argument before any other work: the
shape gs://BUCKET/PATH, the bucket exists, and (for an output) a probe object can be written
and deleted there; each request is made once, without retries, with a deadline of
`CHECK_TIMEOUT_S`, so a wrong name or an endpoint that refuses connections is one `error:`
line within seconds instead of minutes of library retries.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
import zlib

from data_pipeline import atomic

SCHEMES = ("gs://",)
MIRROR_EVERY_S = 30.0


def _configure_emulator() -> None:
  """With STORAGE_EMULATOR_HOST set, points tensorstore at it and skips what an emulator
  lacks (the storage-control API that gcsfs probes, the GCE metadata server)."""
  host = os.environ.get("STORAGE_EMULATOR_HOST", "")
  if not host:
    return
  url = host if host.startswith(("http://", "https://")) else f"http://{host}"
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  os.environ.setdefault("NO_GCE_CHECK", "true")
  # tensorstore's fixed-token hook: without it, it searches for gcloud credentials and logs
  # an error on stderr for each run, though the emulator checks none.
  os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")


_configure_emulator()  # before gcsfs is first imported: it reads these at import


def is_remote(path: str | os.PathLike | None) -> bool:
  return isinstance(path, str) and path.startswith(SCHEMES)


_FS = None


def fs():
  """The gcsfs file system (no listing cache: Orbax and other hosts write the same bucket)."""
  global _FS
  if _FS is None:
    _configure_emulator()  # the variable may have been set after this module was imported
    import gcsfs
    token = "anon" if os.environ.get("STORAGE_EMULATOR_HOST") else None
    _FS = gcsfs.GCSFileSystem(token=token, use_listings_cache=False)
  return _FS


def storage_client():
  """A google-cloud-storage client (anonymous against an emulator)."""
  _configure_emulator()
  from google.cloud import storage
  if os.environ.get("STORAGE_EMULATOR_HOST"):
    from google.auth.credentials import AnonymousCredentials
    return storage.Client(project="emulator", credentials=AnonymousCredentials())
  return storage.Client()


# ---------------------------------------------------------------- up-front checks of gs:// paths

CHECK_TIMEOUT_S = 4.0
# GCS bucket names: 3-63 characters (up to 222 with dots), lowercase letters, digits, - _ .
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_CHECKED: set[tuple[str, str, bool]] = set()  # (endpoint, bucket, write) checked


def split_bucket_path(path: str, flag: str) -> tuple[str, str]:
  """(bucket, object prefix) of gs://BUCKET/PATH; ValueError naming `flag` for another shape."""
  rest = path.split("://", 1)[1]
  bucket, _, prefix = rest.partition("/")
  prefix = prefix.strip("/")
  if not bucket or not prefix:
    raise ValueError(f"{flag} {path!r}: a bucket path must be gs://BUCKET/PATH (a bucket and a "
                     "directory in it), e.g. gs://my-bucket/runs/150M")
  if not _BUCKET_RE.fullmatch(bucket):
    raise ValueError(f"{flag} {path!r}: {bucket!r} is not a valid bucket name (lowercase "
                     "letters, digits, '-', '_' and '.', 3 to 63 characters)")
  return bucket, prefix


def _endpoint() -> str:
  return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"


def check_bucket(path: str | None, flag: str, *, write: bool = True) -> None:
  """ValueError (one line naming `flag` and the fix) unless a gs:// `path` has the shape
  gs://BUCKET/PATH, its bucket answers within CHECK_TIMEOUT_S and exists, and, with `write`,
  takes a new object. A local path (or None) passes untouched. Each bucket is checked once."""
  if not is_remote(path):
    return
  bucket, prefix = split_bucket_path(path, flag)
  key = (_endpoint(), bucket, write)
  if key in _CHECKED:
    return
  from google.api_core import exceptions as gexc
  t = CHECK_TIMEOUT_S
  try:
    b = storage_client().lookup_bucket(bucket, timeout=t, retry=None)
    if b is not None and write:
      probe = b.blob(f"{prefix}/.olmo_jax-write-check-{uuid.uuid4().hex[:12]}")
      probe.upload_from_string(b"", timeout=t, retry=None)
      probe.delete(timeout=t, retry=None)
  except gexc.Forbidden as e:
    raise ValueError(f"{flag} {path}: this account may not {'write to' if write else 'read'} "
                     f"bucket {bucket} ({_first_line(e)}); grant it access (roles/storage."
                     f"{'objectAdmin' if write else 'objectViewer'}) or choose another "
                     "bucket") from None
  except gexc.GoogleAPICallError as e:
    raise ValueError(f"{flag} {path}: bucket {bucket}: {_first_line(e)}") from None
  except Exception as e:  # no connection, a timeout, no credentials: library-specific types
    raise ValueError(_unreachable_message(path, flag, e)) from None
  if b is None:
    raise ValueError(f"{flag} {path}: bucket {bucket} does not exist (or is not visible to "
                     f"this account); create it (gcloud storage buckets create gs://{bucket}) "
                     "or correct the name")
  _CHECKED.add(key)


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0][:200] if text else type(e).__name__


def _unreachable_message(path: str, flag: str, e: BaseException) -> str:
  logging.debug("bucket check of %s failed", path, exc_info=True)
  name = type(e).__name__
  if "Credentials" in name or "credentials" in str(e)[:200]:
    return (f"{flag} {path}: no Google Cloud credentials found ({_first_line(e)}); run "
            "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS")
  why = "timed out" if "imeout" in name or "timed out" in str(e) else "connection failed"
  return (f"{flag} {path}: the storage endpoint {_endpoint()} did not answer ({why} within "
          f"{CHECK_TIMEOUT_S:.0f} s); check the network, or STORAGE_EMULATOR_HOST when using "
          "an emulator")


def _key(path: str) -> str:
  return path.split("://", 1)[1].rstrip("/")


def abspath(path: str) -> str:
  """An absolute local path, or the gs:// URL without a trailing slash."""
  return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return fs().exists(_key(path)) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return fs().isdir(_key(path)) if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return fs().isfile(_key(path)) if is_remote(path) else os.path.isfile(path)


def getsize(path: str) -> int:
  return int(fs().size(_key(path))) if is_remote(path) else os.path.getsize(path)


def listdir(path: str) -> list[str]:
  """Names directly under `path` (files and directories); [] when there is none."""
  if not is_remote(path):
    return os.listdir(path) if os.path.isdir(path) else []
  try:
    return [e.rstrip("/").rsplit("/", 1)[-1] for e in fs().ls(_key(path), detail=False)]
  except FileNotFoundError:
    return []


def makedirs(path: str) -> None:
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def open_file(path: str, mode: str = "r", **kwargs):
  """open() for both kinds (remote writes land as one object when the file is closed)."""
  if is_remote(path):
    return fs().open(_key(path), mode, **kwargs)
  return open(path, mode, **kwargs)


def read_text(path: str) -> str:
  with open_file(path, "r") as f:
    return f.read()


def write_atomic(path: str, data: str | bytes) -> None:
  """Writes the whole file so that a reader sees the old or the new content, never a part."""
  raw = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    fs().pipe_file(_key(path), raw)  # one object upload is atomic
    return
  atomic.write_atomic(path, raw)


def remove(path: str) -> None:
  if is_remote(path):
    fs().rm_file(_key(path))
  else:
    os.unlink(path)


def rmtree(path: str) -> None:
  """Removes a directory and everything under it (missing: no-op)."""
  if not is_remote(path):
    shutil.rmtree(path, ignore_errors=True)
    return
  try:
    fs().rm(_key(path), recursive=True)
  except FileNotFoundError:
    pass


def rename(src: str, dst: str) -> None:
  """Moves a file or directory (in a bucket: copy, then delete; not atomic)."""
  if is_remote(src):
    fs().mv(_key(src), _key(dst), recursive=True)
  else:
    os.rename(src, dst)


def glob(pattern: str) -> list[str]:
  if not is_remote(pattern):
    import glob as glob_lib
    return glob_lib.glob(pattern)
  scheme = pattern.split("://", 1)[0]
  return [f"{scheme}://{k}" for k in fs().glob(_key(pattern))]


def file_table(directory: str) -> dict[str, tuple[int, int | None]]:
  """{relative path: (size, CRC32C or None)} of every file under `directory`.

  In a bucket the CRC32C is the one GCS computed on upload (object metadata, no download);
  locally it is None (compute one with `crc32` / `crc32c`).
  """
  if not is_remote(directory):
    out = {}
    for root, _, files in os.walk(directory):
      for f in files:
        full = os.path.join(root, f)
        out[os.path.relpath(full, directory)] = (os.path.getsize(full), None)
    return out
  base = _key(directory)
  out = {}
  for key, info in fs().find(base, detail=True).items():
    if info.get("type") == "directory":
      continue
    crc = info.get("crc32c")
    crc = int.from_bytes(base64.b64decode(crc), "big") if crc else None
    out[key[len(base):].lstrip("/")] = (int(info["size"]), crc)
  return out


def crc32(path: str) -> int:
  """zlib CRC32 of a file's bytes (one read; remote files are downloaded)."""
  crc = 0
  with open_file(path, "rb") as f:
    while chunk := f.read(1 << 24):
      crc = zlib.crc32(chunk, crc)  # releases the GIL: the training thread keeps running
  return crc


def crc32c(path: str) -> int:
  """CRC32C (Castagnoli, as GCS reports it) of a local file's bytes."""
  import google_crc32c
  c = google_crc32c.Checksum()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 24):
      c.update(chunk)
  return int.from_bytes(c.digest(), "big")


# ---------------------------------------------------------------- local mirrors of a bucket dir

class _Mirror:
  """A local directory uploaded to `remote` every MIRROR_EVERY_S seconds and at exit."""

  def __init__(self, remote: str):
    self.remote = remote
    digest = hashlib.sha1(remote.encode()).hexdigest()[:12]
    self.local = os.path.join(tempfile.gettempdir(), "olmo_jax_mirror",
                              f"{os.getpid()}-{digest}")
    shutil.rmtree(self.local, ignore_errors=True)
    os.makedirs(self.local)
    self._sent: dict[str, tuple[int, int]] = {}
    self._lock = threading.Lock()
    self._stop = threading.Event()

  def download(self, names: tuple[str, ...]) -> None:
    """Fetches the files (or directories) named, so that a resumed run appends to them."""
    for name in names:
      src = f"{self.remote}/{name}"
      if exists(src):
        fs().get(_key(src), os.path.join(self.local, name), recursive=isdir(src))
    self._sent = self._stamps()

  def _stamps(self) -> dict[str, tuple[int, int]]:
    out = {}
    for root, _, files in os.walk(self.local):
      for f in files:
        st = os.stat(os.path.join(root, f))
        out[os.path.relpath(os.path.join(root, f), self.local)] = (st.st_size, st.st_mtime_ns)
    return out

  def sync(self) -> None:
    """Uploads the files that changed since the last sync (each as one whole object) and
    deletes the objects of files removed since (e.g. checkpoints dropped by retention)."""
    with self._lock:
      now = self._stamps()
      for rel, stamp in sorted(now.items()):
        if self._sent.get(rel) != stamp:
          fs().put_file(os.path.join(self.local, rel), _key(f"{self.remote}/{rel}"))
      for rel in sorted(set(self._sent) - set(now)):
        try:
          fs().rm_file(_key(f"{self.remote}/{rel}"))
        except FileNotFoundError:
          pass
      self._sent = now

  def start(self) -> None:
    def loop():
      while not self._stop.wait(MIRROR_EVERY_S):
        try:
          self.sync()
        except Exception as e:  # a transient bucket error: the next sync retries
          import logging
          logging.warning("uploading %s to %s failed: %s", self.local, self.remote, e)

    threading.Thread(target=loop, name="olmo_mirror", daemon=True).start()

  def close(self) -> None:
    """The last upload; the local copy goes (the bucket holds it all now)."""
    self._stop.set()
    self.sync()
    shutil.rmtree(self.local, ignore_errors=True)


_MIRRORS: dict[str, _Mirror] = {}
MIRRORED = ("metrics.jsonl", "train.log", "tensorboard")


def mirror(directory: str, names: tuple[str, ...] | None = MIRRORED) -> str:
  """The local directory to write growing files of `directory` to: itself when local; for a
  gs:// directory a local copy that is uploaded every MIRROR_EVERY_S seconds and at exit.

  names: what is downloaded first, so that a resumed run appends to it (default: the
  trainer's metrics.jsonl, train.log and tensorboard/; None: everything there).
  """
  if not is_remote(directory):
    return directory
  directory = abspath(directory)
  if directory not in _MIRRORS:
    check_bucket(directory, "directory")  # (once per bucket; the commands check theirs first)
    m = _Mirror(directory)
    m.download(tuple(listdir(directory)) if names is None else names)
    m.start()
    _MIRRORS[directory] = m
    if len(_MIRRORS) == 1:
      atexit.register(sync_mirrors, close=True)
  return _MIRRORS[directory].local


def sync_mirrors(close: bool = False) -> None:
  """Uploads every mirror now (close=True: and stops their timers)."""
  for m in list(_MIRRORS.values()):
    m.close() if close else m.sync()


def discard_mirror(directory: str) -> None:
  """Forgets the mirror of `directory` without uploading it (a run that wrote nothing)."""
  m = _MIRRORS.pop(abspath(directory), None) if is_remote(directory) else None
  if m is not None:
    m._stop.set()
    shutil.rmtree(m.local, ignore_errors=True)
