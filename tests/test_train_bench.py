"""The issue-14 GPU bench runs small on CPU and prints every figure (CI smoke test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_quick_on_cpu_prints_every_figure(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from bench_gpu import FIGURES
    finally:
        sys.path.remove(str(ROOT / "bench"))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--quick", "--device", "cpu",
                           "--json", str(tmp_path / "s.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = proc.stdout.split("# summary", 1)[1]
    lines = {ln[:32].strip(): ln[32:] for ln in summary.splitlines()[1:] if ln.strip()}
    for name in FIGURES:
        assert name in lines, name
    for name in ("train fp32 steps/s", "train bf16 steps/s", "train from cache / on device", "max batch cav",
                 "loss soft_dtw B=256", "retrieval seq 1k x 10k"):
        assert "not measured" not in lines[name], (name, lines[name])
    assert "failed" not in proc.stdout and "Traceback" not in proc.stdout
