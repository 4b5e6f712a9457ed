"""Extraction throughput vs decode-only throughput on the same generated files.

    .venv/bin/python bench/bench_extract.py --quick          # smoke size
    .venv/bin/python bench/bench_extract.py --clips 64 --seconds 10 --size 224

For each encoder pair, the full runner (decode threads + encode + cache write)
is timed against decoding alone with the same number of decode threads, in one
run on the same files. ratio = extraction clips/s / decode-only clips/s: 1.0
means the encoders are fully hidden behind decoding. The tiny CLIP/BEATs rows
use randomly initialised small models (tests/tiny_models.py), so they measure
the code path, not the real models' cost.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_files(folder: Path, n: int, seconds: float, size: int, fps: float = 25.0) -> Path:
    from scav.data_manifests.manifest import ManifestRow, write_manifest
    from scav.data_manifests.media import AudioSpec, write_media

    rng = np.random.default_rng(0)
    rows = []
    h, w = size * 3 // 4 // 2 * 2, size
    for i in range(n):
        t = int(seconds * fps)
        # smooth moving gradients: compress like real video, unlike white noise
        x = np.linspace(0, 1, w)[None, None, :] + np.linspace(0, 1, h)[None, :, None] + np.arange(t)[:, None, None] / t
        frames = (np.stack([np.sin(x * (3 + c + i)) for c in range(3)], -1) * 120 + 128).astype(np.uint8)
        audio = AudioSpec(rng.uniform(-0.3, 0.3, (2, int(seconds * 44100))).astype(np.float32), 44100)
        write_media(folder / "media" / f"v{i}.mp4", frames, fps=fps, audio=[audio])
        rows.append(ManifestRow(f"c{i}", f"media/v{i}.mp4", split="bench"))
    return write_manifest(rows, folder / "bench.csv")


def decode_only(folder: Path, n: int, threads: int) -> tuple[float, int]:
    from scav.extract.decode import decode_clip

    paths = [folder / "media" / f"v{i}.mp4" for i in range(n)]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(threads) as pool:
        frames = sum(len(c.frames) for c in pool.map(lambda p: decode_clip(p), paths))
    return time.perf_counter() - t0, frames


def extract(folder: Path, manifest: Path, spec, threads: int) -> tuple[float, int]:
    from scav.core.cache import FeatureCache
    from scav.extract.runner import ExtractConfig, build_encoders, run

    build_encoders(spec, "cpu")  # model loading is not throughput
    out = folder / "bench.zarr"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run(ExtractConfig(manifest=manifest, out=out, encoders=spec, decode_threads=threads, progress=False))
    seconds = time.perf_counter() - t0
    assert summary["failed"] == 0, summary["failures"]
    return seconds, FeatureCache.open(out).summary()["video_steps"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 clips of 2 s at 64 px")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=224, help="frame width in pixels")
    ap.add_argument("--threads", type=int, default=2, help="decode threads (and torch threads)")
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny CLIP/BEATs rows")
    args = ap.parse_args()
    if args.quick:
        args.clips, args.seconds, args.size = 6, 2.0, 64

    import torch

    from scav.extract.runner import EncoderSpec

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = make_files(folder, args.clips, args.seconds, args.size)
        specs = [("pixels + fbank (stand-ins)", EncoderSpec())]
        if not args.no_tiny:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from tiny_models import make_tiny_beats_ckpt, make_tiny_clip_dir

            specs.append((
                "tiny CLIP + tiny BEATs",
                EncoderSpec("clip-vit-b32", "beats-iter3-as2m", str(make_tiny_clip_dir(folder / "clip")),
                            str(make_tiny_beats_ckpt(folder / "beats"))),
            ))
        decode_only(folder, args.clips, args.threads)  # warm-up: page cache, imports
        print(f"{args.clips} clips x {args.seconds:g} s, {args.size} px wide, 25 fps, stereo 44.1 kHz; "
              f"{args.threads} decode/torch threads")
        print(f"{'encoders':28s} {'clips/s':>9s} {'frames/s':>9s} {'decode-only clips/s':>20s} {'ratio':>6s}")
        for name, spec in specs:
            dec_s, frames = decode_only(folder, args.clips, args.threads)  # re-measured next to each row
            ext_s, steps = extract(folder, manifest, spec, args.threads)
            assert steps == frames, (steps, frames)
            dec_rate, ext_rate = args.clips / dec_s, args.clips / ext_s
            print(f"{name:28s} {ext_rate:9.2f} {steps / ext_s:9.0f} {dec_rate:20.2f} {ext_rate / dec_rate:6.2f}")


if __name__ == "__main__":
    main()
