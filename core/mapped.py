"""Read-only maps of a cache's chunk files, the most recently used kept open.

Why maps and not ``pread``: once a page is mapped, reading it is a plain memcpy in
user space; on the bench VM that ran at 4.2-5.9 GB/s against 1.5-1.9 GB/s for
``pread`` of the same page-cache bytes into a batch-sized buffer (see
bench/bench_loader.py).  Sizes are checked by the caller (``chunk_layout``) before
any byte of a map is served, so a truncated file is reported, never read past.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict

import numpy as np

_MADV_WILLNEED = getattr(mmap, "MADV_WILLNEED", None)  # absent on some platforms: no prefetch


def _map_limit() -> int:
    """Chunk files kept mapped per reader: a 20k-clip cache has ~6,300 of them and mapping
    again costs the page faults again. A quarter of the kernel's map count limit, at most 16,384."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
    except (OSError, ValueError):
        limit = 65530  # Linux's default
    return max(64, min(16384, limit // 4))


class MappedFile:
    """One chunk file mapped read-only: ``data`` (uint8 array over the map), ``madvise``."""

    __slots__ = ("data", "_map")

    def __init__(self, fd: int):
        size = os.fstat(fd).st_size
        self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
        self.data = np.frombuffer(self._map, dtype=np.uint8) if size else np.empty(0, np.uint8)

    def will_need(self, offset: int, length: int) -> None:
        if self._map is None or _MADV_WILLNEED is None:
            return
        start = offset - offset % mmap.PAGESIZE  # madvise wants a page-aligned start
        self._map.madvise(_MADV_WILLNEED, start, min(len(self._map), offset + length) - start)


class MappedFiles:
    """Read-only maps of chunk files by path, the ``limit`` most recently used kept.

    Why maps and not ``pread``: once a page is mapped, reading it is a plain memcpy in
    user space; on the bench VM that ran at 4.2-5.9 GB/s against 1.5-1.9 GB/s for
    ``pread`` of the same page-cache bytes into a batch-sized buffer (same runs; see
    bench_loader.py). Maps live as long as the open cache, so later epochs fault nothing in.
    An evicted map is only dereferenced: arrays still viewing it keep it alive. The cache's
    chunk files are written once and never modified (a file truncated under a live map
    would raise SIGBUS on access, as for any mmap reader).
    """

    def __init__(self, limit: int | None = None):
        self.limit = limit or _map_limit()
        self._maps: OrderedDict[str, MappedFile | None] = OrderedDict()
        self._lock = threading.Lock()  # shared by the readers of one open cache (train + validation)

    def get(self, path: str) -> MappedFile | None:
        """The map of ``path``, or None if the file does not exist (an unwritten chunk)."""
        with self._lock:
            if path in self._maps:
                self._maps.move_to_end(path)
                return self._maps[path]
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            m = None
        else:
            try:
                m = MappedFile(fd)
            finally:
                os.close(fd)  # the map holds its own reference to the file
        with self._lock:
            self._maps[path] = m
            if len(self._maps) > self.limit:
                self._maps.popitem(last=False)
        return m
