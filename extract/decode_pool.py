"""Decoding ahead of the encoders: a pool of decode processes, or threads of one process.

Both sources hand the runner ``(row, DecodedClip | Failure)`` in manifest
order, so parts, failure rows and resumes are the same whichever decodes.

``ProcessDecodeSource`` runs ``decode_row`` in spawned worker processes. A
decoded clip's frames (the only large array: 10 s of 640x360 at 25 fps is
173 MB) are stacked straight into a ``multiprocessing.shared_memory`` segment
that the consumer maps without a copy; audio (640 KB per 10 s track), frame
times and the rest travel pickled. The consumer calls ``release(clip)`` after
encoding, which unlinks the segment.

Memory bound: at most ``window`` clips are decoding or decoded-but-not-
released at any time (``window = workers + prefetch``), so shared memory holds
at most ``window`` x the largest decoded clip. Where /dev/shm has too little
room for a clip (a container's default 64 MB, say), that clip's frames come
back pickled instead of failing with SIGBUS.

Threads: each worker gives FFmpeg ``cores // workers`` (>= 1) decoding
threads, not FFmpeg's default of one per core in every worker (PITFALLS:
oversubscription). Workers exit by themselves when the process that started
them dies (``kill -9`` of a run leaves no orphans), and shared memory still
registered then is freed by multiprocessing's resource tracker.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.schema import Failure
from ..data_manifests.manifest import ManifestRow

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"


def available_cores() -> int:
    """Cores this process may run on (affinity / cpuset aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_decode_workers(n_gpus: int) -> int:
    """The machine's cores minus one per GPU (that core feeds the GPU), at least 1."""
    return max(1, available_cores() - max(0, n_gpus))


# -- one clip: checks + decode -> DecodedClip or Failure -------------------------


def _stage_of(exc: BaseException, default: str) -> str:
    return str(getattr(exc, "stage", None) or default)


def _reason_of(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else f"{type(exc).__name__}: {exc}"


def decode_row(row: ManifestRow, media_root: Path, decode: Callable | None = None, **decode_kw):
    """Decoded clip or Failure (stage, reason) for one manifest row; never raises for a bad file."""
    if decode is None:
        from .decode import decode_clip as decode
    path = row.resolve(media_root)
    try:
        if not path.exists():
            return Failure(row.clip_id, "open", f"file not found: {path}", row.path)
        if path.is_dir():
            return Failure(row.clip_id, "open", f"is a directory, not a media file: {path}", row.path)
        if path.is_file() and path.stat().st_size == 0:
            return Failure(row.clip_id, "open", "file is empty (0 bytes)", row.path)
        if row.audio_tracks:  # only then: decoders that predate the keyword keep working
            from .decode import TrackSource

            decode_kw["extra_audio"] = [TrackSource(str(t.resolve(media_root)), t.language, t.original)
                                        for t in row.audio_tracks]
        clip = decode(str(path), row.start, row.end, **decode_kw)
    except Exception as e:  # any per-clip error becomes a record, never a crash
        log.debug("decode failed for %s", row.clip_id, exc_info=True)
        return Failure(row.clip_id, _stage_of(e, "decode"), _reason_of(e), row.path)
    if len(clip.frames) == 0:
        return Failure(row.clip_id, "decode-video", "no video frames in range", row.path)
    if not clip.audio:
        return Failure(row.clip_id, "decode-audio", "no audio stream", row.path)
    return clip


# -- shared-memory transport -----------------------------------------------------


@dataclass
class SharedFrames:
    """Where a decoded clip's frames wait: a shared-memory segment (picklable, a few bytes)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "uint8"


@dataclass
class _Segments:
    """Segments one decode created, so a failed decode never leaks one."""

    made: list = field(default_factory=list)
    fell_back: bool = False

    def alloc(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        from multiprocessing import shared_memory

        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes == 0 or not _shm_has_room(nbytes):
            self.fell_back = True  # pickled instead: slower, never a SIGBUS on a full /dev/shm
            return np.empty(shape, dtype)
        shm = shared_memory.SharedMemory(create=True, size=nbytes)
        self.made.append(shm)
        return np.ndarray(shape, dtype=dtype, buffer=shm.buf)

    def drop(self) -> None:
        for shm in self.made:
            shm.close()
            shm.unlink()
        self.made.clear()


def _shm_has_room(nbytes: int) -> bool:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return True  # no /dev/shm to ask (not Linux): let the OS decide
    return st.f_bavail * st.f_frsize > nbytes + (64 << 20)


_WORKER_THREADS: int | None = None


def _init_worker(threads: int, parent_pid: int) -> None:
    """Worker start: FFmpeg thread budget, and exit when the parent dies (no orphans after kill -9)."""
    global _WORKER_THREADS
    _WORKER_THREADS = threads
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"  # numpy here only stacks and clips: no BLAS threads wanted

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="scav-parent-watch").start()


def _decode_to_shared(row: ManifestRow, media_root: str):
    """Worker task: Failure, or the DecodedClip with ``frames`` replaced by a SharedFrames handle."""
    seg = _Segments()
    try:
        clip = decode_row(row, Path(media_root), threads=_WORKER_THREADS, alloc_frames=seg.alloc)
        if isinstance(clip, Failure) or not seg.made:
            seg.drop()
            return clip  # a failure, or frames that did not fit /dev/shm: pickled
        shm = seg.made[0]
        handle = SharedFrames(shm.name, tuple(clip.frames.shape), str(clip.frames.dtype))
        clip = replace(clip, frames=handle)  # the view goes; the segment stays for the consumer
        shm.close()
        return clip
    except BaseException:
        seg.drop()
        raise


def attach(clip, on_release: Callable[[], None] | None = None):
    """Map a worker's decoded clip's frames (no copy); :func:`release` frees them and calls ``on_release``."""
    from multiprocessing import shared_memory

    clip._on_release = on_release
    if isinstance(getattr(clip, "frames", None), SharedFrames):
        h = clip.frames
        shm = shared_memory.SharedMemory(name=h.name)
        clip.frames = np.ndarray(h.shape, dtype=h.dtype, buffer=shm.buf)
        clip._shm = shm
    return clip


def release(clip) -> None:
    """Free a decoded clip's shared frames; a no-op for a clip decoded in this process."""
    shm = getattr(clip, "_shm", None)
    if shm is not None:
        clip.frames = None  # drop this mapping before closing the segment
        clip._shm = None
        try:
            shm.close()
        except BufferError:  # a view is still alive somewhere: the memory goes with the last view
            pass
        try:
            shm.unlink()
        except FileNotFoundError:
            pass
    callback = getattr(clip, "_on_release", None)
    if callback is not None:
        clip._on_release = None
        callback()


# -- sources ---------------------------------------------------------------------


class ThreadDecodeSource:
    """The reference path (``decode_workers=0``): ``threads`` decode threads in this process.

    PyAV releases the GIL while decoding; ``prefetch`` decoded clips wait in order.
    """

    def __init__(self, rows: Sequence[ManifestRow], media_root: Path, threads: int, prefetch: int,
                 decode: Callable | None = None):
        self.rows, self.root, self.prefetch = rows, Path(media_root), prefetch
        self.decode = decode
        self.pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="scav-decode")
        self.queue: deque = deque()

    def __enter__(self) -> "ThreadDecodeSource":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def ready(self) -> bool:
        return bool(self.queue) and self.queue[0][1].done()

    def __iter__(self) -> Iterator[tuple[ManifestRow, Any]]:
        it = iter(self.rows)
        for row in it:
            self.queue.append((row, self.pool.submit(decode_row, row, self.root, self.decode)))
            if len(self.queue) >= self.prefetch:
                break
        while self.queue:
            row, fut = self.queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                self.queue.append((nxt, self.pool.submit(decode_row, nxt, self.root, self.decode)))
            yield row, fut.result()


class ProcessDecodeSource:
    """``workers`` spawned decode processes; frames through shared memory; results in row order.

    ``window`` bounds the clips decoding or decoded-and-not-released (the memory
    bound). A consumer in this process gets clips mapped (``attach=True``) and
    must :func:`release` each; with ``attach=False`` (consumers in other
    processes) clips come as handles and each consumer reports a release by
    putting 1 on ``releases``.
    """

    def __init__(self, rows: Sequence[ManifestRow], media_root: Path, workers: int, prefetch: int,
                 threads_per_worker: int | None = None, attach: bool = True, releases=None):
        import multiprocessing as mp

        self.rows, self.root = list(rows), str(media_root)
        self.workers = max(1, int(workers))
        self.window = self.workers + max(1, int(prefetch))
        self.threads = threads_per_worker or max(1, available_cores() // self.workers)
        self.attach, self.releases = attach, releases
        self.pool = cf.ProcessPoolExecutor(
            self.workers, mp_context=mp.get_context("spawn"),  # never fork a process holding torch/zarr state
            initializer=_init_worker, initargs=(self.threads, os.getpid()),
        )
        self.queue: deque = deque()
        self.outstanding = 0  # clips submitted and not yet released
        self._stop = threading.Event()

    def stop(self) -> None:
        """End the iteration at its next step (another thread gave up on the run)."""
        self._stop.set()

    def __enter__(self) -> "ProcessDecodeSource":
        return self

    def __exit__(self, *exc) -> None:
        for _, fut in self.queue:
            fut.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for _, fut in self.queue:  # decoded but never handed out (an error stopped the run): free them
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                release(attach(fut.result()))
        self.queue.clear()

    def ready(self) -> bool:
        return bool(self.queue) and self.queue[0][1].done()

    def _released(self) -> None:
        self.outstanding -= 1

    def _drain_releases(self, block: bool) -> None:
        import queue as q

        if self.releases is None:
            return
        while True:
            try:
                self.outstanding -= self.releases.get(block=block, timeout=1.0 if block else None)
            except q.Empty:
                return
            block = False

    def __iter__(self) -> Iterator[tuple[ManifestRow, Any]]:
        it = iter(self.rows)
        nxt = next(it, None)
        while not self._stop.is_set():
            self._drain_releases(block=False)
            while nxt is not None and self.outstanding < self.window:
                self.queue.append((nxt, self.pool.submit(_decode_to_shared, nxt, self.root)))
                self.outstanding += 1
                nxt = next(it, None)
            if not self.queue:
                if nxt is None:
                    return
                # every clip of the window is with the consumers and none released yet: wait for one
                self._drain_releases(block=True)
                continue
            row, fut = self.queue.popleft()
            decoded = fut.result()
            if isinstance(decoded, Failure):
                self.outstanding -= 1  # holds no memory: nothing to release
                yield row, decoded
            elif self.attach:
                yield row, attach(decoded, self._released)
            else:
                yield row, decoded
