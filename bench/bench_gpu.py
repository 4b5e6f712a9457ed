"""Every figure of issue 14 in one command, each with its same-run ceiling.

    python bench/bench_gpu.py --device cuda          # one H200: <= 6 min
    python bench/bench_gpu.py --quick --device cpu   # CI smoke run (tiny sizes)

Runs, one subprocess each (so one failing or timing out does not stop the rest):
  bench/bench_train.py      steps/s fp32 / bf16 on device, from the cache, max batch (Table I)
  bench/bench_losses.py     loss forward+backward: soft-DTW / Wasserstein at B=32, 256;
                            CAV and interpolated Euclidean at B=1024
  bench/bench_retrieval.py  seq / hybrid / agg retrieval 1k x 10k (and 10k x 100k on CUDA)
and prints a summary: figure, value, ceiling or target. Ceilings are measured in the same
run (the device's matmul rate, by bench_train and bench_retrieval); targets are issue 14's.
A figure a sub-bench did not produce is printed as "not measured" with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABLE_I = ("cav", "eucl_pre_v2a", "eucl_pre_a2v", "eucl_post_v2a", "eucl_post_a2v", "soft_dtw", "wasserstein")
PAPER_MAX = dict(zip(TABLE_I, (192, 256, 64, 96, 64, 64, 64)))  # Table I, V100-32GB
FIGURES = (
    "train fp32 steps/s",
    "train bf16 steps/s",
    "train bf16/fp32",
    "train from cache / on device",
    *(f"max batch {c}" for c in TABLE_I),
    "loss soft_dtw B=256",
    "loss wasserstein B=256",
    "loss eucl_post_a2v B=1024",
    "retrieval seq 1k x 10k",
    "retrieval hybrid k=100",
    "retrieval seq 10k x 100k",
)


def run_child(name: str, cmd: list[str], timeout_s: float) -> tuple[str, str]:
    """-> (stdout, status). The child's output is printed by the caller after it ends."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(f"## {name}: time limit {timeout_s:.0f} s", flush=True)
        return out, f"time limit {timeout_s:.0f} s"
    status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode}): " + \
        ((proc.stderr.strip().splitlines() or ["?"])[-1][:120])
    print(f"## {name}: {status} in {time.perf_counter() - t0:.0f} s", flush=True)
    return proc.stdout, status


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda | cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (CI, CPU)")
    ap.add_argument("--budget-gb", type=float, default=32.0, help="max-batch budget (Table I: a 32 GB V100)")
    ap.add_argument("--json", default=None, help="write the summary here")
    args = ap.parse_args(argv)
    py, cuda, quick = sys.executable, args.device.startswith("cuda"), args.quick
    dev = ["--device", args.device]
    rows: dict[str, tuple[str, str]] = {}  # figure -> (value, ceiling / target)
    env_note = []

    with tempfile.TemporaryDirectory() as tmp:
        # -- training -------------------------------------------------------------------
        tj = Path(tmp) / "train.json"
        cmd = [py, str(HERE / "bench_train.py"), *dev, "--json", str(tj)]
        cmd += ["--quick"] if quick else ["--budget-gb", str(args.budget_gb), "--time-budget-s", "100"]
        out, status = run_child("bench_train", cmd, 240 if quick else 150)
        print(out, end="")
        if tj.exists():  # rewritten after each figure: partial when the child hit its time limit
            t = json.loads(tj.read_text())
            mm = t["matmul_tflops"]
            for p, r in t.get("on_device", {}).items():
                rows[f"train {p} steps/s"] = (
                    f"{r['steps_per_s']:.2f} ({r['tflops']:.2f} TFLOP/s)",
                    f"{100 * r['tflops'] / mm[p]:.1f}% of {p} matmul {mm[p]:.1f} TFLOP/s; target bf16 >= 50")
            if "bf16_speedup" in t:
                rows["train bf16/fp32"] = (f"{t['bf16_speedup']:.2f}x", "target >= 2x")
            if t.get("from_cache"):
                fc = "; ".join(f"B={b}: {100 * r['ratio']:.0f}%" for b, r in t["from_cache"].items())
                rows["train from cache / on device"] = (fc, "target >= 90%")
            for c in TABLE_I:
                rows[f"max batch {c}"] = ("skipped" + (" (--quick)" if quick else f" ({status})"), f"paper {PAPER_MAX[c]}")
            for r in t.get("max_batch", []):
                rows[f"max batch {r['config']}"] = (str(r["max_batch"]),
                                                    f"paper {r['paper']}, target {4 * r['paper']}; {r['how']}")
        else:
            env_note.append(f"bench_train: {status}")

        # -- losses -------------------------------------------------------------------------
        lb = [py, str(HERE / "bench_losses.py"), *dev]
        if quick:
            runs = [("bench_losses", 60, lb + ["--quick"], {"soft_dtw": 8, "wasserstein": 8, "eucl_post_a2v": 8})]
        else:
            runs = [
                ("bench_losses soft-DTW/OT", 60, lb + ["--batch-sizes", "32,256", "--configs", "soft_dtw,wasserstein",
                                                   "--timeout-s", "25", "--repeats", "2"], {"soft_dtw": 256, "wasserstein": 256}),
                ("bench_losses Euclidean", 40, lb + ["--batch-sizes", "1024", "--configs", "cav,eucl_pre_v2a,eucl_post_a2v",
                                                 "--timeout-s", "25"], {"eucl_post_a2v": 1024}),
            ]
        for name, limit, cmd, wanted in runs:
            out, status = run_child(name, cmd, limit)
            print(out, end="")
            for cfg, b in wanted.items():
                m = re.search(rf"^{cfg}\s+B={b}\s+([\d.]+) ms", out, re.M)
                other = re.search(rf"^{cfg}\s+B={b}\s+(.+)$", out, re.M)  # e.g. "time limit 25 s"
                why = other.group(1).strip() if other and not m else status
                target = "target <= 500 ms" if cfg in ("soft_dtw", "wasserstein") else "was 43 ms (2026-11-29)"
                label = f"loss {cfg} B={256 if cfg != 'eucl_post_a2v' else 1024}"
                rows[label] = (f"{float(m.group(1)):.1f} ms" + ("" if b in (256, 1024) else f" (B={b})") if m else
                               f"not measured ({why})", target)

        # -- retrieval ------------------------------------------------------------------------
        rb = [py, str(HERE / "bench_retrieval.py"), *dev]
        sizes = [("1k x 10k", ["--quick"] if quick else [])]
        if cuda and not quick:
            sizes.append(("10k x 100k", ["--queries", "10000", "--candidates", "100000", "--naive-pairs", "200", "--ks", "100"]))
        for label, extra in sizes:
            rj = Path(tmp) / f"retrieval-{len(extra)}.json"
            out, status = run_child(f"bench_retrieval {label}", rb + extra + ["--json", str(rj)], 60 if quick else 45)
            print(out, end="")
            if not rj.exists():
                rows[f"retrieval seq {label}"] = (f"not measured ({status})", "")
                continue
            r = json.loads(rj.read_text())
            size = f"{r['queries']} x {r['candidates']}" if quick else label
            seq = r["methods"]["seq"]["seconds"]
            rows[f"retrieval seq {label}"] = (
                f"{seq:.3f} s ({size})", f"{100 * r['seq_gflops'] / r['matmul_gflops']:.0f}% of fp32 matmul "
                f"{r['matmul_gflops'] / 1e3:.1f} TFLOP/s; target " + ("<= 0.03 s" if label == "1k x 10k" else "<= 3 s"))
            if "hybrid k=100" in r["methods"] and label == "1k x 10k":
                rows["retrieval hybrid k=100"] = (f"{r['methods']['hybrid k=100']['seconds']:.3f} s",
                                                  "target <= 0.02 s (paper V100 0.5 s)")
        if "retrieval seq 10k x 100k" not in rows:
            rows["retrieval seq 10k x 100k"] = ("not measured (CUDA full run only)", "target <= 3 s")

    print(f"\n# summary ({args.device}{', quick sizes' if quick else ''})")
    for name in FIGURES:
        value, ceiling = rows.get(name, ("not measured", ""))
        print(f"{name:<32} {value:<34} {ceiling}")
    for note in env_note:
        print(f"# {note}")
    if args.json:
        Path(args.json).write_text(json.dumps({k: {"value": v, "ceiling": c} for k, (v, c) in rows.items()}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    sys.exit(main())
