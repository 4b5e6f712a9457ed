"""Extraction memory does not grow with resolution or duration (issue 22), measured on real processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_memory import _CHILD, peak_rss, write_file  # noqa: E402

GIB = 2**30


def _peak(path: Path, out: Path, **cfg) -> float:
    child = _CHILD.replace("progress=False", "progress=False, " + ", ".join(f"{k}={v!r}" for k, v in cfg.items())) \
        if cfg else _CHILD
    peak, _, text = peak_rss([sys.executable, "-c", child, str(path), str(out), json.dumps({})], timeout=600)
    assert json.loads(text)["extracted"] == 1, text
    return peak


def test_a_1440p_clip_is_not_held_at_full_resolution(tmp_path):
    """20 frames of 2560x1440, one process (--decode-workers 0), pixels + fbank.

    Before issue 22 the clip was stacked at full resolution and turned into float32
    twice: 2.25 GiB peak measured for 30 frames of 1080p (the same setting); now each
    frame is resized as it is decoded, and the peak is the process's fixed cost: 0.80 and
    1.09 GiB measured for the same code and packages in two virtual environments, whose
    file-backed library pages differed (RssFile 333 vs 588 MB; anonymous memory 400 MB in both)."""
    path = write_file(tmp_path / "big.mkv", 2560, 1440, fps=10, seconds=2)
    assert _peak(path, tmp_path / "f.zarr", decode_workers=0) < 1.5


@pytest.mark.slow
def test_ten_minutes_cost_what_one_minute_costs(tmp_path):
    """720p at 1 fps with 16 kHz audio as one clip, default settings (decode pool): 10 min within 15 %
    of 1 min, and under 3 GiB (issue 22's bound, at a smaller scale than bench/bench_memory.py)."""
    one = _peak(write_file(tmp_path / "one.mkv", 1280, 720, fps=1, seconds=60), tmp_path / "one.zarr")
    ten = _peak(write_file(tmp_path / "ten.mkv", 1280, 720, fps=1, seconds=600), tmp_path / "ten.zarr")
    assert ten < 3.0 and ten <= 1.15 * one, (one, ten)
