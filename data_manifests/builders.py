"""What the dataset builders (VGGSound, MUSIC) return: manifest rows and a missing-media report."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import ManifestRow, write_manifest


@dataclass
class MissingMedia:
    """A listed clip or video whose media file is absent or unreadable."""

    clip_id: str
    path: str
    split: str
    label: str
    reason: str


@dataclass
class BuildResult:
    """What a dataset builder found: manifest rows (paths relative to media_root) and what is missing."""

    rows: list[ManifestRow]
    missing: list[MissingMedia] = field(default_factory=list)
    media_root: Path = Path(".")

    def write(self, folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
        """Write ``<folder>/<name>.csv`` (the manifest) and ``<folder>/<name>_missing_media.csv``."""
        folder = Path(folder)
        manifest = write_manifest(self.rows, folder / f"{name}.csv")
        report = folder / f"{name}_missing_media.csv"
        tmp = report.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["clip_id", "path", "split", "label", "reason"])
            for m in self.missing:
                w.writerow([m.clip_id, m.path, m.split, m.label, m.reason])
        os.replace(tmp, report)
        return manifest, report
