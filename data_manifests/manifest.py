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

Loading has no side effects: it reads, validates and returns rows, or raises
``ManifestError`` listing every bad line.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

COLUMNS = ("clip_id", "path", "start", "end", "split", "label", "source")
REQUIRED = ("clip_id", "path", "split")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message lists the offending lines."""


@dataclass(frozen=True)
class ManifestRow:
    clip_id: str
    path: str
    start: float | None = None
    end: float | None = None
    split: str = "train"
    label: str = ""
    source: str = ""

    def resolve(self, base: str | os.PathLike) -> Path:
        """The media file's absolute path (``path`` may already be absolute)."""
        p = Path(self.path)
        return p if p.is_absolute() else Path(base) / p

    @property
    def source_id(self) -> str:
        return self.source or self.path


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
    with path.open(newline="", encoding="utf-8") as f:
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
                    )
                )
            except ValueError as e:
                errors.append(f"line {lineno}: {e}")
    if errors:
        shown = "\n  ".join(errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ManifestError(f"{path}: {len(errors)} bad line(s):\n  {shown}{more}")
    return rows


def write_manifest(rows: list[ManifestRow], path: str | os.PathLike) -> Path:
    """Write rows as a manifest CSV (atomically: temp file then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    names = [f.name for f in fields(ManifestRow)]
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in rows:
            d = asdict(r)
            d["start"] = "" if r.start is None else f"{r.start:g}"
            d["end"] = "" if r.end is None else f"{r.end:g}"
            w.writerow(d)
    os.replace(tmp, path)
    return path
