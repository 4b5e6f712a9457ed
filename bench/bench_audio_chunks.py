"""Peak memory of the audio encoders on long clips: the whole track at once (before issue 22) vs
``encode_chunks`` fed 10 s pieces, as the streaming decoder hands them over.

    .venv/bin/python bench/bench_audio_chunks.py --quick   # fbank 1 / 10 min, BEATs 20 s / 1 min
    .venv/bin/python bench/bench_audio_chunks.py           # fbank 1 / 60 min, BEATs 1 / 5 min

Every case runs in a fresh process with the encoder built, then samples its own RSS every
5 ms while it encodes: ``growth`` is the peak during encoding minus the RSS before it (the
process's import-time peak would hide it otherwise). The whole-track cases hold the clip's samples as one array (that is what
they need); the chunked cases generate each 10 s piece when it is asked for, so the
samples of the clip never exist at once, as with the streaming decoder. BEATs is the
released iter3+ AS2M architecture with random weights (tests/tiny_models.py,
``make_full_beats_ckpt``, ~360 MB), default window (64 steps = 10.24 s); its whole-track
case is run only at the short length (attention over a 5-minute clip's 15,000 tokens
would need ~10 GB a layer). Ratio: growth / the same encoder's short chunked case's growth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, os, sys, threading, time
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[5]))
from scav.extract.encoders import build_audio_encoder
from scav.extract.encoders.fbank import fbank_features
name, weights, seconds, mode = sys.argv[1], sys.argv[2] or None, float(sys.argv[3]), sys.argv[4]
enc = build_audio_encoder(name, weights)
n = int(seconds * 16000)
piece = 160_000  # 10 s, as decode.iter_clip hands audio over
page = os.sysconf("SC_PAGE_SIZE")

def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page

def pieces():
    rng = np.random.default_rng(0)
    for a in range(0, n, piece):
        yield (0.1 * rng.standard_normal(min(piece, n - a))).astype(np.float32)

def whole(x):  # the code before encode_chunks: one call over the whole track
    if name == "fbank":
        fb = fbank_features(x)
        s = fb.shape[0] // 16
        return fb[: 16 * s].reshape(s, 2048).numpy()
    return enc._forward([x])[0]

peak, done = [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)

base = rss()
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
if mode == "whole":
    steps = len(whole(np.concatenate(list(pieces()))))
else:
    steps = sum(len(block) for block in enc.encode_chunks(pieces()))
sec = time.perf_counter() - t0
done.set()
peak[0] = max(peak[0], rss())
print(json.dumps({"steps": steps, "seconds": sec, "peak_mib": peak[0] / 2**20, "growth_mib": (peak[0] - base) / 2**20}))
"""


def run_case(name: str, weights: str, seconds: float, mode: str, threads: int) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, name, weights, str(seconds), mode, str(threads)],
        capture_output=True, text=True, check=False,
    )
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter clips (CI)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per case")
    ap.add_argument("--no-beats", action="store_true", help="fbank only")
    ap.add_argument("--no-fbank", action="store_true", help="BEATs only")
    args = ap.parse_args()
    fb_short, fb_long = (60, 600) if args.quick else (60, 3600)
    bt_short, bt_long = (20, 60) if args.quick else (60, 300)
    cases = [] if args.no_fbank else [("fbank", "", fb_short, "whole"), ("fbank", "", fb_long, "whole"),
                                      ("fbank", "", fb_short, "chunks"), ("fbank", "", fb_long, "chunks")]
    tmp = tempfile.TemporaryDirectory()
    if not args.no_beats:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_models import make_full_beats_ckpt

        ckpt = str(make_full_beats_ckpt(tmp.name))
        cases += [("beats-iter3-as2m", ckpt, bt_short, "whole"), ("beats-iter3-as2m", ckpt, bt_short, "chunks"),
                  ("beats-iter3-as2m", ckpt, bt_long, "chunks")]
    results = [(c, run_case(*c, args.threads)) for c in cases]
    ref = {c[0]: r["growth_mib"] for c, r in results
           if c[3] == "chunks" and "growth_mib" in r and c[2] in (fb_short, bt_short)}
    print(f"{'encoder':18} {'clip':>8} {'mode':7} {'steps':>7} {'peak RSS':>10} {'growth':>10} {'ratio':>6} {'time':>8}")
    for (name, _, seconds, mode), r in results:
        if "error" in r:
            print(f"{name:18} {seconds / 60:7.1f}m {mode:7} error: {r['error']}")
            continue
        ratio = r["growth_mib"] / ref[name] if ref.get(name) else float("nan")
        print(f"{name:18} {seconds / 60:7.1f}m {mode:7} {r['steps']:7d} {r['peak_mib']:6.0f} MiB {r['growth_mib']:6.0f} MiB "
              f"{ratio:6.2f} {r['seconds']:7.1f}s")
    tmp.cleanup()


if __name__ == "__main__":
    main()
