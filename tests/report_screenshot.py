"""A sample search report (tiny synthetic media, stand-in features, hand-made rankings) and its screenshot.

    .venv/bin/python tests/report_screenshot.py                   # sample report -> docs/search_report.png
    .venv/bin/python tests/report_screenshot.py PAGE.html --out x.png

The rankings are made by hand from the cache's clips (no model is trained), so the
sample's title says so; tests/test_report_html.py renders the same sample.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # report_browser, when run as a script

from report_browser import inspect_page  # noqa: E402

from scav.core.cache import FeatureCache  # noqa: E402
from scav.core.files import atomic_path  # noqa: E402
from scav.data_manifests.synthetic import SyntheticConfig, build_synthetic  # noqa: E402
from scav.extract.runner import ExtractConfig, run  # noqa: E402

# 2 classes x 2 sources x 3 clips of 2.4 s; the test split is one source per class (6 clips)
TINY = SyntheticConfig(seed=5, classes=2, sources_per_class=2, val_sources_per_class=0, test_sources_per_class=1,
                       clips_per_source=3, clip_seconds=2.4, events_per_clip=2, frame_size=32)
TITLE = "Sample report: hand-made rankings and k curve (a layout sample, not a model's results)"


@dataclass
class Sample:
    media_root: Path  # the manifest's folder: the clip table's paths are relative to it
    cache: Path
    records: list[dict]
    summary: dict


def _clip_fields(c) -> dict:
    return {"clip_id": c.clip_id, "label": c.label, "source": c.source, "split": c.split, "path": c.path,
            "start": c.start, "end": c.end}


def make_records(clips: list, top: int = 4) -> list[dict]:
    """a2v records for the first three clips: the partner at rank 1, 3, then outside the top ``top``."""
    records = []
    for qi, partner_rank in zip(range(3), (1, 3, None)):
        q = clips[qi]
        others = [c for c in clips if c.clip_id != q.clip_id]
        others = others[qi:] + others[:qi]  # each query gets another order
        ranked = others[: top - 1]
        ranked = ranked[:partner_rank - 1] + [q] + ranked[partner_rank - 1:] if partner_rank else others[:top]
        results = [{"rank": r + 1, "score": round(0.9 - 0.13 * r - 0.01 * qi, 4), "is_partner": c.clip_id == q.clip_id,
                    **_clip_fields(c)} for r, c in enumerate(ranked)]
        records.append({
            "query": {**_clip_fields(q), "media": None, "modality": "audio", "track": 0},
            "direction": "a2v", "method": "hybrid", "k": 4, "results": results,
            "checkpoint": "runs/sample/ckpt-000200.pt", "step": 200,
            "encoders": {"video": "pixels (stand-in)", "audio": "fbank (stand-in)"},
            "stand_in_encoders": True, "seq_distance": "interpolated euclidean",
        })
    return records


def summary_of(records: list[dict]) -> dict:
    """R@K of the hand-made records themselves (a partner outside the list counts as not found)."""
    ranks = [next((r["rank"] for r in rec["results"] if r["is_partner"]), None) for rec in records]
    rk = {f"R@{k}": 100.0 * sum(r is not None and r <= k for r in ranks) / len(ranks) for k in (1, 5, 10)}
    curve = [{"k": k, "R@1": 20 + 10 * i, "R@5": 50 + 8 * i, "R@10": 70 + 5 * i, "seconds": 0.01 * 2 ** i}
             for i, k in enumerate((1, 4, 16, 64))]
    return {"split": "test", "title": TITLE, "R@K": {"a2v": rk}, "k_curve": curve}


def build_sample(folder: Path) -> Sample:
    """Synthetic media + a stand-in feature cache of its test split under ``folder``, and records."""
    manifest = build_synthetic(folder / "syn", TINY)
    cache = folder / "features.zarr"
    run(ExtractConfig(manifest=manifest, out=cache, split="test", progress=False, decode_workers=0))
    records = make_records(FeatureCache.open(cache).clips("test"))
    return Sample(manifest.parent, cache, records, summary_of(records))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", nargs="?", help="a rendered index.html (default: render the sample)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "search_report.png"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        page = args.page
        if page is None:
            from scav.retrieve.report_html import write_report

            s = build_sample(Path(tmp))
            page = write_report(s.records, Path(tmp) / "report", cache_path=s.cache, summary=s.summary,
                                media_root=s.media_root, progress=False)
        with atomic_path(args.out) as shot:
            verdict = inspect_page(page, screenshot=shot)
    print(f"wrote {args.out}; {len(verdict['images'])} images, {len(verdict['audios'])} audio, "
          f"console errors: {verdict['errors'] or 'none'}")
    return 1 if verdict["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
