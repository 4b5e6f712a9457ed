"""The feature-cache schema: the one place that says what a SCAV cache holds.

A cache is a Zarr v3 group on disk::

    features.zarr/
      zarr.json                 root group; attributes["scav"] = CacheMeta (below)
      parts/                    a group; one child group per committed part
        p-<ns>-<uid>/           written under .staging/ then renamed: a part is
          zarr.json             all there or not there at all.
                                attributes["clips"]    = [ClipInfo as dict, ...]
                                attributes["failures"] = [Failure as dict, ...]
          video/data            (sum T_i, D_video) float16, flat ragged layout
          video/offsets         (n + 1,) int64; clip k is data[offsets[k]:offsets[k+1]]
          video/times           (sum T_i,) float64, seconds of each frame (pts)
          audio/t<j>/data       (sum S_i, D_audio) float16, audio track j
          audio/t<j>/offsets    (n + 1,) int64 (a clip without track j: zero length)
      .staging/                 parts being written (ignored by readers)

Zarr has no ragged arrays (zarr-python #2618), hence data + offsets.  Every part
has exactly one writer (two writers on one shard lose data, zarr-python #3682)
and is never modified after its rename, so a killed job cannot leave a
half-written shard behind (iohub #442).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
ROOT_KEY = "scav"
PARTS_GROUP = "parts"
STAGING_DIR = ".staging"
PART_PREFIX = "p-"

VIDEO = "video"
AUDIO = "audio"
MODALITIES = (VIDEO, AUDIO)
FEATURE_DTYPE = "float16"
OFFSET_DTYPE = "int64"


class CacheError(Exception):
    """A cache that cannot be read or written as asked; the message says why."""


@dataclass(frozen=True)
class EncoderInfo:
    """Identity of a frozen encoder, stored with every cache.

    Later stages compare these to refuse features they were not built for.
    ``steps_per_second`` is None for per-frame encoders (native fps).
    """

    name: str
    dim: int
    checksum: str | None = None  # sha256 of the weights, None for parameter-free
    stand_in: bool = False  # True for the parameter-free demo/test encoders
    steps_per_second: float | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def label(self) -> str:
        return f"{self.name} (stand-in)" if self.stand_in else self.name


@dataclass(frozen=True)
class CacheLayout:
    """Storage choices for the feature arrays of a part (recorded per cache)."""

    # Measured by bench/bench_loader.py --layouts (paper shapes, 512 clips): the training
    # loader reads uncompressed arrays by byte offset, so its rate does not depend on
    # chunking; FeatureCache.get does: 16384-row chunks 4 clips/s, 1024 rows 99/s,
    # 256-row chunks in one shard per part 67/s.  zstd saves 11% of disk and costs
    # 3x on the loader (it falls back to Zarr), so no compression.
    chunk_rows: int = 1024  # rows per Zarr chunk of a data array (1.5 MB video, 12.6 MB audio)
    shard_rows: int | None = None  # rows per shard; None = no sharding (one file per chunk)
    compressor: str | None = None  # None: float16 features barely compress (0.89x with zstd)
    part_clips: int = 256  # clips per committed part

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CacheLayout":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class CacheMeta:
    schema_version: int
    video: EncoderInfo
    audio: EncoderInfo
    layout: CacheLayout = field(default_factory=CacheLayout)
    audio_sample_rate: int = 16000

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "encoders": {VIDEO: self.video.to_dict(), AUDIO: self.audio.to_dict()},
            "layout": self.layout.to_dict(),
            "audio_sample_rate": self.audio_sample_rate,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CacheMeta":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CacheError(
                f"cache schema version {version!r} is not readable by this SCAV "
                f"(reads version {SCHEMA_VERSION}); re-extract or use a matching SCAV release"
            )
        try:
            enc = d["encoders"]
            return cls(
                schema_version=version,
                video=EncoderInfo.from_dict(enc[VIDEO]),
                audio=EncoderInfo.from_dict(enc[AUDIO]),
                layout=CacheLayout.from_dict(d.get("layout", {})),
                audio_sample_rate=int(d.get("audio_sample_rate", 16000)),
            )
        except (KeyError, TypeError) as e:
            raise CacheError(f"cache metadata is incomplete: missing {e}") from e

    def fingerprint(self) -> str:
        """Short hash of the encoders' identity: what a checkpoint must match."""
        ident = {VIDEO: self.video.to_dict(), AUDIO: self.audio.to_dict()}
        blob = json.dumps(ident, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class AudioTrack:
    """One audio stream of a clip's container."""

    index: int  # position among the container's audio streams (0 = first)
    language: str | None = None  # container language tag, if any
    n_steps: int = 0


@dataclass
class ClipInfo:
    """One row of the per-clip table (everything but the features)."""

    clip_id: str
    split: str
    label: str = ""
    source: str = ""
    path: str = ""
    start: float | None = None
    end: float | None = None
    fps: float = 0.0  # native average frame rate of the range
    duration: float = 0.0  # seconds of the range actually decoded
    n_video: int = 0  # stored video steps (frames)
    tracks: list[AudioTrack] = field(default_factory=list)

    @property
    def n_audio(self) -> int:
        """Steps of the default (first) audio track."""
        return self.tracks[0].n_steps if self.tracks else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClipInfo":
        d = dict(d)
        d["tracks"] = [AudioTrack(**t) for t in d.get("tracks", [])]
        return cls(**d)


@dataclass
class Failure:
    """A clip that could not be extracted, and why (never a swallowed traceback)."""

    clip_id: str
    stage: str  # "open", "decode-video", "decode-audio", "range", "encode", ...
    reason: str
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def audio_track_name(index: int) -> str:
    return f"t{index}"
