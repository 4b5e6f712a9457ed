"""Decoding ahead of the encoders, clip by clip as streams of events, in processes or threads.

Each clip reaches the encoder as the events of :func:`scav.extract.decode.iter_clip`
(``VideoChunk`` ... ``VideoEnd``, then per audio track ``TrackStart``,
``AudioPiece`` ..., ``TrackEnd``), ending with a ``Failure`` where the clip
cannot be decoded. Frames are preprocessed for the encoder in the decoder
(``frame_prep.py``), so a chunk is at most ``chunk_frames`` frames of the
encoder's input size (224x224x3 bytes for CLIP, 3 KB for ``pixels``).

Producers: ``workers`` spawned processes (``ProcessStreams``) or threads of
this process (``ThreadStreams``, the reference path and what dask tasks use).
Rows are dealt round-robin (producer ``k`` decodes rows ``k, k + n, ...``) and
the consumer reads row ``i`` from producer ``i % n``, so clips arrive in
manifest order and parts, failure rows and resumes are the same whichever decodes.

Memory bound (by design, independent of resolution and duration): a producer
has at most ``credits`` credits in flight before the consumer has taken its
events; an event takes one credit per ``credit_bytes`` (8 MB) of frames, at
least one and at most all, and holds at most ``chunk_frames`` preprocessed
frames (and at most ``chunk_bytes``, 32 MB) or ``audio_piece`` samples. So per
producer at most ``credits`` x 8 MB wait (or one chunk, if larger), plus one
full-resolution frame and one chunk being filled: a 192-frame CLIP chunk
(29 MB) waits alone, a clip of ``pixels`` chunks flows with ``credits`` events
ahead. Events cross processes pickled through a pipe: with frames already
at the encoder's size this costs little, and nothing is left behind in
/dev/shm by a ``kill -9``.

Threads: each process worker gives FFmpeg ``cores // workers`` (>= 1) decoding
threads (PITFALLS: oversubscription). Workers exit by themselves when the
process that started them dies (``kill -9`` of a run leaves no orphans).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.schema import Failure
from ..data_manifests.manifest import ManifestRow

log = logging.getLogger(__name__)

_DONE = "done"  # the event after a clip's last


def available_cores() -> int:
    """Cores this process may run on (affinity / cpuset aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_decode_workers(n_gpus: int) -> int:
    """The machine's cores minus one per GPU (that core feeds the GPU), at least 1."""
    return max(1, available_cores() - max(0, n_gpus))


@dataclass(frozen=True)
class StreamSpec:
    """How clips are streamed (picklable: sent to decode workers)."""

    prep: object = None  # frame_prep.* for the video encoder; None: full (H, W, 3) uint8 frames
    chunk_frames: int = 256  # most frames per VideoChunk
    chunk_bytes: int = 32 << 20  # most bytes per VideoChunk (full-size frames: fewer frames)
    chunk_multiple: int = 1  # chunks of a multiple of this many frames (the encoder's batch)
    audio_piece: int = 160000  # samples per AudioPiece (10 s at 16 kHz)
    credit_bytes: int = 8 << 20  # a waiting event takes one credit per this many bytes of frames (>= 1, <= all)
    threads: int | None = None  # FFmpeg threads per clip (None: FFmpeg's default)


def _stage_of(exc: BaseException, default: str) -> str:
    return str(getattr(exc, "stage", None) or default)


def _reason_of(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else f"{type(exc).__name__}: {exc}"


def clip_events(row: ManifestRow, media_root: Path, spec: StreamSpec) -> Iterator[object]:
    """The clip's events (``iter_clip``); a problem ends them with a Failure (never raises for a bad file)."""
    from .decode import TrackSource, iter_clip

    path = row.resolve(media_root)
    if not path.exists():
        yield Failure(row.clip_id, "open", f"file not found: {path}", row.path)
        return
    if path.is_dir():
        yield Failure(row.clip_id, "open", f"is a directory, not a media file: {path}", row.path)
        return
    if path.is_file() and path.stat().st_size == 0:
        yield Failure(row.clip_id, "open", "file is empty (0 bytes)", row.path)
        return
    extra = [TrackSource(str(t.resolve(media_root)), t.language, t.original) for t in row.audio_tracks or ()]
    try:
        yield from iter_clip(str(path), row.start, row.end, prep=spec.prep, chunk_frames=spec.chunk_frames,
                             chunk_bytes=spec.chunk_bytes, chunk_multiple=spec.chunk_multiple,
                             audio_piece=spec.audio_piece, threads=spec.threads, extra_audio=extra)
    except Exception as e:  # any per-clip error becomes a record, never a crash
        log.debug("decode failed for %s", row.clip_id, exc_info=True)
        yield Failure(row.clip_id, _stage_of(e, "decode"), _reason_of(e), row.path)


def _produce(rows: Sequence[ManifestRow], media_root: str, spec: StreamSpec, put, stopped) -> None:
    """Put every event of ``rows``' clips, in order, each clip closed by ``_DONE``."""
    root = Path(media_root)
    for row in rows:
        if stopped():
            return
        for ev in clip_events(row, root, spec):
            if not put(ev):
                return
        if not put(_DONE):
            return


def _weight(item, credits: int, credit_bytes: int) -> int:
    """Credits ``item`` holds while it waits: a 29 MB chunk of 192 CLIP frames takes 4, a stand-in's 1."""
    frames = getattr(item, "frames", None)
    nbytes = frames.nbytes if isinstance(frames, np.ndarray) else 0
    return max(1, min(int(credits), -(-nbytes // max(1, int(credit_bytes)))))


def _bounded_put(q, credits, stopped, total: int, credit_bytes: int):
    def put(item) -> bool:
        for _ in range(_weight(item, total, credit_bytes)):  # at most ``total``: the consumer frees them in time
            while not credits.acquire(timeout=0.5):
                if stopped():
                    return False
        q.put(item)
        return True

    return put


def _process_main(rows, media_root: str, spec: StreamSpec, q, credits, total: int, parent_pid: int) -> None:
    """Entry point of one decode process."""
    from . import frame_prep

    logging.basicConfig(level=logging.WARNING)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    frame_prep.in_worker()

    def orphaned() -> bool:
        return os.getppid() != parent_pid

    def watch() -> None:  # kill -9 of the run: leave no orphan blocked on a queue
        while not orphaned():
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="scav-parent-watch").start()
    try:
        _produce(rows, media_root, spec, _bounded_put(q, credits, orphaned, total, spec.credit_bytes), orphaned)
    except BaseException as e:  # a bug, not a bad file: the consumer raises it
        import traceback

        q.put(("crash", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class _Streams:
    """Common consumer side: ``(row, events)`` in row order; each ``events`` must be read to its end."""

    def __init__(self, rows: Sequence[ManifestRow], workers: int):
        self.rows = list(rows)
        self.n = max(1, min(int(workers), len(self.rows) or 1))

    def _get(self, k: int):  # the next event of producer k
        raise NotImplementedError

    def _events(self, k: int) -> Iterator[object]:
        while True:
            ev = self._get(k)
            if isinstance(ev, str) and ev == _DONE:
                return
            if isinstance(ev, tuple) and ev and ev[0] == "crash":
                raise RuntimeError(f"decode worker {k} crashed: {ev[1]}")
            yield ev

    def __iter__(self) -> Iterator[tuple[ManifestRow, Iterator[object]]]:
        for i, row in enumerate(self.rows):
            events = self._events(i % self.n)
            yield row, events
            for _ in events:  # what the consumer left (it gave up on the clip): drop it
                pass

    def __enter__(self):
        return self


class ThreadStreams(_Streams):
    """``workers`` decode threads in this process (PyAV releases the GIL while decoding)."""

    def __init__(self, rows: Sequence[ManifestRow], media_root: Path, spec: StreamSpec, workers: int,
                 credits: int = 4):
        super().__init__(rows, workers)
        self._stop = threading.Event()
        self.queues = [queue.Queue() for _ in range(self.n)]
        self.total, self.credit_bytes = max(1, credits), spec.credit_bytes
        self.credits = [threading.Semaphore(self.total) for _ in range(self.n)]
        self.threads = [
            threading.Thread(target=self._run, args=(k, str(media_root), spec), daemon=True, name=f"scav-decode-{k}")
            for k in range(self.n)
        ]
        for t in self.threads:
            t.start()

    def _run(self, k: int, media_root: str, spec: StreamSpec) -> None:
        try:
            _produce(self.rows[k :: self.n], media_root, spec,
                     _bounded_put(self.queues[k], self.credits[k], self._stop.is_set, self.total, spec.credit_bytes),
                     self._stop.is_set)
        except BaseException as e:
            self.queues[k].put(("crash", f"{type(e).__name__}: {e}"))

    def _get(self, k: int):
        ev = self.queues[k].get()
        self.credits[k].release(_weight(ev, self.total, self.credit_bytes))
        return ev

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=30)


class ProcessStreams(_Streams):
    """``workers`` spawned decode processes; events pickled through one queue per process."""

    def __init__(self, rows: Sequence[ManifestRow], media_root: Path, spec: StreamSpec, workers: int,
                 credits: int = 4):
        import multiprocessing as mp

        super().__init__(rows, workers)
        ctx = mp.get_context("spawn")  # never fork a process holding torch / zarr state
        if spec.threads is None:
            from dataclasses import replace

            spec = replace(spec, threads=max(1, available_cores() // self.n))
        self.queues = [ctx.Queue() for _ in range(self.n)]
        self.total, self.credit_bytes = max(1, credits), spec.credit_bytes
        self.credits = [ctx.Semaphore(self.total) for _ in range(self.n)]
        self.procs = [
            ctx.Process(target=_process_main, name=f"scav-decode-{k}", daemon=True,
                        args=(self.rows[k :: self.n], str(media_root), spec, self.queues[k], self.credits[k],
                              self.total, os.getpid()))
            for k in range(self.n)
        ]
        for p in self.procs:
            p.start()

    def _get(self, k: int):
        while True:
            try:
                ev = self.queues[k].get(timeout=1.0)
                break
            except queue.Empty:
                if not self.procs[k].is_alive():
                    raise RuntimeError(f"decode worker {k} died (exit code {self.procs[k].exitcode})") from None
        for _ in range(_weight(ev, self.total, self.credit_bytes)):  # multiprocessing's release takes no count
            self.credits[k].release()
        return ev

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=10)
        for q in self.queues:
            q.close()
            q.cancel_join_thread()
