"""A folder of media as a manifest: every media file under a root, whole or cut into windows.

``scav-extract DIR`` extracts what this builds. Files are found by suffix
(:data:`MEDIA_SUFFIXES`, case-insensitive) anywhere under the root, skipping hidden
files and folders (names starting with ``.``), in sorted order, so the same folder
always gives the same rows. Each row's ``path`` is the file's path relative to the
root (``/``-separated); ``clip_id`` is derived from it:

- whole files (no window): ``clip_id = path`` (``concerts/2019/a.mp4``), no start/end;
- windows (``window`` seconds every ``hop`` seconds, like the MUSIC builder: from 0,
  a tail shorter than the window dropped): ``clip_id = path@start``
  (``concerts/2019/a.mp4@12.5``, the start as written in the manifest).

``source`` is the path (windows of one file are near-duplicates for retrieval),
``label`` the file's folder relative to the root (``concerts/2019``; empty at the
top), ``split`` one name for all (default ``all``). Durations are probed only when
windowing; a file that cannot be probed or is shorter than one window goes to the
missing-media report. :func:`window_rows` cuts the rows of a manifest that have no
start/end the same way, ``clip_id@start``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from .builders import BuildResult, MissingMedia
from .manifest import ManifestError, ManifestRow, format_seconds
from .music import probe_duration, windows

log = logging.getLogger(__name__)

MEDIA_SUFFIXES = (
    ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp", ".ogv",
)  # fmt: skip
FOLDER_SPLIT = "all"


def media_files(root: str | os.PathLike) -> list[str]:
    """Relative ``/``-separated paths of the media files under ``root``, sorted; hidden entries skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"media folder {root} does not exist or is not a folder")
    found: list[str] = []
    for folder, dirs, files in os.walk(root):  # links to folders are not followed: no cycles
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root)
        found += [(rel / f).as_posix() for f in files if not f.startswith(".") and f.lower().endswith(MEDIA_SUFFIXES)]
    return sorted(found)


def window_clip_id(clip_id: str, start: float) -> str:
    return f"{clip_id}@{format_seconds(start)}"


def _cut(row: ManifestRow, media_root: Path, window: float, hop: float | None) -> tuple[list[ManifestRow], str | None]:
    """The windows of ``row``'s whole file, or ([], why not)."""
    try:
        duration = probe_duration(row.resolve(media_root))
    except Exception as e:  # absent or corrupt file: report it, go on
        return [], f"cannot probe duration: {e}"
    spans = windows(duration, window, hop)
    if not spans:
        return [], f"shorter than the {window:g} s window ({duration:.2f} s)"
    source = row.source_id
    return [replace(row, clip_id=window_clip_id(row.clip_id, a), start=a, end=b, source=source) for a, b in spans], None


def window_rows(
    rows: Iterable[ManifestRow], media_root: str | os.PathLike, window: float, hop: float | None = None
) -> BuildResult:
    """Rows without start and end cut into windows (``clip_id@start``); rows with either kept as they are."""
    media_root = Path(media_root)
    out, missing = [], []
    for row in rows:
        if row.start is not None or row.end is not None:
            out.append(row)
            continue
        cut, why = _cut(row, media_root, window, hop)
        out += cut
        if why:
            missing.append(MissingMedia(row.clip_id, row.path, row.split, row.label, why))
    _check_unique(out)
    return BuildResult(rows=out, missing=missing, media_root=media_root)


def build_folder(
    root: str | os.PathLike, window: float | None = None, hop: float | None = None, split: str = FOLDER_SPLIT
) -> BuildResult:
    """Manifest rows for every media file under ``root``: whole files, or ``window``-second windows every
    ``hop`` seconds (default: the window). ``hop`` without ``window`` is an error."""
    root = Path(root)
    if hop is not None and window is None:
        raise ManifestError("--hop needs --window")
    rows = [
        ManifestRow(clip_id=p, path=p, split=split, label=_folder_label(p), source=p)
        for p in media_files(root)
    ]
    if window is None:
        return BuildResult(rows=rows, media_root=root)
    return window_rows(rows, root, window, hop)


def _check_unique(rows: list[ManifestRow]) -> None:
    seen: set[str] = set()
    for r in rows:
        if r.clip_id in seen:  # e.g. a manifest with clip ids "a" and "a@0" both windowed
            raise ManifestError(f"windowing gives the clip id {r.clip_id!r} twice; rename one of the clips")
        seen.add(r.clip_id)


def _folder_label(rel: str) -> str:
    parent = Path(rel).parent.as_posix()
    return "" if parent == "." else parent
