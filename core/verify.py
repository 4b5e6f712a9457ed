"""Check a whole cache, part by part, and set damaged parts aside.

What a part must satisfy to be healthy:

- its ``zarr.json`` (the clip table) and every array's ``zarr.json`` parse;
- every chunk file is present (caches with checksums write every chunk), has the
  size Zarr's grid gives it, and passes its crc32c (shard indexes too);
- offsets start at 0, never decrease, end at the data's length, and give each clip
  the step counts of the clip table (video, every audio track); times match the frames;
- every stored value is finite.

``repair`` moves damaged parts to ``<cache>/.damaged/`` (kept for inspection, never
read): their clips leave the cache, so the rest stays usable and a rerun of the
extraction (same manifest) extracts exactly those clips again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .cache import FeatureCache, Part, PartDamaged, _part_dirs, _read_root_meta
from .schema import AUDIO, VIDEO, CacheError, array_name
from .writer_lock import CacheLock

log = logging.getLogger(__name__)

DAMAGED_DIR = ".damaged"
_ROWS_PER_READ = 4096  # finite-value check reads this many rows at a time


@dataclass
class PartReport:
    name: str
    problems: list[str] = field(default_factory=list)
    clip_ids: list[str] = field(default_factory=list)  # the part's clips (empty: clip table unreadable)

    @property
    def healthy(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    path: str
    parts: int = 0
    clips: int = 0
    damaged: list[PartReport] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.damaged

    def to_dict(self) -> dict:
        return {"path": self.path, "healthy": self.healthy, "parts": self.parts, "clips": self.clips,
                "damaged_parts": [asdict(d) for d in self.damaged],
                "damaged_clips": sum(len(d.clip_ids) for d in self.damaged)}


def _arrays(part: Part) -> list[tuple[str, str, int]]:
    """(array folder, modality, track) of every feature array of the part."""
    out = [(VIDEO, VIDEO, 0)] if part.has(f"{VIDEO}/offsets") else []
    j = 0
    while part.has(f"{array_name(AUDIO, j)}/offsets"):
        out.append((array_name(AUDIO, j), AUDIO, j))
        j += 1
    return out


def _finite(part: Part, array: str) -> str | None:
    rows = part.chunks(array).rows if part.chunks(array) is not None else part.group[array].shape[0]
    for a in range(0, rows, _ROWS_PER_READ):
        x = part.read_array(array, a, min(rows, a + _ROWS_PER_READ))
        if not np.isfinite(x).all():
            bad = a + int(np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0])
            return f"{array}: NaN or Inf at row {bad}"
    return None


def verify_part(path: Path, strict: bool) -> PartReport:
    """Every check of the module docstring on one part."""
    try:
        part = Part(path, strict=strict)
    except PartDamaged as e:
        return PartReport(path.name, [str(e)])
    report = PartReport(path.name, clip_ids=[c.clip_id for c in part.clips])
    for folder, modality, track in _arrays(part):
        arrays = [f"{folder}/data", f"{folder}/offsets"] + ([f"{folder}/times"] if modality == VIDEO else [])
        chunk_problems = []
        for array in arrays:
            try:  # the part's own layout: chunks verified here are not checked again by _finite
                chunks = part.chunks(array)
            except CacheError as e:
                chunk_problems.append(str(e).removeprefix(f"part {part.name}: "))
                continue
            if chunks is not None:
                chunk_problems += chunks.verify_all()
        report.problems += chunk_problems
        if chunk_problems:
            continue  # values of damaged chunks cannot be read
        try:
            off = part.offsets(modality, track)  # checked against the clip table and the data length
            if modality == VIDEO and part.chunks(f"{VIDEO}/times").rows != off[-1]:
                report.problems.append(f"{VIDEO}/times has {part.chunks(f'{VIDEO}/times').rows} rows, "
                                       f"the frames {int(off[-1])}")
            for array in arrays[:1] + arrays[2:]:
                problem = _finite(part, array)
                if problem:
                    report.problems.append(problem)
        except CacheError as e:
            report.problems.append(str(e))
    return report


def verify_cache(path: str | os.PathLike) -> VerifyReport:
    """Check every committed part of the cache at ``path`` (CacheError if it is not a cache)."""
    path = Path(path)
    meta = _read_root_meta(path)
    report = VerifyReport(str(path))
    for p in _part_dirs(path):
        pr = verify_part(p, meta.layout.checksums)
        report.parts += 1
        report.clips += len(pr.clip_ids)
        if not pr.healthy:
            report.damaged.append(pr)
    return report


def _free_name(folder: Path, name: str) -> str:
    """``name``, or ``name.1``, ``name.2``, ... whichever neither exists in ``folder`` nor has a .why.json."""
    taken = lambda n: (folder / n).exists() or (folder / n).is_symlink() or (folder / f"{n}.why.json").exists()  # noqa: E731
    i, out = 0, name
    while taken(out):
        i += 1
        out = f"{name}.{i}"
    return out


def set_aside(path: str | os.PathLike, report: VerifyReport, timeout: float = 0.0) -> list[str]:
    """Move the damaged parts of ``report`` to ``.damaged/`` (under the cache lock); their names."""
    path = Path(path)
    moved = []
    with CacheLock(path, timeout):
        target = path / DAMAGED_DIR
        target.mkdir(exist_ok=True)
        for d in report.damaged:
            src = path / "parts" / d.name
            if src.exists():
                name = _free_name(target, d.name)  # an earlier repair may have set aside a part of this name
                os.replace(src, target / name)
                (target / f"{name}.why.json").write_text(json.dumps(asdict(d), indent=2))
                moved.append(name)
    FeatureCache.open(path)  # what is left opens
    return moved
