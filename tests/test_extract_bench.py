"""The issue-13 extraction bench runs small on CPU and reports every figure (CI smoke test)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_extract_quick_reports_every_figure(tmp_path):
    out = tmp_path / "extract.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_extract.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "decode only" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2, rows  # --quick: the stand-ins and the tiny models
    for r in rows:
        for key in ("end_to_end_clips_per_s", "reference_clips_per_s", "decode_only_clips_per_s",
                    "encoders_clips_per_s", "encoders_video_frames_per_s", "encoders_audio_clips_per_s",
                    "ratio_e2e_over_min", "ratio_e2e_over_ideal", "decode_prep_clips_per_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["encoders"], key, r[key])


def test_bench_encoders_quick_reports_every_figure():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_encoders.py"), "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout.lower()
    for figure in ("preprocess", "clip", "beats"):
        assert figure in text, figure
    assert "traceback" not in text and "nan" not in text.split()
