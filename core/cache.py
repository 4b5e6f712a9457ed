"""Read and write SCAV feature caches (layout: see ``scav.core.schema``).

Reading::

    from scav.core.cache import FeatureCache
    cache = FeatureCache.open("features.zarr")
    cache.splits()                       # {"train": 1200, "test": 300}
    clips = cache.clips("test")          # [ClipInfo, ...] in cache order
    f = cache.get(clips[0].clip_id)      # ClipFeatures: .video (T, Dv), .audio (S, Da)
    for batch in cache.iter_split("test", batch_size=64):
        ...                              # lists of ClipFeatures

Writing (one writer per part; parts are committed by an atomic rename)::

    writer = CacheWriter.create_or_open("features.zarr", meta)
    writer.done_clip_ids()               # what a resumed run may skip
    writer.write_part(records, failures)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from .schema import (
    AUDIO,
    FEATURE_DTYPE,
    OFFSET_DTYPE,
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
    audio_track_name,
)

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

    @property
    def clip_id(self) -> str:
        return self.info.clip_id


def _read_root_meta(path: Path) -> CacheMeta:
    meta_file = path / "zarr.json"
    if not meta_file.is_file():
        raise CacheError(f"{path} is not a SCAV cache (no zarr.json); run `scav-extract` first")
    try:
        attrs = json.loads(meta_file.read_text()).get("attributes", {})
    except json.JSONDecodeError as e:
        raise CacheError(f"{meta_file} is not valid JSON: {e}") from e
    if ROOT_KEY not in attrs:
        raise CacheError(f"{path} is a Zarr group but not a SCAV cache (no '{ROOT_KEY}' attributes)")
    return CacheMeta.from_dict(attrs[ROOT_KEY])


def _part_dirs(path: Path) -> list[Path]:
    parts = path / PARTS_GROUP
    if not parts.is_dir():
        return []
    return sorted(p for p in parts.iterdir() if p.is_dir() and p.name.startswith(PART_PREFIX))


class Part:
    """One committed part: a few hundred clips with flat data + offsets arrays."""

    def __init__(self, path: Path):
        self.path = path
        self.group = zarr.open_group(str(path), mode="r")
        attrs = self.group.attrs.asdict()
        self.clips = [ClipInfo.from_dict(c) for c in attrs.get("clips", [])]
        self.failures = [Failure(**f) for f in attrs.get("failures", [])]
        self._offsets: dict[str, np.ndarray] = {}

    @property
    def name(self) -> str:
        return self.path.name

    def array_name(self, modality: str, track: int = 0) -> str:
        return VIDEO if modality == VIDEO else f"{AUDIO}/{audio_track_name(track)}"

    def offsets(self, modality: str, track: int = 0) -> np.ndarray:
        key = self.array_name(modality, track)
        if key not in self._offsets:
            try:
                self._offsets[key] = self.group[f"{key}/offsets"][:]
            except KeyError:
                self._offsets[key] = np.zeros(len(self.clips) + 1, dtype=np.int64)
        return self._offsets[key]

    def data(self, modality: str, track: int = 0) -> zarr.Array:
        return self.group[f"{self.array_name(modality, track)}/data"]

    def read(self, row: int, modality: str, track: int = 0) -> np.ndarray:
        off = self.offsets(modality, track)
        a, b = int(off[row]), int(off[row + 1])
        if a == b:
            return np.zeros((0, self.dim(modality, track)), dtype=FEATURE_DTYPE)
        return self.data(modality, track)[a:b]

    def read_times(self, row: int) -> np.ndarray:
        off = self.offsets(VIDEO)
        return self.group[f"{VIDEO}/times"][int(off[row]) : int(off[row + 1])]

    def dim(self, modality: str, track: int = 0) -> int:
        try:
            return int(self.data(modality, track).shape[1])
        except KeyError:
            return 0


class FeatureCache:
    """A read-only view of a cache: splits, clips, and their feature sequences."""

    def __init__(self, path: str | os.PathLike, meta: CacheMeta, parts: list[Part]):
        self.path = Path(path)
        self.meta = meta
        self.parts = parts
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
        return cls(path, meta, [Part(p) for p in _part_dirs(path)])

    # -- the clip table ---------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._index

    def info(self, clip_id: str) -> ClipInfo:
        pi, row = self._locate(clip_id)
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
    def _locate(self, clip_id: str) -> tuple[int, int]:
        try:
            return self._index[clip_id]
        except KeyError:
            raise CacheError(f"clip {clip_id!r} is not in {self.path}") from None

    def get(self, clip_id: str, track: int = 0) -> ClipFeatures:
        """One clip's video and audio (track ``track``) sequences."""
        pi, row = self._locate(clip_id)
        part = self.parts[pi]
        return ClipFeatures(
            info=part.clips[row],
            video=part.read(row, VIDEO),
            video_times=part.read_times(row),
            audio=part.read(row, AUDIO, track),
        )

    def iter_split(
        self, split: str, batch_size: int = 64, track: int = 0
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
        }


class CacheWriter:
    """Appends committed parts to a cache. Safe to kill at any moment.

    A part is written under ``.staging/`` and renamed into ``parts/`` (atomic on
    one filesystem); readers never see a partial part. Leftover staging folders
    from a killed run are deleted when the cache is next opened for writing.
    """

    def __init__(self, path: Path, meta: CacheMeta):
        self.path = path
        self.meta = meta

    @classmethod
    def create_or_open(cls, path: str | os.PathLike, meta: CacheMeta) -> "CacheWriter":
        """Create a cache, or open an existing one whose encoders match ``meta``."""
        path = Path(path)
        if (path / "zarr.json").exists():
            existing = _read_root_meta(path)
            if existing.fingerprint() != meta.fingerprint():
                raise CacheError(
                    f"{path} holds features of video={existing.video.label}, "
                    f"audio={existing.audio.label}; this run uses video={meta.video.label}, "
                    f"audio={meta.audio.label}. Use another --out, or the same encoders."
                )
            meta = existing  # keep the layout the cache was created with
        else:
            if path.exists() and any(path.iterdir()):
                raise CacheError(f"{path} exists, is not empty and is not a SCAV cache")
            root = zarr.open_group(str(path), mode="w", zarr_format=3)
            root.attrs[ROOT_KEY] = meta.to_dict()
            zarr.open_group(str(path / PARTS_GROUP), mode="w", zarr_format=3)
        staging = path / STAGING_DIR
        if staging.exists():
            shutil.rmtree(staging)  # parts of a killed run: never committed
        staging.mkdir(parents=True)
        return cls(path, meta)

    def done_clip_ids(self) -> set[str]:
        """Clips already committed, successfully or as failures."""
        done: set[str] = set()
        for p in _part_dirs(self.path):
            attrs = json.loads((p / "zarr.json").read_text()).get("attributes", {})
            done.update(c["clip_id"] for c in attrs.get("clips", []))
            done.update(f["clip_id"] for f in attrs.get("failures", []))
        return done

    def write_part(self, records: Sequence[ClipRecord], failures: Sequence[Failure] = ()) -> Path | None:
        """Commit ``records`` (and failure rows) as one new part; returns its path."""
        if not records and not failures:
            return None
        name = f"{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = self.path / STAGING_DIR / name
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        if records:
            self._write_modality(group, VIDEO, [r.video for r in records], times=[r.video_times for r in records])
            n_tracks = max(len(r.audio) for r in records)
            for j in range(n_tracks):
                seqs = [r.audio[j] if j < len(r.audio) else None for r in records]
                self._write_modality(group, f"{AUDIO}/{audio_track_name(j)}", seqs)
        group.attrs.update(
            {
                "clips": [r.info.to_dict() for r in records],
                "failures": [f.to_dict() for f in failures],
            }
        )
        final = self.path / PARTS_GROUP / name
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return final

    def _write_modality(self, group, name: str, seqs: list, times: list | None = None) -> None:
        dims = {s.shape[1] for s in seqs if s is not None and s.ndim == 2 and len(s)}
        if len(dims) > 1:
            raise CacheError(f"{name}: clips of one part have different feature sizes {sorted(dims)}")
        dim = dims.pop() if dims else 0
        lengths = [0 if s is None else len(s) for s in seqs]
        offsets = np.zeros(len(seqs) + 1, dtype=OFFSET_DTYPE)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        layout = self.meta.layout
        chunk_rows = max(1, min(layout.chunk_rows, total))
        data = group.create_array(
            f"{name}/data",
            shape=(total, dim),
            dtype=FEATURE_DTYPE,
            chunks=(chunk_rows, max(dim, 1)),
            shards=None if layout.shard_rows is None or total == 0 else (layout.shard_rows, max(dim, 1)),
            compressors=_compressors(layout.compressor),
        )
        if total:
            data[:] = np.concatenate([s for s in seqs if s is not None and len(s)]).astype(FEATURE_DTYPE)
        off = group.create_array(f"{name}/offsets", shape=offsets.shape, dtype=OFFSET_DTYPE, chunks=offsets.shape)
        off[:] = offsets
        if times is not None:
            t = group.create_array(f"{name}/times", shape=(total,), dtype="float64", chunks=(max(1, total),))
            if total:
                t[:] = np.concatenate([np.asarray(x, dtype=np.float64) for x in times])


def _compressors(name: str | None):
    if name is None:
        return None
    if name == "zstd":
        from zarr.codecs import ZstdCodec

        return [ZstdCodec(level=1)]
    if name == "blosc":
        from zarr.codecs import BloscCodec

        return [BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")]
    raise CacheError(f"unknown compressor {name!r}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_meta(video, audio, layout=None, audio_sample_rate: int = 16000) -> CacheMeta:
    """CacheMeta for a new cache from two EncoderInfo (convenience)."""
    from .schema import CacheLayout

    return CacheMeta(SCHEMA_VERSION, video, audio, layout or CacheLayout(), audio_sample_rate)
