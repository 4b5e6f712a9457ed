"""Reading clips of one open cache by (part, row), straight from the chunk files' maps.

Uncompressed arrays are read by byte offsets from read-only maps (``chunk_layout``
checks every chunk's size and checksum before a byte of it is served; a damaged
chunk raises a :class:`~scav.core.schema.CacheError` naming the part and the clip,
never zeros); compressed ones through Zarr.  The maps and parsed layouts belong to
the open cache (``files_for``), shared by all its readers in this process (every
epoch, validation, threads), so later epochs map and verify nothing again.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from .cache import FeatureCache
from .chunk_layout import ArrayChunks, ChunkError
from .mapped import MappedFiles
from .schema import AUDIO, VIDEO, CacheError


class CacheFiles:
    """The chunk-file maps and parsed arrays (layouts, shard indexes) of one open cache."""

    def __init__(self, cache: FeatureCache):
        self.maps = MappedFiles()
        self._parts = cache.parts
        self._strict = cache.meta.layout.checksums
        self._arrays: dict[tuple[int, str, int], ArrayChunks | None] = {}

    def array(self, pi: int, modality: str, track: int) -> ArrayChunks | None:
        """Part ``pi``'s data array of ``modality`` (audio ``track``) for byte reads; None if it
        needs Zarr (compressed)."""
        key = (pi, modality, track)
        flat = self._arrays.get(key, False)
        if flat is False:  # two threads may both open it: the same result, one is kept
            part = self._parts[pi]
            try:
                flat = ArrayChunks.open(part.path / part.array_name(modality, track) / "data", self.maps,
                                        self._strict)
            except ChunkError as e:
                raise CacheError(f"part {part.name} is damaged: {e}") from None
            flat = self._arrays[key] = flat if flat is not None and flat.raw else None
        return flat


_files_of_cache: "weakref.WeakKeyDictionary[FeatureCache, CacheFiles]" = weakref.WeakKeyDictionary()
_files_lock = threading.Lock()


def files_for(cache: FeatureCache) -> CacheFiles:
    with _files_lock:
        files = _files_of_cache.get(cache)
        if files is None:
            files = _files_of_cache[cache] = CacheFiles(cache)
        return files


def _copy(out: np.ndarray, copies) -> None:
    """Carry out ``ArrayChunks.copies`` into ``out`` (C-contiguous); sizes were checked."""
    dst = out.reshape(-1).view(np.uint8)
    for f, off, lo, hi in copies:
        if f is None:
            dst[lo:hi] = 0  # an all-zero chunk of a cache that did not write those
            continue
        np.copyto(dst[lo:hi], f.data[off : off + hi - lo])  # a memcpy from the map; releases the GIL


class ClipReader:
    """Reads clips of one cache by (part, row, audio track). Opened inside each worker.

    The audio track is an index into the clip's ``tracks`` (array ``audio/t<j>``), resolved
    per clip by the caller (``ClipInfo.track_index``); video has none (0).
    """

    def __init__(self, cache: FeatureCache):
        self.cache = cache
        self.video_dim = self._dim(VIDEO)
        self.audio_dim = self._dim(AUDIO)
        self._files = files_for(cache)
        self._planned: dict[tuple[int, int, str, int], tuple] = {}  # from prefetch

    def _dim(self, modality: str) -> int:
        n_tracks = 1 if modality == VIDEO else max((len(c.tracks) for p in self.cache.parts for c in p.clips),
                                                   default=1)
        for track in range(n_tracks):  # every audio track comes from the one audio encoder
            for p in self.cache.parts:
                d = p.dim(modality, track)
                if d:
                    return d
        return 0

    def _where(self, pi: int, row: int) -> str:
        part = self.cache.parts[pi]
        return f"clip {part.clips[row].clip_id!r} in part {part.name} of {self.cache.path}"

    def span(self, pi: int, row: int, modality: str, track: int = 0) -> tuple[int, int]:
        off = self.cache.parts[pi].offsets(modality, track)
        return int(off[row]), int(off[row + 1])

    def plan(self, pi: int, row: int, modality: str, track: int = 0) -> tuple[int, list | None, list]:
        """(rows, byte copies or None = read through Zarr, crc checks still due) of one clip and
        modality; the plan ``prefetch`` made for it if any (spans and pieces are worked out
        once). Sizes are checked here; the checks run in ``read_planned``, before the copy."""
        planned = self._planned.pop((pi, row, modality, track), None)
        if planned is not None:
            return planned
        a, b = self.span(pi, row, modality, track)
        if a == b:
            return 0, [], []
        flat = self._files.array(pi, modality, track)
        if flat is None:
            return b - a, None, []
        checks: list = []
        try:
            return b - a, flat.copies(a, b, checks), checks
        except ChunkError as e:
            raise CacheError(f"{self._where(pi, row)}: {e}") from None

    def read_planned(self, pi: int, row: int, modality: str, track: int, plan: tuple,
                     out: np.ndarray) -> None:
        """The clip's rows into ``out`` (n, dim) float16, following ``plan(...)``: every crc
        check still due passes first (often already done by ``verify_ahead``)."""
        _, copies, checks = plan
        try:
            for check in checks:
                check.run()
        except ChunkError as e:
            raise CacheError(f"{self._where(pi, row)}: {e}") from None
        if copies is not None:
            _copy(out, copies)
        else:
            a, b = self.span(pi, row, modality, track)
            out[:] = self.cache.parts[pi].read_rows(modality, track, a, b, self._where(pi, row))

    def prefetch(self, locs: np.ndarray, tracks: np.ndarray) -> None:
        """Ask the kernel to start reading the clips at ``locs`` (n, 2) = (part, row), audio
        ``tracks`` (n,) (cold cache); their plans are kept for ``plan``."""
        for (pi, row), track in zip(locs.tolist(), tracks.tolist()):
            for m, t in ((VIDEO, 0), (AUDIO, track)):
                planned = self.plan(pi, row, m, t)
                self._planned[(pi, row, m, t)] = planned
                for f, off, lo, hi in planned[1] or ():
                    if f is not None:
                        f.will_need(off, hi - lo)

    def _unverified_chunks(self, batches):
        """(array, row chunk) not crc-checked yet that the clips of ``batches`` (iterable of
        (locs, tracks)) touch, each once, in the order they will be read."""
        seen: set = set()
        for locs, tracks in batches:
            for (pi, row), track in zip(locs.tolist(), tracks.tolist()):
                for m, t in ((VIDEO, 0), (AUDIO, track)):
                    flat = self._files.array(pi, m, t)
                    if flat is None or not flat.chunk_crc:
                        continue
                    a, b = self.span(pi, row, m, t)
                    if a == b:
                        continue
                    for c in range(a // flat.chunk_rows, (b - 1) // flat.chunk_rows + 1):
                        if not flat.chunk_verified(c) and (pi, m, t, c) not in seen:
                            seen.add((pi, m, t, c))
                            yield flat, c

    def needs_verifying(self, locs: np.ndarray, tracks: np.ndarray) -> bool:
        """Does some clip at ``locs`` (n, 2), audio ``tracks`` (n,), touch a chunk whose crc32c
        was not checked yet (a freshly opened cache)?"""
        try:
            return next(self._unverified_chunks([(locs, tracks)]), None) is not None
        except CacheError:
            return False  # reported by the reads themselves, naming the clip

    def verify_ahead(self, batches, stop: threading.Event) -> None:
        """Check the crc32c of every chunk the clips of ``batches`` (iterable of (locs, tracks))
        touch, in the order they will be read, until ``stop`` is set: run in a thread beside
        the reads, so that on a freshly opened cache the checksums take a second core rather
        than the reads' time. The reads still run every check themselves (a chunk checked
        here is skipped there, one being checked is waited for), so nothing is served
        unchecked; a failure is only recorded here, and raised by the read that needs the
        chunk, naming the clip."""
        try:
            for flat, c in self._unverified_chunks(batches):
                if stop.is_set():
                    return
                checks: list = []
                try:
                    for _ in flat.pieces(c * flat.chunk_rows, min(flat.rows, (c + 1) * flat.chunk_rows), checks):
                        pass  # a generator: run for its checks
                    for check in checks:
                        check.run()
                except ChunkError:
                    continue
        except CacheError:
            return  # an array that cannot be opened: the reads report it

    def close(self) -> None:
        self._planned.clear()  # maps and arrays belong to the open cache (``files_for``)
