"""The SCAV clip manifest: a CSV that says which clips to extract.

Columns (header required, order free, extra columns ignored)::

    clip_id, path, start, end, split, label, source

- ``clip_id``: unique key of the clip everywhere in SCAV (never the file name).
- ``path``: media file, relative to the manifest's folder (or to ``media_root``
  when given at run time) or absolute.
- ``start``/``end``: seconds; empty = from the beginning / to the end of file.
- ``split``: e.g. ``train``, ``val``, ``test``, ``vggsound-test``, ``music-test``.
- ``label``: free text (class name), may be empty.
- ``source``: the long video the clip was cut from; empty = the path.
- ``audio_tracks`` (optional column): audio tracks in separate files (dubs), as
  ``;``-separated ``tag=path`` entries, e.g. ``*eng=dubs/x_eng.m4a;spa=dubs/x_spa.m4a``.
  ``tag`` is the track's language tag (letters, digits, ``-``, ``_``; unique in
  the row, case-insensitively); a leading ``*`` marks the original-language track
  (at most one per row); ``path`` is relative like ``path`` (no ``;`` in it).
  A clip's tracks are its container's audio streams, then one per entry (that
  file's first audio stream, same time window), in this order. Empty = none.
  ``write_manifest`` writes the column only when some row has tracks.

Loading has no side effects: it reads, validates and returns rows, or raises
``ManifestError`` listing every bad line.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

COLUMNS = ("clip_id", "path", "start", "end", "split", "label", "source")
REQUIRED = ("clip_id", "path", "split")
TRACKS_COLUMN = "audio_tracks"  # optional
ORIGINAL_MARK = "*"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message lists the offending lines."""


@dataclass(frozen=True)
class TrackFile:
    """An audio track in a file of its own (``audio_tracks`` entry): its first audio stream."""

    language: str
    path: str
    original: bool = False

    def resolve(self, base: str | os.PathLike) -> Path:
        return _resolve(self.path, base)


@dataclass(frozen=True)
class ManifestRow:
    clip_id: str
    path: str
    start: float | None = None
    end: float | None = None
    split: str = "train"
    label: str = ""
    source: str = ""
    audio_tracks: tuple[TrackFile, ...] = ()  # after the container's own streams

    def resolve(self, base: str | os.PathLike) -> Path:
        """The media file's absolute path (``path`` may already be absolute)."""
        return _resolve(self.path, base)

    @property
    def source_id(self) -> str:
        return self.source or self.path


def _resolve(path: str, base: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(base) / p


def parse_audio_tracks(text: str) -> tuple[TrackFile, ...]:
    """``*eng=a.m4a;spa=b.m4a`` -> TrackFiles (ValueError saying what is wrong; empty text -> ())."""
    text = (text or "").strip()
    if not text:
        return ()
    tracks: list[TrackFile] = []
    seen: set[str] = set()
    for k, entry in enumerate(text.split(";"), start=1):
        tag, eq, path = (x.strip() for x in entry.partition("="))
        if not eq or not path:
            raise ValueError(f"audio_tracks entry {k} {entry.strip()!r} is not 'tag=path' "
                             f"('{ORIGINAL_MARK}tag=path' for the original)")
        original = tag.startswith(ORIGINAL_MARK)
        tag = tag[len(ORIGINAL_MARK):].strip() if original else tag
        if not _TAG.match(tag):
            raise ValueError(f"audio_tracks entry {k}: bad language tag {tag!r} (letters, digits, '-', '_')")
        if tag.lower() in seen:
            raise ValueError(f"audio_tracks: language tag {tag!r} given twice")
        seen.add(tag.lower())
        tracks.append(TrackFile(tag, path, original))
    if sum(t.original for t in tracks) > 1:
        raise ValueError(f"audio_tracks: more than one track marked original ('{ORIGINAL_MARK}')")
    return tuple(tracks)


def format_audio_tracks(tracks: tuple[TrackFile, ...]) -> str:
    """The ``audio_tracks`` cell for ``tracks`` (inverse of :func:`parse_audio_tracks`)."""
    for t in tracks:  # a value that would not read back is a bug of the caller, not a bad line
        if ";" in t.path or "=" in t.language or not t.path:
            raise ValueError(f"audio track {t} cannot be written as 'tag=path'")
    return ";".join(f"{ORIGINAL_MARK if t.original else ''}{t.language}={t.path}" for t in tracks)


def _parse_time(text: str, what: str) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    value = float(text)  # ValueError is reported by the caller with the line number
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {text!r}")
    return value


def load_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Read and validate a manifest CSV; raise ManifestError naming every bad line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ManifestError(f"{path}: line {line}, column {col}: byte 0x{data[e.start]:02x} is not UTF-8; "
                            "save the manifest as UTF-8") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ManifestError(
                f"{path}: missing column(s) {', '.join(missing)}; expected header "
                f"{','.join(COLUMNS)}"
            )
        rows: list[ManifestRow] = []
        errors: list[str] = []
        seen: dict[str, int] = {}
        for lineno, raw in enumerate(reader, start=2):
            raw = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            try:
                clip_id = raw["clip_id"]
                if not clip_id:
                    raise ValueError("empty clip_id")
                if not raw["path"]:
                    raise ValueError("empty path")
                if not raw["split"]:
                    raise ValueError("empty split")
                start = _parse_time(raw.get("start", ""), "start")
                end = _parse_time(raw.get("end", ""), "end")
                if start is not None and end is not None and end <= start:
                    raise ValueError(f"end ({end}) must be after start ({start})")
                if clip_id in seen:
                    raise ValueError(f"duplicate clip_id {clip_id!r} (first on line {seen[clip_id]})")
                seen[clip_id] = lineno
                rows.append(
                    ManifestRow(
                        clip_id=clip_id,
                        path=raw["path"],
                        start=start,
                        end=end,
                        split=raw["split"],
                        label=raw.get("label", ""),
                        source=raw.get("source", ""),
                        audio_tracks=parse_audio_tracks(raw.get(TRACKS_COLUMN, "")),
                    )
                )
            except ValueError as e:
                errors.append(f"line {lineno}: {e}")
    if errors:
        shown = "\n  ".join(errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ManifestError(f"{path}: {len(errors)} bad line(s):\n  {shown}{more}")
    return rows


def format_seconds(x: float) -> str:
    """Seconds as written to a manifest: ``:g`` (``10``, ``12.5``) when that reads back exactly, else
    every digit (``:g`` keeps 6 significant digits: 35999.75 would come back as 35999.8)."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


def write_manifest(rows: list[ManifestRow], path: str | os.PathLike) -> Path:
    """Write rows as a manifest CSV (atomically: temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    # the optional column only when used: manifests without dubs stay byte-identical
    with_tracks = any(r.audio_tracks for r in rows)
    names = [f.name for f in fields(ManifestRow) if with_tracks or f.name != TRACKS_COLUMN]
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in rows:
            d = asdict(r)
            d["start"] = "" if r.start is None else format_seconds(r.start)
            d["end"] = "" if r.end is None else format_seconds(r.end)
            if with_tracks:
                d[TRACKS_COLUMN] = format_audio_tracks(r.audio_tracks)
            else:
                del d[TRACKS_COLUMN]
            w.writerow(d)
    os.replace(tmp, path)
    return path
