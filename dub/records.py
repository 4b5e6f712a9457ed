"""What a scav-dub run leaves in ``--out`` besides the media: one record per file (what a rerun
trusts), the manifest of the finished files, failures.csv and the report."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
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
    from ..core.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1) + "\n")


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
