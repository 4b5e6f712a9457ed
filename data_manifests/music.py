"""MUSIC21-solo manifest builder: the video list JSON + a folder of ``<ytid>.mp4``.

MUSIC21 ships no split (PITFALLS.md), so SCAV defines its own, from the JSON
alone (it does not depend on which videos you managed to download):

- per instrument, the video ids are ranked by ``sha1(ytid)`` (hex digest, ties
  broken by the id itself);
- the first ``n_test = round(100 * n_inst / n_total)`` of that ranking are test
  videos, clamped to at least 1 and at most ``n_inst - 1`` so every instrument
  is in both splits (MUSIC21: 21 instruments, 1,164 videos -> 100 test videos);
- a video listed under two instruments counts for the first one in sorted
  instrument order.

Clips: non-overlapping 10 s windows ``[10k, 10k + 10)`` of each video, from its
start; a tail shorter than 10 s is dropped. The duration is probed with PyAV at
build time (the container's duration, else its longest stream).
``clip_id = <ytid>_<start:06d>``, split ``music-train`` / ``music-test``,
``label`` = instrument, ``source`` = ytid. Absent or unreadable videos go to the
missing-media report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

from .manifest import ManifestError, ManifestRow
from .builders import BuildResult, MissingMedia

log = logging.getLogger(__name__)

TEST_VIDEOS = 100  # target size of the test split
WINDOW = 10.0  # seconds per clip
TRAIN, TEST = "music-train", "music-test"


def read_music_json(path: str | os.PathLike) -> dict[str, list[str]]:
    """{instrument: [ytid, ...]} from MUSIC21_solo_videos.json, each id under one instrument."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"MUSIC video list {path} does not exist")
    try:
        videos = json.loads(path.read_text())["videos"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ManifestError(f"{path} is not a MUSIC video list ({{'videos': {{instrument: [ids]}}}}): {e}") from e
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for inst in sorted(videos):
        ids = [i for i in dict.fromkeys(videos[inst]) if i not in seen]
        seen.update(ids)
        if ids:
            out[inst] = ids
    return out


def _hash_rank(ytid: str) -> tuple[str, str]:
    return hashlib.sha1(ytid.encode("utf-8")).hexdigest(), ytid


def music_split(videos: dict[str, list[str]], n_test: int = TEST_VIDEOS) -> dict[str, str]:
    """{ytid: 'music-train' | 'music-test'} by the documented per-instrument hash rule."""
    total = sum(len(v) for v in videos.values())
    split: dict[str, str] = {}
    for inst, ids in videos.items():
        ranked = sorted(ids, key=_hash_rank)
        k = round(n_test * len(ids) / total) if total else 0
        k = max(1, min(k, len(ids) - 1)) if len(ids) > 1 else 0
        for i, ytid in enumerate(ranked):
            split[ytid] = TEST if i < k else TRAIN
    return split


def probe_duration(path: str | os.PathLike) -> float:
    """Seconds of media in ``path`` (container duration, else the longest stream)."""
    import av

    with av.open(str(path)) as c:
        if c.duration is not None and c.duration > 0:
            return c.duration / 1e6
        ends = [
            float(s.duration * s.time_base)
            for s in c.streams
            if s.duration is not None and s.time_base is not None
        ]
        if not ends:
            raise ValueError("the container does not state its duration")
        return max(ends)


def windows(duration: float, window: float = WINDOW, hop: float | None = None) -> list[tuple[float, float]]:
    """``window``-second ranges starting at 0, hop, 2 hop, ... (hop defaults to the window:
    non-overlapping) that end within ``duration``; a shorter tail is dropped."""
    if window <= 0 or (hop is not None and hop <= 0):
        raise ValueError(f"window and hop must be > 0 seconds, got window={window} hop={hop}")
    if hop is None or hop == window:
        n = int(math.floor(duration / window + 1e-9))
        return [(k * window, (k + 1) * window) for k in range(n)]
    n = max(0, int(math.floor((duration - window) / hop + 1e-9)) + 1)
    # starts rounded to the microsecond: k * hop in floats is 0.30000000000000004 for 3 x 0.1
    return [(round(k * hop, 6), round(k * hop + window, 6)) for k in range(n)]


def build_music(
    json_path: str | os.PathLike,
    media_root: str | os.PathLike,
    splits: set[str] | None = None,
    window: float = WINDOW,
) -> BuildResult:
    """Manifest rows (10 s windows) for the listed videos present under ``media_root``.

    splits: keep only these (``train``/``test`` or ``music-train``/``music-test``).
    """
    media_root = Path(media_root)
    videos = read_music_json(json_path)
    split_of = music_split(videos)
    wanted = None if splits is None else {s if s.startswith("music-") else f"music-{s}" for s in splits}
    rows, missing = [], []
    for inst, ids in videos.items():
        for ytid in sorted(ids):
            split = split_of[ytid]
            if wanted is not None and split not in wanted:
                continue
            name = f"{ytid}.mp4"
            path = media_root / name
            if not path.is_file():
                missing.append(MissingMedia(ytid, name, split, inst, "file not found"))
                continue
            try:
                duration = probe_duration(path)
            except Exception as e:  # corrupt file: report it, go on
                missing.append(MissingMedia(ytid, name, split, inst, f"cannot probe duration: {e}"))
                continue
            spans = windows(duration, window)
            if not spans:
                missing.append(MissingMedia(ytid, name, split, inst, f"shorter than {window:g} s ({duration:.2f} s)"))
            for a, b in spans:
                rows.append(
                    ManifestRow(
                        clip_id=f"{ytid}_{int(a):06d}", path=name, start=a, end=b,
                        split=split, label=inst, source=ytid,
                    )
                )
    return BuildResult(rows=rows, missing=missing, media_root=media_root)
