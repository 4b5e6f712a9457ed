"""What a scav-dub run leaves in ``--out`` besides the media: one record per file (what a rerun
trusts), the manifest of the finished files, failures.csv and the report."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..data_manifests.manifest import write_manifest
from .config import DubConfig
from .plan import MediaJob
from .stages import StageError

MEDIA_DIR = "media"
RECORDS_DIR = "records"
MANIFEST_NAME = "manifest.csv"
REPORT_NAME = "dub_report.json"
FAILURES_NAME = "failures.csv"
REPORT_VERSION = 1


def record_path(out: Path, key: str) -> Path:
    return out / RECORDS_DIR / (key + ".json")


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, payload: Any) -> None:
    from ..core.files import write_json_atomic

    write_json_atomic(path, payload, indent=1)


def failure_row(job: MediaJob, e: StageError) -> dict:
    return {"path": job.path, "language": getattr(e, "language", "") or "", "stage": e.stage,
            "reason": e.reason, "clip_ids": ";".join(r.clip_id for r in job.rows)}


def write_outputs(cfg: DubConfig, out: Path, media_root: Path, done: list[MediaJob], failures: list[dict]) -> Path:
    """out/manifest.csv (rows of finished files, new paths) and out/failures.csv."""
    from ..core.files import atomic_path

    rows = []
    out_abs = out.resolve()
    for job in done:
        for r in job.rows:
            tracks = tuple(dataclasses.replace(t, path=os.path.relpath(t.resolve(media_root).resolve(), out_abs))
                           for t in r.audio_tracks)
            rows.append(dataclasses.replace(r, path=f"{MEDIA_DIR}/{job.key}", audio_tracks=tracks))
    manifest_path = out / MANIFEST_NAME
    if rows:
        write_manifest(rows, manifest_path)
    elif manifest_path.exists():
        manifest_path.unlink()  # no finished file: no manifest, rather than an empty one scav-extract rejects
    with atomic_path(out / FAILURES_NAME) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["path", "language", "stage", "reason", "clip_ids"])
            w.writeheader()
            w.writerows(failures)
    return manifest_path


@contextlib.contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s writer lock (core/writer_lock.py, as scav-extract's) for a whole run; a second run
    on the same folder is refused with a ValueError naming the holder."""
    from ..core.schema import CacheError
    from ..core.writer_lock import HOLDER_FILE, CacheLock

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = CacheLock(out)
    except CacheError:
        try:
            h = json.loads((out / HOLDER_FILE).read_text())
            holder = f"pid {h['pid']} on {h['host']}, since {h['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            holder = "another process"
        raise ValueError(f"{out} is being written by another scav-dub run ({holder}); wait for it to finish "
                         "(a rerun then does only what is missing) or use another --out") from None
    try:
        yield
    finally:
        lock.release()


def sweep_stale_tmp(out: Path, keys: list[str]) -> list[Path]:
    """Remove the temporaries of every file a run writes in ``out`` that dead processes left (kill -9
    during a write); ``keys`` are the media keys of the run's files."""
    from ..core.files import remove_stale_tmp

    targets = [out / MANIFEST_NAME, out / FAILURES_NAME, out / REPORT_NAME]
    for key in keys:
        targets += [out / MEDIA_DIR / key, record_path(out, key)]
    return [p for t in targets for p in remove_stale_tmp(t)]
