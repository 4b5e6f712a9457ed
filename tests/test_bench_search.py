"""The issue-15 search bench runs small on CPU and reports every figure (CI smoke test)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_search_quick_reports_every_figure(tmp_path):
    out = tmp_path / "search.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_search.py"), "--quick", "--json", str(out),
                           "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())  # removed without --keep
    got = json.loads(out.read_text())
    exact = got["exact"]
    for key in ("faiss_flat_seconds", "torch_seconds", "ratio_faiss_over_torch"):
        assert math.isfinite(exact[key]) and exact[key] > 0, key
    # exact means exact up to float32 rounding: each list's float64 scores are the float64 top k
    for path in ("faiss", "torch"):
        assert exact["vs_float64"][path]["max_score_gap"] <= 1e-5, path
    for kind in ("ivf", "hnsw"):
        ann = got["ann"][kind]
        assert ann["build_seconds"] > 0 and ann["rows"]
        assert all(0.0 <= r["recall@100"] <= 1.0 and r["seconds"] > 0 for r in ann["rows"])
    assert len(got["hybrid"]) == 2 and all(r["seconds"] > 0 for r in got["hybrid"].values())
    assert got["peak_rss_gib"] > 0
    for goal in ("goal exact", "goal <= 15 s", "recall@100", "peak RSS"):
        assert goal in proc.stdout, goal


def test_bench_index_check_quick(tmp_path):
    """Issue 23: the saved index's integrity check timed next to one search (small, CI smoke run)."""
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_search.py"), "--quick", "--index-check",
                           "--json", str(out), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())["index_check"]
    assert got["rows"] == 4000 and got["bytes_checked_gb"] > 0
    for key in ("seal_seconds", "first_open_seconds", "later_open_seconds", "later_check_seconds",
                "one_query_agg_torch_seconds", "one_query_agg_faiss_seconds"):
        assert math.isfinite(got[key]) and got[key] > 0, key
    assert not any((tmp_path / "work").iterdir())
