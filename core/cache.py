"""Read and write SCAV feature caches (layout: see ``scav.core.schema``).

Reading::

    from scav.core.cache import FeatureCache
    cache = FeatureCache.open("features.zarr")
    cache.splits()                       # {"train": 1200, "test": 300}
    clips = cache.clips("test")          # [ClipInfo, ...] in cache order
    f = cache.get(clips[0].clip_id)      # ClipFeatures: .video (T, Dv), .audio (S, Da)
    for batch in cache.iter_split("test", batch_size=64):
        ...                              # lists of ClipFeatures

Writing (one run at a time holds the cache lock; one writer per part; parts are
committed by an atomic rename)::

    with CacheWriter.create_or_open("features.zarr", meta) as writer:
        writer.done_clip_ids()           # what a resumed run may skip
        writer.write_part(records, failures)
        part = writer.open_part()        # or clip by clip, in pieces (core/part_builder.py)
        rows = part.clip(); rows.video(feats, times); rows.audio(0, steps); rows.end(info)
        part.commit(failures)

Damage: a part whose ``zarr.json`` cannot be read is listed in
``FeatureCache.damaged`` (its clips are not served; the rest of the cache is);
a chunk that is missing, truncated or fails its crc32c raises a CacheError naming
the part and the clip when read, never zeros.  ``scav.core.verify`` checks a
whole cache.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from .chunk_layout import ArrayChunks, ChunkError
from .files import fsync_dir, write_json_atomic
from .mapped import MappedFiles
from .part_builder import PartBuilder
from .schema import (
    AUDIO,
    FEATURE_DTYPE,
    PART_PREFIX,
    PARTS_GROUP,
    ROOT_KEY,
    SCHEMA_VERSION,
    STAGING_DIR,
    VIDEO,
    CacheError,
    CacheMeta,
    ClipInfo,
    Failure,
    TrackSelector,
    require_same_encoders,
    array_name,
)
from .writer_lock import HOLDER_FILE, LOCK_FILE, CacheLock, Staging, remove_abandoned_staging

log = logging.getLogger(__name__)


@dataclass
class ClipRecord:
    """What an extractor hands the writer for one clip."""

    info: ClipInfo
    video: np.ndarray  # (T, D_video)
    video_times: np.ndarray  # (T,) seconds
    audio: list[np.ndarray]  # one (S_j, D_audio) array per audio track


@dataclass
class ClipFeatures:
    """One clip's stored sequences, as numpy float16 arrays."""

    info: ClipInfo
    video: np.ndarray  # (T, D_video)
    video_times: np.ndarray  # (T,)
    audio: np.ndarray  # (S, D_audio), the requested track
    track: int = 0  # which of ``info.tracks`` ``audio`` is (the selector resolved for this clip)

    @property
    def clip_id(self) -> str:
        return self.info.clip_id


def _read_root_meta(path: Path) -> CacheMeta:
    if path.exists() and not path.is_dir():
        raise CacheError(f"{path} is a file, not a SCAV cache (a cache is a folder)")
    meta_file = path / "zarr.json"
    if not meta_file.is_file():
        raise CacheError(f"{path} is not a SCAV cache (no zarr.json); run `scav-extract` first")
    try:
        attrs = json.loads(meta_file.read_text()).get("attributes", {})
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{meta_file} is not valid JSON: {e}") from e
    if ROOT_KEY not in attrs:
        raise CacheError(f"{path} is a Zarr group but not a SCAV cache (no '{ROOT_KEY}' attributes)")
    return CacheMeta.from_dict(attrs[ROOT_KEY])


def _part_dirs(path: Path) -> list[Path]:
    parts = path / PARTS_GROUP
    if not parts.is_dir():
        return []
    return sorted(p for p in parts.iterdir() if p.is_dir() and p.name.startswith(PART_PREFIX))


@dataclass
class DamagedPart:
    """A part that cannot be read as a whole (its clip table is lost or inconsistent)."""

    name: str
    reason: str
    clip_ids: list[str]  # empty when the clip table itself is unreadable


class PartDamaged(CacheError):
    """A part whose zarr.json (clip table) cannot be read."""


class Part:
    """One committed part: a few hundred clips with flat data + offsets arrays."""

    def __init__(self, path: Path, strict: bool = False):
        self.path = path
        self.strict = strict  # every chunk was written: a missing one is damage (schema minor 1)
        try:
            attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
            self.clips = [ClipInfo.from_dict(c) for c in attrs.get("clips", [])]
            self.failures = [Failure(**f) for f in attrs.get("failures", [])]
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise PartDamaged(f"part {path.name}: zarr.json is damaged or missing ({type(e).__name__}: {e})") from None
        self._group = None
        self._offsets: dict[str, np.ndarray] = {}
        self._chunks: dict[str, ArrayChunks | None] = {}
        self._maps = MappedFiles(limit=16)  # FeatureCache.get reads a few clips at a time

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = zarr.open_group(str(self.path), mode="r")
        return self._group

    @property
    def name(self) -> str:
        return self.path.name

    def array_name(self, modality: str, track: int = 0) -> str:
        return array_name(modality, track)

    def has(self, array: str) -> bool:
        return (self.path / array / "zarr.json").is_file()

    def chunks(self, array: str) -> ArrayChunks | None:
        """Byte layout of ``array`` (e.g. ``video/data``), None if not row-chunked."""
        if array not in self._chunks:
            try:
                self._chunks[array] = ArrayChunks.open(self.path / array, self._maps, self.strict)
            except ChunkError as e:
                raise CacheError(f"part {self.name}: {e}") from None
        return self._chunks[array]

    def read_array(self, array: str, a: int, b: int, where: str = "") -> np.ndarray:
        """Rows [a, b) of ``array``, every chunk checked (present, size, crc) first."""
        where = where or f"part {self.name} of {self.path.parent.parent}"
        chunks = self.chunks(array)
        try:
            if chunks is not None and chunks.raw:
                return chunks.read(a, b)
            missing = chunks.missing_files(a, b) if chunks is not None else []
            if missing:
                raise ChunkError(f"chunk file {missing[0]} is missing")
            return self.group[array][a:b]
        except ChunkError as e:
            raise CacheError(f"{where}: {e}") from None
        except (ValueError, OSError, RuntimeError, KeyError) as e:  # zarr: crc mismatch, bad chunk
            raise CacheError(f"{where}: {array} cannot be read ({type(e).__name__}: {e})") from None

    def expected_lengths(self, modality: str, track: int = 0) -> np.ndarray:
        """Per-clip steps the clip table records for ``modality`` (audio ``track``)."""
        if modality == VIDEO:
            return np.array([c.n_video for c in self.clips], dtype=np.int64)
        return np.array([c.tracks[track].n_steps if track < len(c.tracks) else 0 for c in self.clips],
                        dtype=np.int64)

    def offsets(self, modality: str, track: int = 0) -> np.ndarray:
        """Offsets of ``modality``, checked against the clip table and the data's length."""
        key = self.array_name(modality, track)
        if key not in self._offsets:
            n = len(self.clips)
            if self.has(f"{key}/offsets"):
                off = np.asarray(self.read_array(f"{key}/offsets", 0, n + 1), dtype=np.int64)
            else:
                off = np.zeros(n + 1, dtype=np.int64)
            rows = self.chunks(f"{key}/data").rows if self.has(f"{key}/data") else 0
            lengths = np.diff(off)
            if len(off) != n + 1 or off[0] != 0 or (lengths < 0).any() or off[-1] != rows or not np.array_equal(
                    lengths, self.expected_lengths(modality, track)):
                raise CacheError(
                    f"part {self.name}: {key}/offsets do not match the clip table or the data "
                    f"(missing or damaged); run `scav-extract verify {self.path.parent.parent}`"
                )
            self._offsets[key] = off
        return self._offsets[key]

    def read(self, row: int, modality: str, track: int = 0, where: str = "") -> np.ndarray:
        off = self.offsets(modality, track)
        a, b = int(off[row]), int(off[row + 1])
        if a == b:
            return np.zeros((0, self.dim(modality, track)), dtype=FEATURE_DTYPE)
        return self.read_array(f"{self.array_name(modality, track)}/data", a, b, where)

    def read_rows(self, modality: str, track: int, a: int, b: int, where: str = "") -> np.ndarray:
        return self.read_array(f"{self.array_name(modality, track)}/data", a, b, where)

    def read_times(self, row: int, where: str = "") -> np.ndarray:
        off = self.offsets(VIDEO)
        return self.read_array(f"{VIDEO}/times", int(off[row]), int(off[row + 1]), where)

    def dim(self, modality: str, track: int = 0) -> int:
        array = f"{self.array_name(modality, track)}/data"
        if not self.has(array):
            return 0
        chunks = self.chunks(array)
        return chunks.width if chunks is not None else int(self.group[array].shape[1])


class FeatureCache:
    """A read-only view of a cache: splits, clips, and their feature sequences."""

    def __init__(self, path: str | os.PathLike, meta: CacheMeta, parts: list[Part],
                 damaged: list[DamagedPart] | None = None):
        self.path = Path(path)
        self.meta = meta
        self.parts = parts
        self.damaged = damaged or []  # parts not served (unreadable clip table)
        self._index: dict[str, tuple[int, int]] = {}
        for pi, part in enumerate(parts):
            for row, info in enumerate(part.clips):
                if info.clip_id in self._index:
                    # Only possible if two extractions ran at once on one cache.
                    log.warning("clip %s stored twice; keeping the first copy", info.clip_id)
                    continue
                self._index[info.clip_id] = (pi, row)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "FeatureCache":
        """Open and validate a cache; raises CacheError with a readable reason."""
        path = Path(path)
        if not path.exists():
            raise CacheError(f"no cache at {path}")
        meta = _read_root_meta(path)
        parts, damaged = [], []
        for p in _part_dirs(path):
            try:
                parts.append(Part(p, strict=meta.layout.checksums))
            except PartDamaged as e:
                damaged.append(DamagedPart(p.name, str(e), []))
        if damaged:
            # the rest of the cache stays usable; the damaged part's clips are simply absent
            log.warning("%s: %d damaged part(s) not served: %s; run `scav-extract verify %s --repair`",
                        path, len(damaged), ", ".join(d.name for d in damaged), path)
        return cls(path, meta, parts, damaged)

    # -- the clip table ---------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._index

    def info(self, clip_id: str) -> ClipInfo:
        pi, row = self.locate(clip_id)
        return self.parts[pi].clips[row]

    def clips(self, split: str | None = None) -> list[ClipInfo]:
        """Clip table rows in cache order (part order, then row), optionally one split."""
        out = []
        for clip_id, (pi, row) in self._index.items():
            info = self.parts[pi].clips[row]
            if split is None or info.split == split:
                out.append(info)
        return out

    def splits(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for info in self.clips():
            counts[info.split] = counts.get(info.split, 0) + 1
        return dict(sorted(counts.items()))

    def require_split(self, split: str) -> list[ClipInfo]:
        """The split's clips, or a CacheError naming the splits that exist."""
        clips = self.clips(split)
        if not clips:
            available = ", ".join(f"{s} ({n})" for s, n in self.splits().items()) or "none"
            raise CacheError(f"split {split!r} has no clips in {self.path}; available: {available}")
        return clips

    def failures(self) -> list[Failure]:
        """Failed clips that were not extracted successfully later."""
        seen: dict[str, Failure] = {}
        for part in self.parts:
            for f in part.failures:
                if f.clip_id not in self._index:
                    seen[f.clip_id] = f
        return list(seen.values())

    # -- features ---------------------------------------------------------
    def locate(self, clip_id: str) -> tuple[int, int]:
        """(part index, row) of a clip; CacheError if it is not in the cache."""
        try:
            return self._index[clip_id]
        except KeyError:
            raise CacheError(f"clip {clip_id!r} is not in {self.path}") from None

    def get(self, clip_id: str, track: TrackSelector = 0) -> ClipFeatures:
        """One clip's video and audio sequences; ``track`` selects the audio track by index
        or language tag (``schema.TrackSelector``; CacheError if the clip has no such track)."""
        pi, row = self.locate(clip_id)
        part = self.parts[pi]
        info = part.clips[row]
        j = info.track_index(track)
        where = f"clip {clip_id!r} in part {part.name} of {self.path}"
        return ClipFeatures(
            info=info,
            video=part.read(row, VIDEO, 0, where),
            video_times=part.read_times(row, where),
            audio=part.read(row, AUDIO, j, where),
            track=j,
        )

    def iter_split(
        self, split: str, batch_size: int = 64, track: TrackSelector = 0
    ) -> Iterator[list[ClipFeatures]]:
        """Iterate a split in cache order, in lists of ``batch_size`` clips.

        Simple and exact; the shuffled high-throughput training path is
        ``scav.core.loader``.
        """
        clips = self.require_split(split)
        for i in range(0, len(clips), batch_size):
            yield [self.get(c.clip_id, track) for c in clips[i : i + batch_size]]

    def summary(self) -> dict:
        """Plain-dict summary (what `scav-extract inspect --json` prints)."""
        clips = self.clips()
        return {
            "path": str(self.path),
            "schema_version": self.meta.schema_version,
            "encoders": {
                VIDEO: self.meta.video.to_dict(),
                AUDIO: self.meta.audio.to_dict(),
            },
            "fingerprint": self.meta.fingerprint(),
            "layout": self.meta.layout.to_dict(),
            "parts": len(self.parts),
            "clips": len(clips),
            "splits": self.splits(),
            "video_steps": int(sum(c.n_video for c in clips)),
            "audio_steps": int(sum(c.n_audio for c in clips)),
            "multi_track_clips": int(sum(len(c.tracks) > 1 for c in clips)),
            "failures": len(self.failures()),
            "checksums": self.meta.layout.checksums,
            "damaged_parts": [d.name for d in self.damaged],
        }


class CacheWriter:
    """Appends committed parts to a cache. Safe to kill at any moment.

    A part is written under this writer's own ``.staging/<writer>/`` and renamed into
    ``parts/`` (atomic on one filesystem); readers never see a partial part.
    ``create_or_open`` takes the cache lock (one run at a time, ``core/writer_lock``)
    and removes staging folders of writers that are gone; a writer made directly
    (a shard worker of the run holding the lock) takes only its staging lock.
    """

    def __init__(self, path: Path, meta: CacheMeta, lock: CacheLock | None = None):
        self.path = Path(path)
        self.meta = meta
        self._lock = lock
        self._staging: Staging | None = None

    @classmethod
    def create_or_open(cls, path: str | os.PathLike, meta: CacheMeta, timeout: float = 0.0) -> "CacheWriter":
        """Create a cache, or open an existing one whose encoders match ``meta``.

        Refuses (CacheError naming the holder) while another run writes the cache; waits
        up to ``timeout`` seconds for it first.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise CacheError(f"{path} is a file, not a cache folder; give --out a folder path")
        if path.exists() and not (path / "zarr.json").exists() and not _scav_leftovers_only(path):
            raise CacheError(f"{path} exists, is not empty and is not a SCAV cache")
        path.mkdir(parents=True, exist_ok=True)
        lock = CacheLock(path, timeout)
        try:
            if (path / "zarr.json").exists():
                existing = _read_root_meta(path)
                require_same_encoders(existing, meta, str(path), "this run uses",
                                      "Use another --out, or the same encoders (weights and preprocessing).")
                meta = existing  # keep the layout the cache was created with
            else:
                zarr.open_group(str(path / PARTS_GROUP), mode="a", zarr_format=3)
                # the root zarr.json last and atomically: a cache without it was never created,
                # and a run killed before this point leaves only leftovers the next run reuses
                _write_json_atomic(path / "zarr.json", {
                    "zarr_format": 3, "node_type": "group", "attributes": {ROOT_KEY: meta.to_dict()}})
            if lock.first:  # nobody else writes this cache: leftovers of dead writers can go
                for name in remove_abandoned_staging(path):
                    log.info("removed the staging folder %s of a writer that is gone", name)
        except BaseException:
            lock.release()
            raise
        return cls(path, meta, lock)

    def close(self) -> None:
        """Release this writer's staging folder and, if held, the cache lock."""
        if self._staging is not None:
            self._staging.release()
            self._staging = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def done_clip_ids(self) -> set[str]:
        """Clips already committed, successfully or as failures."""
        done: set[str] = set()
        for p in _part_dirs(self.path):
            try:
                attrs = json.loads((p / "zarr.json").read_text()).get("attributes", {})
            except (OSError, ValueError):
                continue  # a damaged part: its clips are not done (verify --repair sets it aside)
            done.update(c["clip_id"] for c in attrs.get("clips", []))
            done.update(f["clip_id"] for f in attrs.get("failures", []))
        return done

    def open_part(self) -> PartBuilder:
        """A new part to fill clip by clip, in pieces (``PartBuilder.clip``); ``commit`` it."""
        return PartBuilder(self.path, self._staging_path, self.meta.layout)

    def _staging_path(self) -> Path:
        if self._staging is None:
            self._staging = Staging(self.path)
        return self._staging.path

    def write_part(self, records: Sequence[ClipRecord], failures: Sequence[Failure] = ()) -> Path | None:
        """Commit ``records`` (and failure rows) as one new part; returns its path."""
        part = self.open_part()
        try:
            for r in records:
                part.add(r)
            return part.commit(failures)
        except BaseException:
            part.discard()
            raise


def _scav_leftovers_only(path: Path) -> bool:
    """Does ``path`` hold only what a cache creation killed before its root zarr.json leaves?"""
    names = {p.name for p in path.iterdir()}
    if not names <= {PARTS_GROUP, STAGING_DIR, LOCK_FILE, HOLDER_FILE}:
        return False
    return not _part_dirs(path)


def _write_json_atomic(path: Path, obj: dict) -> None:
    write_json_atomic(path, obj)
    fsync_dir(path.parent)  # the rename itself survives a power cut


def new_meta(video, audio, layout=None, audio_sample_rate: int = 16000) -> CacheMeta:
    """CacheMeta for a new cache from two EncoderInfo (convenience)."""
    from .schema import CacheLayout

    return CacheMeta(SCHEMA_VERSION, video, audio, layout or CacheLayout(), audio_sample_rate)
