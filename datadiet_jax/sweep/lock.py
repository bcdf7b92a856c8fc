"""A per-run lock file, so two processes on one workdir never train the same run at once.

The lock is `<run folder>/.lock`, created atomically with O_CREAT | O_EXCL and holding one
JSON record: pid, hostname, start time, a random token and a label (e.g. "worker 1/4"). While
it is held, a daemon thread touches the file every `heartbeat_s` seconds (its mtime is the
heartbeat). Every acquisition and release is appended to `<run folder>/.lock.history`
(JSON lines: event, pid, host, time, and on release what the holder reported, e.g. the steps
it trained), so a sweep can show which process trained what.

A lock is *stale*, and is taken over, when
  - its holder ran on this host and its pid no longer exists (a crash, kill -9): at once; or
  - its heartbeat is older than `stale_after_s` (default 300 s, i.e. 10 missed heartbeats):
    covers a holder on another host that died, and a reused pid on this host; or
  - it is empty or garbled (a crash between its creation and its write) and older than
    10 s (younger, it may be a lock being written right now).
A takeover happens under an fcntl.flock on `<run folder>/.lock.guard` and re-reads the lock
first, so two processes that both find it stale cannot both take it. On a network file
system, flock and O_EXCL are only as atomic as the file system makes them (NFSv4: yes).

Standard library only: this module sits beside artifacts.py, below every other layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Iterator, Optional

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
UNREADABLE_STALE_S = 10.0  # an empty/garbled lock older than this is a crash's leftover


class RunLockedError(RuntimeError):
  """The run is being trained by another live process."""

  def __init__(self, folder: str, holder: dict):
    self.folder, self.holder = folder, holder
    super().__init__(f"{folder} is locked by {describe(holder)}")


def describe(holder: dict) -> str:
  """'pid 123 on host-a (worker 1/2), since 12:00:01 UTC'."""
  since = time.strftime("%H:%M:%S UTC", time.gmtime(holder.get("start_time", 0)))
  label = f" ({holder['label']})" if holder.get("label") else ""
  return f"pid {holder.get('pid')} on {holder.get('host')}{label}, since {since}"


@dataclasses.dataclass
class RunLock:
  """A held lock; `release()` (or leaving `hold`) removes it if it is still ours."""

  path: str
  record: dict
  heartbeat_s: float = HEARTBEAT_S
  _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
  _thread: Optional[threading.Thread] = None
  released_with: dict = dataclasses.field(default_factory=dict)

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      with contextlib.suppress(OSError):
        if _read(self.path).get("token") == self.record["token"]:
          os.utime(self.path)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    with contextlib.suppress(OSError):
      if _read(self.path).get("token") == self.record["token"]:
        os.remove(self.path)
    _history(self.path, "released", self.record, **self.released_with)


def lock_path(folder: str) -> str:
  return os.path.join(folder, LOCK_NAME)


def holder_of(folder: str) -> Optional[dict]:
  """The record of the lock on `folder`, or None if it is not locked."""
  try:
    return _read(lock_path(folder))
  except FileNotFoundError:
    return None


def is_stale(record: dict, mtime: float, stale_after_s: float = STALE_AFTER_S,
             now: Optional[float] = None) -> bool:
  """True if the holder is gone: a dead pid on this host, or no heartbeat for too long."""
  now = time.time() if now is None else now
  if now - mtime > stale_after_s:
    return True
  if record.get("host") == socket.gethostname():
    return not _pid_alive(int(record.get("pid", -1)))
  return False


def acquire(folder: str, label: str = "", heartbeat_s: float = HEARTBEAT_S,
            stale_after_s: float = STALE_AFTER_S) -> RunLock:
  """Takes the lock on `folder` (created if needed); RunLockedError if a live process holds it.

  A stale lock (see the module docstring) is taken over, with a history entry naming it.
  """
  os.makedirs(folder, exist_ok=True)
  path = lock_path(folder)
  record = {"pid": os.getpid(), "host": socket.gethostname(), "start_time": time.time(),
            "token": uuid.uuid4().hex, "label": label}
  for _ in range(3):
    if _create(path, record):
      return _started(path, record, heartbeat_s)
    with _guard(path):
      try:
        mtime = os.stat(path).st_mtime
        holder = _read(path)
        stale = is_stale(holder, mtime, stale_after_s)
      except FileNotFoundError:
        continue  # released meanwhile: try again
      except (OSError, ValueError):
        # Unreadable: a crash between create and write - or a lock being written right now.
        holder, stale = {}, time.time() - mtime > UNREADABLE_STALE_S
      if not stale:
        raise RunLockedError(folder, holder)
      os.remove(path)
      _history(path, "stale lock removed", record, previous=holder)
  raise RunLockedError(folder, holder_of(folder) or {})


@contextlib.contextmanager
def hold(folder: str, label: str = "", **kwargs) -> Iterator[RunLock]:
  """`with hold(folder) as lock:` ... ; raises RunLockedError before the block if taken."""
  lock = acquire(folder, label, **kwargs)
  try:
    yield lock
  finally:
    lock.release()


def read_history(folder: str) -> list[dict]:
  """The acquisitions/releases recorded for `folder`, oldest first."""
  path = lock_path(folder) + ".history"
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _started(path: str, record: dict, heartbeat_s: float) -> RunLock:
  lock = RunLock(path, record, heartbeat_s)
  lock._thread = threading.Thread(target=lock._beat, daemon=True, name=f"heartbeat {path}")
  lock._thread.start()
  _history(path, "acquired", record)
  return lock


def _create(path: str, record: dict) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    f.write(json.dumps(record))
    f.flush()
    os.fsync(f.fileno())
  return True


def _read(path: str) -> dict:
  with open(path) as f:
    text = f.read()
  if not text:
    raise ValueError(f"empty lock file {path}")
  return json.loads(text)


@contextlib.contextmanager
def _guard(path: str) -> Iterator[None]:
  with open(path + ".guard", "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by someone else
  # A zombie (killed, not yet reaped by its parent) holds nothing: count it as dead.
  with contextlib.suppress(OSError):
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  return True


def _history(path: str, event: str, record: dict, **extra) -> None:
  line = json.dumps({"event": event, "pid": record["pid"], "host": record["host"],
                     "label": record.get("label", ""), "token": record["token"],
                     "time": time.time(), **extra}) + "\n"
  # One short O_APPEND write per event: lines of concurrent writers do not interleave.
  fd = os.open(path + ".history", os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o644)
  try:
    os.write(fd, line.encode())
  finally:
    os.close(fd)
