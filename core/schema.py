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
      .staging/<writer>/        parts being written, one folder per live writer (ignored by
                                readers; removed only once its writer's lock is free)
      .scav-writer.lock         held by the one run writing the cache (core/writer_lock.py)
      .damaged/                 parts set aside by `scav-extract verify --repair`

Since schema minor 1 (``CacheLayout.checksums``) every chunk ends with a crc32c
(shard indexes too) and every chunk is written, so a missing chunk is damage.

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

SCHEMA_VERSION = 1  # readers refuse other majors
# Minor versions add what older readers of this major can ignore:
#   1: every chunk carries a crc32c (shard indexes too) and every chunk is written, even
#      all-zero ones, so a missing chunk file is damage, not zeros (``CacheLayout.checksums``).
SCHEMA_MINOR = 1
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
    # crc32c per chunk + every chunk written (schema minor 1); measured cost in bench/bench_checksum.py.
    # Caches written before record no such field and read as False.
    checksums: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CacheLayout":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"checksums": False, **{k: v for k, v in d.items() if k in known}})


@dataclass(frozen=True)
class CacheMeta:
    schema_version: int
    video: EncoderInfo
    audio: EncoderInfo
    layout: CacheLayout = field(default_factory=CacheLayout)
    audio_sample_rate: int = 16000
    schema_minor: int = SCHEMA_MINOR  # what the cache was written with (0: before checksums)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "schema_minor": self.schema_minor,
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
                schema_minor=int(d.get("schema_minor", 0)),
            )
        except (KeyError, TypeError) as e:
            raise CacheError(f"cache metadata is incomplete: missing {e}") from e

    def identity(self) -> dict[str, Any]:
        """The encoders' identity: what changes features (weights' sha256, numeric preprocessing).

        Each encoder's ``preprocessing[PROVENANCE]`` (library versions, file names,
        where the weights came from) is left out: upgrading a library or renaming a
        checkpoint must not lock a cache. JSON form, so tuples and lists compare equal.
        """
        ident = {}
        for mod, info in ((VIDEO, self.video), (AUDIO, self.audio)):
            d = info.to_dict()
            d["preprocessing"] = {k: v for k, v in d["preprocessing"].items() if k != PROVENANCE}
            ident[mod] = d
        return json.loads(json.dumps(ident, sort_keys=True))

    def fingerprint(self) -> str:
        """Short hash of :meth:`identity`: what a cache extension and a checkpoint must match."""
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def identity_diff(self, other: "CacheMeta") -> list[tuple[str, Any, Any]]:
        """``(field, self's value, other's value)`` for every identity field that differs, sorted.

        Fields are dotted paths (``audio.checksum``, ``video.preprocessing.size.shortest_edge``);
        a value missing on one side is ``MISSING``.
        """
        a, b = _flatten(self.identity()), _flatten(other.identity())
        return [(k, a.get(k, MISSING), b.get(k, MISSING)) for k in sorted(a.keys() | b.keys())
                if a.get(k, MISSING) != b.get(k, MISSING)]


# EncoderInfo.preprocessing[PROVENANCE]: recorded with the cache, not part of its fingerprint
PROVENANCE = "provenance"
MISSING = "<missing>"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def format_identity_diff(diff: list[tuple[str, Any, Any]], old: str = "cache", new: str = "this run") -> str:
    """One line per differing field: ``  audio.checksum: cache 'ab12…' | this run 'cd34…'``."""
    def show(v: Any) -> str:
        return v if v is MISSING else json.dumps(v)

    return "\n".join(f"  {k}: {old} {show(x)} | {new} {show(y)}" for k, x, y in diff)


def require_same_encoders(have: "CacheMeta", want: "CacheMeta", have_name: str, want_name: str,
                          remedy: str, error: type[Exception] | None = None) -> None:
    """The one comparison of two encoder identities (:meth:`CacheMeta.fingerprint`) and the one
    error it gives: both sides' encoders and fingerprints, then a line per differing field.

    ``have_name`` / ``want_name`` name the two sides ("the cache", "checkpoint x.pt"); ``remedy``
    ends the message; ``error`` is the exception type (default CacheError).
    """
    if have.fingerprint() == want.fingerprint():
        return
    diff = format_identity_diff(have.identity_diff(want), have_name, want_name)
    raise (error or CacheError)(
        f"{have_name} holds features of video={have.video.label}, audio={have.audio.label} (fingerprint "
        f"{have.fingerprint()}), {want_name} other encoders: video={want.video.label}, audio={want.audio.label} "
        f"(fingerprint {want.fingerprint()}); what differs:\n{diff}\n{remedy}"
    )


# Which audio track of a clip to read: an int j = the clip's j-th audio track (the container's
# audio streams first, then the manifest's track files; stored as ``audio/t<j>``; 0 = the first,
# which is not always the original: ``ClipInfo.original_track``), or a
# str = the first track whose language tag equals it, case-insensitively (tags are
# compared as stored: ffmpeg writes ISO 639-2 codes, e.g. "spa", "eng").  Resolved per clip by
# ``ClipInfo.track_index``; a clip without the selected track is an error, never a silent
# fallback to another track (a mistyped language would otherwise train on the original audio).
TrackSelector = int | str


def is_track_selector(track: Any) -> bool:
    """Whether ``track`` is a valid selector: an int >= 0 (not a bool) or a non-empty str."""
    if isinstance(track, bool):
        return False
    return (isinstance(track, int) and track >= 0) or (isinstance(track, str) and bool(track.strip()))


def check_track_selector(track: TrackSelector) -> TrackSelector:
    """``track`` if it is a valid selector (int >= 0 or a non-empty str), else CacheError."""
    if not is_track_selector(track):
        raise CacheError(f"audio track must be an index >= 0 or a language tag, got {track!r}")
    return track


def parse_track_selector(text: str) -> TrackSelector:
    """A selector from the command line: digits -> track index, anything else -> language tag."""
    text = text.strip()
    return check_track_selector(int(text) if text.isdigit() else text)


@dataclass
class AudioTrack:
    """One audio track of a clip: an audio stream of its container, or a separate file (a dub).

    ``original``: the track in the film's original language (the others are dubs). Set at
    extraction (extract/decode.py states the rule); caches written before the flag existed have
    no such key and read as False everywhere, so :meth:`ClipInfo.original_track` falls back to 0.
    """

    index: int  # position among the clip's audio tracks: container streams first, then manifest files
    language: str | None = None  # language tag (container metadata or the manifest), if any
    n_steps: int = 0
    original: bool = False


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
        """Steps of the default (first) audio track; 0 for a clip without audio."""
        return self.tracks[0].n_steps if self.tracks else 0

    def find_track(self, track: TrackSelector = 0) -> int | None:
        """Position in ``tracks`` (array ``audio/t<j>``) of the selected track, None if absent."""
        check_track_selector(track)
        if isinstance(track, int):
            return track if track < len(self.tracks) else None
        want = track.strip().lower()
        return next((j for j, t in enumerate(self.tracks) if (t.language or "").lower() == want), None)

    def track_index(self, track: TrackSelector = 0) -> int:
        """Position in ``tracks`` of the selected track (``TrackSelector``); CacheError naming
        the clip and its tracks if it has none such."""
        j = self.find_track(track)
        if j is None:
            raise CacheError(f"clip {self.clip_id!r} has no audio track {track!r} "
                             f"(it has {describe_tracks(self.tracks)})")
        return j

    def original_track(self) -> int:
        """Position in ``tracks`` of the original-language track (the first flagged); 0 if none is."""
        return next((j for j, t in enumerate(self.tracks) if t.original), 0)

    def n_audio_steps(self, track: TrackSelector = 0) -> int:
        """Steps of the selected audio track (CacheError if the clip has none such)."""
        return self.tracks[self.track_index(track)].n_steps

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


def describe_tracks(tracks: list[AudioTrack]) -> str:
    """``2 tracks: 0 (eng), 1 (spa)`` for messages."""
    if not tracks:
        return "no audio tracks"
    items = ", ".join(f"{j} ({t.language or 'no language tag'})" for j, t in enumerate(tracks))
    return f"{len(tracks)} track{'s' if len(tracks) != 1 else ''}: {items}"


def audio_track_name(index: int) -> str:
    return f"t{index}"


def array_name(modality: str, track: int = 0) -> str:
    """A part's array folder for ``modality`` (``video``, or ``audio`` track ``track``): ``video``, ``audio/t1``."""
    return VIDEO if modality == VIDEO else f"{AUDIO}/{audio_track_name(track)}"
