"""Which media files a run dubs and where each one goes (``out/media/<key>``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..data_manifests.manifest import ManifestRow


@dataclass
class MediaJob:
    key: str  # output path relative to out/media (posix)
    source: Path  # resolved input path
    rows: list[ManifestRow]

    @property
    def path(self) -> str:
        return self.rows[0].path


def output_key(row_path: str, resolved: Path) -> str:
    """Where a media file's dub goes, relative to ``out/media``: the row's relative path (``.mp4``
    appended unless it ends so); an absolute or ``..`` path goes to ``external/<hash>-<name>``."""
    p = PurePosixPath(row_path.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
        p = PurePosixPath("external") / f"{digest}-{resolved.name}"
    return str(p if p.suffix.lower() == ".mp4" else p.with_name(p.name + ".mp4"))


def plan_jobs(rows: Sequence[ManifestRow], media_root: Path) -> list[MediaJob]:
    """Rows grouped by media file, in the order files first appear."""
    jobs: dict[Path, MediaJob] = {}
    used: set[str] = set()
    for r in rows:
        src = r.resolve(media_root).resolve()
        if src not in jobs:
            key = output_key(r.path, src)
            if key in used:  # 'x' and 'x.mp4' are two files: the second gets a name of its own
                p = PurePosixPath(key)
                key = str(p.with_name(f"{hashlib.sha1(str(src).encode()).hexdigest()[:10]}-{p.name}"))
            used.add(key)
            jobs[src] = MediaJob(key, src, [])
        jobs[src].rows.append(r)
    return list(jobs.values())


def media_paths(rows: Sequence[ManifestRow], media_root: Path) -> list[Path]:
    """Every media file a run reads (resolved): each row's file and each separate audio-track file."""
    paths = set()
    for r in rows:
        paths.add(r.resolve(media_root).resolve())
        paths.update(t.resolve(media_root).resolve() for t in r.audio_tracks)
    return sorted(paths)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out(out: Path, manifest: Path, media: Sequence[Path], keep_stages: Path | None = None) -> None:
    """ValueError (one line) unless a run writing ``out`` (and ``keep_stages``) leaves every input untouched.

    Refused: a folder that equals or contains an input (the manifest, a media or track file: a
    run's outputs could land on them), and a folder inside a folder that holds input media (the
    outputs would mix with the inputs).
    """
    inputs = [Path(manifest).resolve(), *media]
    for flag, folder in (("--out", out), ("--keep-stages", keep_stages)):
        if folder is None:
            continue
        folder = Path(folder).resolve()
        for p in inputs:
            if _inside(p, folder):
                raise ValueError(f"{flag} {folder} contains an input of this run ({p}); scav-dub never writes "
                                 "where its inputs are: choose a folder of its own")
        for p in media:
            if _inside(folder, p.parent):
                raise ValueError(f"{flag} {folder} lies inside the folder of the input media {p}; scav-dub never "
                                 "writes among its inputs: choose a folder outside it")
