"""How loud scav-dub's tracks are next to the original, measured from outside (issue 24).

Builds a synthetic dubbed set (the dubs demo's generator config, original ``eng`` + ``spa``),
runs ``scav-dub`` with its default weight-free stages (known stems and script, dictionary,
espeak-ng, librosa, pitch, loudness/EQ matcher) for ``fra`` and ``deu``, then reads every
audio stream of every written file back with PyAV (not scav's decoder: its own resampler to
mono float at the stream's own rate) and measures its integrated loudness with pyloudnorm
(ITU-R BS.1770, gated). Prints each new track's difference to the original track of its file.

    .venv/bin/python bench/bench_dub_loudness.py [--quick] [--files N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def stream_loudness(path: Path) -> list[tuple[str | None, bool, float]]:
    """(language, dub flag, LUFS) of every audio stream of ``path``, decoded with PyAV."""
    import av
    import pyloudnorm
    from av.stream import Disposition

    out = []
    with av.open(str(path)) as c:
        n = len(c.streams.audio)
    for k in range(n):
        with av.open(str(path)) as c:
            s = c.streams.audio[k]
            rate = s.codec_context.sample_rate
            res = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = []
            for frame in c.decode(s):
                for f in res.resample(frame):
                    chunks.append(f.to_ndarray().reshape(-1))
            for f in res.resample(None):
                chunks.append(f.to_ndarray().reshape(-1))
            x = np.concatenate(chunks).astype(np.float64)
            lufs = float(pyloudnorm.Meter(rate).integrated_loudness(x))
            out.append((s.metadata.get("language"), bool(s.disposition & Disposition.dub), lufs))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 media files (a test-sized check)")
    p.add_argument("--files", type=int, default=6, help="media files to dub (default 6)")
    p.add_argument("--keep", type=Path, default=None, help="work here instead of a temporary folder")
    a = p.parse_args(argv)
    from scav.data_manifests.synthetic import build_synthetic
    from scav.demo.dubs import DubsDemoConfig, synthetic_config
    from scav.dub.config import DubConfig
    from scav.dub.pipeline import run

    files = 2 if a.quick else a.files
    with tempfile.TemporaryDirectory(prefix="scav-dub-loudness-") as tmp:
        root = a.keep or Path(tmp)
        syn = dataclasses.replace(synthetic_config(DubsDemoConfig()), dub_languages=("eng", "spa"))
        build_synthetic(root / "syn", syn)
        t0 = time.perf_counter()
        summary = run(DubConfig(manifest=root / "syn" / "manifest.csv", out=root / "dub", targets=("fra", "deu"),
                                limit=files, progress=False))
        seconds = time.perf_counter() - t0
        rows = []
        for q in {q["output"] for q in summary["quality"]}:
            tracks = stream_loudness(root / "dub" / q)
            original = next(lufs for lang, dub, lufs in tracks if not dub and lang == "eng")
            for lang, dub, lufs in tracks:
                if dub and lang in summary["targets"]:  # not the build's own spa dub
                    rows.append({"file": q, "language": lang, "original_lufs": round(original, 3),
                                 "dub_lufs": round(lufs, 3), "difference_lu": round(lufs - original, 3)})
        diffs = [r["difference_lu"] for r in rows]
        own = [q["checks"]["loudness"]["value"] for q in summary["quality"]]
        for r in sorted(rows, key=lambda r: (r["file"], r["language"])):
            print(f"{r['file']:32s} {r['language']}  original {r['original_lufs']:7.2f} LUFS  dub "
                  f"{r['dub_lufs']:7.2f} LUFS  diff {r['difference_lu']:+.2f} LU")
        result = {"tracks": len(rows), "files": len({r["file"] for r in rows}), "min_diff_lu": min(diffs), "max_diff_lu": max(diffs),
                  "max_abs_diff_lu": max(abs(d) for d in diffs), "scav_check_max_lu": max(own),
                  "failed": summary["failed"], "dub_seconds": round(seconds, 1)}
        print(json.dumps(result))
        return 0 if result["max_abs_diff_lu"] <= 0.5 and not math.isnan(result["max_abs_diff_lu"]) else 1


if __name__ == "__main__":
    sys.exit(main())
