"""Who may write a cache: one run at a time, and staging folders nobody else deletes.

Two locks, both ``filelock`` (``flock``: the kernel drops it when the holder dies,
so ``kill -9`` never leaves a stale lock; on NFS Linux emulates ``flock`` with
POSIX byte-range locks, which the server arbitrates between hosts):

- the **cache lock** (``<cache>/.scav-writer.lock``), held by the process that runs
  an extraction, import or repair for its whole run.  A second run on the same
  cache is refused with a message naming the holder (or waits, ``timeout``).
  Worker processes and dask tasks of the holding run do not take it: they write
  disjoint parts (one writer per part, zarr-python #3682).
- a **staging lock** per writer (``.staging/<writer>.lock``), held while that
  writer (the coordinator, a ``--gpus`` worker, a dask task on another host) may
  have a part under ``.staging/<writer>/``.  Cleaning leftovers deletes only
  staging folders whose lock can be taken, i.e. whose writer is gone, so a live
  writer's half-written part is never deleted (the cause of lost ``video/data``
  when two runs overlapped).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import filelock

from .schema import STAGING_DIR, CacheError

log = logging.getLogger(__name__)

LOCK_FILE = ".scav-writer.lock"
HOLDER_FILE = ".scav-writer.json"  # who holds the cache lock (the lock file itself is truncated on acquire)


def _lock(path: Path) -> filelock.FileLock:
    # one object per path in a process (re-entrant: two writers in one process share it), usable
    # from any thread of the process
    return filelock.FileLock(str(path), is_singleton=True, thread_local=False)


def _holder(path: Path) -> str:
    try:
        h = json.loads((path / HOLDER_FILE).read_text())
        return f"pid {h['pid']} on {h['host']}, since {h['since']}"
    except (OSError, ValueError, KeyError):
        return "another process"


class CacheLock:
    """The cache-wide writer lock (see the module docstring); a context manager."""

    def __init__(self, cache: Path, timeout: float = 0.0):
        self.cache = Path(cache)
        self._lock = _lock(self.cache / LOCK_FILE)
        try:
            self._lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise CacheError(
                f"{self.cache} is being written by another scav-extract/import ({_holder(self.cache)}); "
                "wait for it to finish (a rerun then adds only what is missing) or use another --out"
            ) from None
        if self.first:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            (self.cache / HOLDER_FILE).write_text(json.dumps(info))

    @property
    def first(self) -> bool:
        """True if this is the process's only hold (it may clean up; nobody else is writing)."""
        return self._lock.lock_counter == 1

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()

    def __enter__(self) -> "CacheLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Staging:
    """One writer's staging folder ``.staging/<writer>/``, locked while the writer lives."""

    def __init__(self, cache: Path):
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        root = Path(cache) / STAGING_DIR
        root.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(root / f"{self.name}.lock")
        self._lock.acquire(timeout=0)  # a fresh name: nobody else has it
        self.path = root / self.name
        self.path.mkdir()

    def release(self) -> None:
        """Give the folder up (it is empty after every commit)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock.is_locked:
            self._lock.release()
        Path(self._lock.lock_file).unlink(missing_ok=True)


def remove_abandoned_staging(cache: Path) -> list[str]:
    """Delete staging folders whose writer is gone (their lock is free); returns their names.

    Folders without a lock file come from SCAV releases before per-writer staging; they
    are removed only by the holder of the cache lock (the caller), as before.
    """
    root = Path(cache) / STAGING_DIR
    removed = []
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        lock_path = root / f"{entry.name}.lock"
        if lock_path.exists():
            lock = filelock.FileLock(str(lock_path), is_singleton=False, thread_local=False)
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                continue  # a live writer (this host or another)
            try:
                shutil.rmtree(entry, ignore_errors=True)
            finally:
                lock.release()
            lock_path.unlink(missing_ok=True)
        else:
            shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    return removed
