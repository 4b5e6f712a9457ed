"""VGGSound manifest builder: a VGGSound list + a folder of 10 s cuts -> manifest rows.

Two list formats are read (no header in either; quoted labels may hold commas):

- the official ``vggsound.csv``: ``<ytid>,<start seconds>,<label>,<train|test>``;
- the test list ``test.csv`` of the VGGSound repository: ``<ytid>_<start:06d>.mp4,<label>``
  (every row is a test clip).

Media: ``<media_root>/<ytid>_<start:06d>.mp4``, already cut to 10 s, so every
clip is the whole file. ``clip_id = <ytid>_<start:06d>``, ``split`` =
``vggsound-train`` / ``vggsound-test``, ``source`` = ytid. Listed clips whose
file is absent (about 20 % of VGGSound is gone from YouTube) are returned as
``MissingMedia`` and written to a report, never an error.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from .builders import BuildResult, MissingMedia
from .manifest import ManifestError, ManifestRow

log = logging.getLogger(__name__)


SPLITS = {"train": "vggsound-train", "test": "vggsound-test"}


def clip_id_for(ytid: str, start: int) -> str:
    return f"{ytid}_{int(start):06d}"


def read_vggsound_list(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """(clip_id, label, split name) for each row of either list format, first copy of duplicates."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"VGGSound list {path} does not exist")
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    errors: list[str] = []
    duplicates = 0
    with path.open(newline="", encoding="utf-8") as f:
        for lineno, rec in enumerate(csv.reader(f), start=1):
            rec = [x.strip() for x in rec]
            if not rec or not any(rec):
                continue
            try:
                if rec[0].endswith(".mp4") and len(rec) == 2:  # test-list form
                    stem = rec[0][: -len(".mp4")]
                    ytid, _, start = stem.rpartition("_")
                    if not ytid or not start.isdigit():
                        raise ValueError(f"file name {rec[0]!r} is not <ytid>_<start>.mp4")
                    cid, label, split = clip_id_for(ytid, int(start)), rec[1], SPLITS["test"]
                elif len(rec) == 4:  # official form
                    ytid, start, label, split_raw = rec
                    if split_raw not in SPLITS:
                        raise ValueError(f"split {split_raw!r} is neither train nor test")
                    cid, split = clip_id_for(ytid, int(float(start))), SPLITS[split_raw]
                else:
                    raise ValueError(f"expected 4 fields (ytid,start,label,split) or 2 (file,label), got {len(rec)}")
            except ValueError as e:
                errors.append(f"line {lineno}: {e}")
                continue
            if cid in seen:
                duplicates += 1
                continue
            seen.add(cid)
            out.append((cid, label, split))
    if errors:
        shown = "\n  ".join(errors[:10])
        raise ManifestError(f"{path}: {len(errors)} bad line(s):\n  {shown}")
    if duplicates:
        log.info("%s: %d duplicate rows ignored (first copy kept)", path, duplicates)
    return out


def build_vggsound(
    list_path: str | os.PathLike,
    media_root: str | os.PathLike,
    splits: set[str] | None = None,
) -> BuildResult:
    """Manifest rows for the listed clips present under ``media_root``.

    splits: keep only these (``train``/``test`` or ``vggsound-train``/``vggsound-test``).
    Paths in the rows are relative to ``media_root``.
    """
    media_root = Path(media_root)
    wanted = None if splits is None else {SPLITS.get(s, s) for s in splits}
    present = {p.name for p in media_root.iterdir()} if media_root.is_dir() else set()
    rows, missing = [], []
    for cid, label, split in read_vggsound_list(list_path):
        if wanted is not None and split not in wanted:
            continue
        name = f"{cid}.mp4"
        ytid = cid.rsplit("_", 1)[0]
        if name in present:
            rows.append(ManifestRow(clip_id=cid, path=name, split=split, label=label, source=ytid))
        else:
            missing.append(MissingMedia(cid, name, split, label, "file not found"))
    if not rows:
        log.warning("no VGGSound media found under %s (%d listed clips)", media_root, len(missing))
    return BuildResult(rows=rows, missing=missing, media_root=media_root)
