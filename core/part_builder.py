"""One part of a cache, staged row block by row block and committed by an atomic rename.

A part's arrays (``video`` with its frame times, ``audio/track_j``) are filled
as features come: a clip is appended in pieces (:meth:`PartBuilder.clip`), or
whole (:meth:`PartBuilder.add`, what ``CacheWriter.write_part`` does). Rows
wait in memory only until a whole write unit is there (``chunk_rows`` rows, or
``shard_rows`` when the cache is sharded), then go to disk, so one clip's
memory does not grow with its duration: an hour of fbank features is 184 MB,
a unit of them 4 MB. Frame times (8 bytes a frame) and the offsets stay in
memory until the commit: they are one chunk each.

The bytes on disk are those of writing the whole part at once: every data
chunk is written once with its final rows, and a part that never fills a unit
is written exactly as before (one chunk of its row count).

A clip that fails half-way is dropped (:meth:`ClipRows.abort`): rows of it that
already reached disk are cut off by shrinking the arrays back to the last
whole unit before the clip (Zarr deletes the chunks past the new shape) and
reading that unit's earlier rows back into memory.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from .checksum import FastCrc32cCodec
from .files import fsync_dir
from .schema import (
    AUDIO,
    FEATURE_DTYPE,
    OFFSET_DTYPE,
    PART_PREFIX,
    PARTS_GROUP,
    VIDEO,
    CacheError,
    CacheLayout,
    ClipInfo,
    Failure,
    array_name,
)

log = logging.getLogger(__name__)


class _RowStream:
    """One ``(rows, dim)`` feature array of a part (and, for video, its times), filled in order."""

    def __init__(self, name: str, layout: CacheLayout, with_times: bool, clips_before: int):
        self.name = name
        self.layout = layout
        self.unit = layout.shard_rows or layout.chunk_rows
        self.with_times = with_times
        self.dim: int | None = None
        self.array = None  # the zarr array, made at the first full unit
        self.written = 0  # rows on disk (a multiple of ``unit``)
        self.pending: list[np.ndarray] = []  # float16 row blocks after ``written``
        self.pending_rows = 0
        self.times: list[np.ndarray] = []
        self.lengths = [0] * clips_before  # rows of each committed clip (0: the clip had none here)
        self.clip_start = 0  # rows before the current clip

    @property
    def rows(self) -> int:
        return self.written + self.pending_rows

    def append(self, rows: np.ndarray, times: np.ndarray | None, group_of: Callable[[], zarr.Group]) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 2:
            raise CacheError(f"{self.name}: features must be (rows, dim), got shape {rows.shape}")
        if not len(rows):
            return
        if self.dim is None:
            self.dim = rows.shape[1]
        elif rows.shape[1] != self.dim:
            raise CacheError(f"{self.name}: clips of one part have different feature sizes "
                             f"{sorted({self.dim, rows.shape[1]})}")
        self.pending.append(rows.astype(FEATURE_DTYPE, casting="unsafe"))  # a copy: the caller's buffer may be reused
        self.pending_rows += len(rows)
        if self.with_times:
            self.times.append(np.asarray(times, dtype=np.float64).copy())
        while self.pending_rows >= self.unit:
            self._flush_unit(group_of)

    def _take(self, n: int) -> np.ndarray:
        """The first ``n`` pending rows, removed from ``pending``."""
        out = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending = [out[n:]] if n < len(out) else []
        self.pending_rows -= n
        return out[:n]

    def _flush_unit(self, group_of: Callable[[], zarr.Group]) -> None:
        block = self._take(self.unit)
        if self.array is None:
            self.array = _create_data(group_of(), self.name, self.unit, self.dim, self.layout)
        else:
            self.array.resize((self.written + self.unit, self.dim))
        self.array[self.written : self.written + self.unit] = block
        self.written += self.unit

    def end_clip(self) -> None:
        self.lengths.append(self.rows - self.clip_start)
        self.clip_start = self.rows

    def abort_clip(self, group_of: Callable[[], zarr.Group]) -> None:
        """Forget the rows appended since the last ``end_clip``."""
        keep = self.clip_start
        if self.with_times:
            self.times = [np.concatenate(self.times)[:keep]] if self.times else []
        if keep >= self.written:  # only pending rows to drop
            if self.pending:
                self.pending = [self._take(keep - self.written)] if keep > self.written else []
                self.pending_rows = keep - self.written
            return
        base = keep // self.unit * self.unit  # the unit the clip started in: its earlier rows come back
        head = np.asarray(self.array[base:keep]) if keep > base else None
        if base:
            self.array.resize((base, self.dim))  # chunks past ``base`` (the clip's) are deleted
        else:  # no whole unit left: the array goes, so a small part is still one chunk of its rows
            del group_of()[f"{self.name}/data"]
            self.array = None
        self.written = base
        self.pending = [head] if head is not None else []
        self.pending_rows = keep - base

    def commit(self, group: zarr.Group) -> None:
        """The remaining rows, the offsets and the times, as one part's arrays."""
        offsets = np.zeros(len(self.lengths) + 1, dtype=OFFSET_DTYPE)
        np.cumsum(self.lengths, out=offsets[1:])
        total = int(offsets[-1])
        if total != self.rows:
            raise CacheError(f"{self.name}: {self.rows} rows for clips of {total}")  # a clip left open
        dim = self.dim or 0
        if self.array is None:  # never a whole unit: the part's array in one chunk of its rows, as ever
            self.array = _create_data(group, self.name, total, dim, self.layout)
            if total:
                self.array[:] = self._take(total)
        else:
            self.array.resize((total, dim))
            if total > self.written:
                self.array[self.written :] = self._take(total - self.written)
        small = _small_array_options(self.layout)
        off = group.create_array(f"{self.name}/offsets", shape=offsets.shape, dtype=OFFSET_DTYPE,
                                 chunks=offsets.shape, **small)
        off[:] = offsets
        if self.with_times:
            t = group.create_array(f"{self.name}/times", shape=(total,), dtype="float64", chunks=(max(1, total),),
                                   **small)
            if total:
                t[:] = np.concatenate(self.times)[:total]


class ClipRows:
    """The rows of one clip being appended to a :class:`PartBuilder`; ``end`` or ``abort`` it."""

    def __init__(self, part: "PartBuilder"):
        self._part = part

    def video(self, rows: np.ndarray, times: np.ndarray) -> None:
        if len(times) != len(rows):
            raise CacheError(f"{len(rows)} video rows with {len(times)} frame times")
        self._part._stream(VIDEO, True).append(rows, times, self._part._group)

    def audio(self, track: int, rows: np.ndarray) -> None:
        self._part._stream(array_name(AUDIO, track), False).append(rows, None, self._part._group)

    def rows(self, modality: str, track: int = 0) -> int:
        """Rows appended to ``modality`` (``video`` / ``audio``) for this clip so far."""
        s = self._part._streams.get(array_name(modality, track))
        return 0 if s is None else s.rows - s.clip_start

    def end(self, info: ClipInfo) -> None:
        self._part._end_clip(info)

    def abort(self) -> None:
        self._part._abort_clip()


class PartBuilder:
    """A part being staged under a writer's staging folder; ``commit`` renames it into ``parts/``."""

    def __init__(self, cache_path: Path, staging_dir: Callable[[], Path], layout: CacheLayout):
        self.cache_path = Path(cache_path)
        self.layout = layout
        self._staging_dir = staging_dir
        self.name = f"{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self._tmp: Path | None = None
        self._zgroup: zarr.Group | None = None
        self._streams: dict[str, _RowStream] = {}
        self._clips: list[ClipInfo] = []
        self._open = False

    def __len__(self) -> int:
        return len(self._clips)

    def _group(self) -> zarr.Group:
        if self._zgroup is None:
            self._tmp = self._staging_dir() / self.name
            self._zgroup = zarr.open_group(str(self._tmp), mode="w", zarr_format=3)
        return self._zgroup

    def _stream(self, name: str, with_times: bool) -> _RowStream:
        if not self._open:
            raise CacheError("append a clip's rows between clip() and end() / abort()")
        if name not in self._streams:
            self._streams[name] = _RowStream(name, self.layout, with_times, len(self._clips))
        return self._streams[name]

    def clip(self) -> ClipRows:
        """Start a clip; append its rows in pieces, then ``end(info)`` it (or ``abort()``)."""
        if self._open:
            raise CacheError("the previous clip was neither ended nor aborted")
        self._open = True
        return ClipRows(self)

    def _end_clip(self, info: ClipInfo) -> None:
        for s in self._streams.values():
            s.end_clip()
        self._clips.append(info)
        self._open = False

    def _abort_clip(self) -> None:
        for s in self._streams.values():
            s.abort_clip(self._group)
        self._open = False

    def add(self, record) -> None:
        """A whole ``ClipRecord``."""
        rows = self.clip()
        try:
            rows.video(record.video, record.video_times)
            for j, a in enumerate(record.audio):
                rows.audio(j, a)
        except BaseException:
            rows.abort()
            raise
        rows.end(record.info)

    def commit(self, failures: Sequence[Failure] = ()) -> Path | None:
        """Write what remains and rename the part into ``parts/``; None when it holds nothing."""
        if self._open:
            raise CacheError("commit with a clip neither ended nor aborted")
        if not self._clips and not failures:
            self.discard()
            return None
        if not self._clips and self._zgroup is not None:
            self.discard()  # only aborted clips reached disk: a part of failure rows has no arrays
        group = self._group()
        if self._clips:
            for stream in self._streams.values():
                stream.commit(group)
        group.attrs.update({"clips": [c.to_dict() for c in self._clips], "failures": [f.to_dict() for f in failures]})
        _pause_for_tests()
        final = self.cache_path / PARTS_GROUP / self.name
        os.replace(self._tmp, final)
        fsync_dir(final.parent)
        self._tmp, self._zgroup = None, None
        return final

    def discard(self) -> None:
        """Drop the staged part (nothing was committed)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp, self._zgroup = None, None


def _create_data(group: zarr.Group, name: str, rows: int, dim: int, layout: CacheLayout):
    """A part's ``(rows, dim)`` float16 data array with the cache's layout."""
    chunk_rows = max(1, min(layout.chunk_rows, rows))
    # checksums: a crc32c after every chunk (the sharding codec adds one to its index by
    # default) and every chunk written, so that a missing chunk file is damage, not zeros
    crc = [FastCrc32cCodec()] if layout.checksums else []  # writes Zarr's "crc32c", faster
    kw = {"config": {"write_empty_chunks": True}} if layout.checksums else {}
    return group.create_array(
        f"{name}/data",
        shape=(rows, dim),
        dtype=FEATURE_DTYPE,
        chunks=(chunk_rows, max(dim, 1)),
        shards=None if layout.shard_rows is None or rows == 0 else (layout.shard_rows, max(dim, 1)),
        compressors=(_compressors(layout.compressor) or []) + crc or None,
        **kw,
    )


def _small_array_options(layout: CacheLayout) -> dict:
    if not layout.checksums:
        return {}
    return {"compressors": [ZstdCodec(level=0), FastCrc32cCodec()], "config": {"write_empty_chunks": True}}


def _compressors(name: str | None):
    if name is None:
        return None
    if name == "zstd":
        return [ZstdCodec(level=1)]
    if name == "blosc":
        from zarr.codecs import BloscCodec

        return [BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")]
    raise CacheError(f"unknown compressor {name!r}")


# Tests of concurrent writers pause a writer inside a part (staged, not yet committed):
# with SCAV_TEST_PAUSE_IN_PART=<dir> the writer creates <dir>/paused-<pid> and waits for
# <dir>/resume (at most 120 s). Unset, this costs one environment lookup per part.
PAUSE_ENV = "SCAV_TEST_PAUSE_IN_PART"


def _pause_for_tests() -> None:
    where = os.environ.get(PAUSE_ENV)
    if not where:
        return
    d = Path(where)
    (d / f"paused-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while not (d / "resume").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
