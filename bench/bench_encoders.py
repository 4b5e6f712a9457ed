"""Frozen-encoder throughput: CLIP preprocessing, CLIP frames/s, BEATs clips/s — one run, one device.

    .venv/bin/python bench/bench_encoders.py --quick                 # CPU smoke, tiny models, ~1 min
    .venv/bin/python bench/bench_encoders.py --device cpu             # full-size models on the CPU (slow)
    python3 bench/bench_encoders.py --device cuda                     # the GPU figures (issue 13)

Models are random-weight ones of the released architectures (CLIP ViT-B/32
vision tower, BEATs iter3+ AS2M), built like the tests' tiny ones
(tests/tiny_models.py) and loaded through the project's own encoders; --quick
uses the tiny ones (measures the code path, not the models' cost).
Preprocessing always uses the real CLIP recipe (224 short side, 224 crop) on
frames of --size, whatever the model. Printed, with ratios:

* preprocessing frames/s: today's PIL processor (per frame, CPU) vs the tensor
  path on --device;
* CLIP frames/s: today's path (PIL, ``encode`` per clip, batch 64) and the tensor
  path with frames packed across clips at each --frame-batch;
* BEATs clips/s: one clip at a time vs equal-length clips batched (--clip-batch),
  and the largest |difference| between the two (0 means bit-identical).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up (best: the machine may be shared)."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_preprocess(frames: np.ndarray, device: str, repeats: int) -> tuple[float, float]:
    """(PIL frames/s, tensor frames/s) for the CLIP recipe on ``frames`` (T, H, W, 3) uint8."""
    import torch
    from transformers import CLIPImageProcessorPil

    from scav.extract.clip_preprocess import ClipPreprocessSpec, preprocess_frames

    proc = CLIPImageProcessorPil()  # openai/clip-vit-base-patch32's settings
    spec = ClipPreprocessSpec.from_processor(proc)
    chunk = 32 if device == "cpu" else 256  # as ClipVisionEncoder does
    x = torch.from_numpy(frames)

    def pil():
        proc(images=list(frames), input_data_format="channels_last", return_tensors="pt")

    def tensor():  # host uint8 frames -> device pixel_values, transfer included
        for i in range(0, len(x), chunk):
            preprocess_frames(x[i : i + chunk].to(device), spec)

    n = len(frames)
    return n / timed(pil, "cpu", max(1, repeats // 2)), n / timed(tensor, device, repeats)


def bench_clip(clip_dir: Path, clips: list[np.ndarray], device: str, batches: list[int], repeats: int):
    """[(label, frames/s)] for today's path and the packed tensor path at each frame batch."""
    from scav.extract.encoders import build_video_encoder

    n = sum(len(c) for c in clips)
    rows = []
    today = build_video_encoder("clip-vit-b32", clip_dir, device=device, batch_size=64)
    rows.append(("PIL, per clip, batch 64 (today)", n / timed(lambda: [today.encode(c) for c in clips], device, repeats)))
    del today
    for fb in batches:
        enc = build_video_encoder("clip-vit-b32", clip_dir, device=device, preprocess="tensor", frame_batch=fb, pack=True)
        rows.append((f"tensor, packed, frame_batch {fb}", n / timed(lambda: enc.encode_many(clips), device, repeats)))
    # packed vs per clip: float32 rounding on CPU, float16 on CUDA
    alone = [enc.encode(c) for c in clips]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(alone, enc.encode_many(clips)))
    return rows, diff


def bench_beats(ckpt: Path, clips: list[np.ndarray], device: str, clip_batch: int, repeats: int):
    """(clips/s one at a time, clips/s batched, max |batched - alone|)."""
    from scav.extract.encoders import build_audio_encoder

    enc = build_audio_encoder("beats-iter3-as2m", ckpt, device=device, clip_batch=clip_batch)
    n = len(clips)
    alone_s = timed(lambda: [enc.encode(c) for c in clips], device, repeats)
    batched_s = timed(lambda: enc.encode_many(clips), device, repeats)
    alone = [enc.encode(c) for c in clips]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(alone, enc.encode_many(clips)))
    return n / alone_s, n / batched_s, diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--quick", action="store_true", help="tiny models, few frames: a CPU smoke run (~1 min)")
    ap.add_argument("--size", default="640x360", help="frame size WxH (VGGSound-like: 640x360)")
    ap.add_argument("--frames", type=int, default=None, help="frames per clip (default 250 = 10 s at 25 fps)")
    ap.add_argument("--clips", type=int, default=None, help="clips for CLIP and BEATs")
    ap.add_argument("--seconds", type=float, default=10.0, help="BEATs clip length")
    ap.add_argument("--frame-batch", default=None, help="comma-separated CLIP frame batches")
    ap.add_argument("--clip-batch", type=int, default=None, help="BEATs clips per batch (equal lengths)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()

    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    if args.quick:
        frames_per_clip, n_clips, seconds = args.frames or 16, args.clips or 4, min(args.seconds, 2.0)
        batches = [int(b) for b in (args.frame_batch or "16,64").split(",")]
        clip_batch = args.clip_batch or 4
    else:
        frames_per_clip, n_clips, seconds = args.frames or 250, args.clips or (32 if cuda else 4), args.seconds
        batches = [int(b) for b in (args.frame_batch or ("256,1024,2048" if cuda else "64,256")).split(",")]
        clip_batch = args.clip_batch or (32 if cuda else 4)

    rng = np.random.default_rng(0)
    # one clip's worth of frames, shared by all clips: decoding is not what this bench measures
    base = rng.integers(0, 256, (frames_per_clip, h, w, 3), dtype=np.uint8)
    video = [base] * n_clips
    audio = [(0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32) for _ in range(n_clips)]

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import make_full_beats_ckpt, make_full_clip_dir, make_tiny_beats_ckpt, make_tiny_clip_dir

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.quick:
            clip_dir, ckpt, kind = make_tiny_clip_dir(tmp), make_tiny_beats_ckpt(tmp), "tiny random CLIP / BEATs"
        else:
            clip_dir, ckpt, kind = make_full_clip_dir(tmp), make_full_beats_ckpt(tmp), "random-weight ViT-B/32 / BEATs iter3"
        name = torch.cuda.get_device_name(args.device) if cuda else f"CPU, {torch.get_num_threads()} torch threads"
        print(f"device {args.device} ({name}); {kind} (built in {time.perf_counter() - t0:.0f} s); torch {torch.__version__}")
        print(f"video: {n_clips} clips x {frames_per_clip} frames at {w}x{h}; audio: {n_clips} clips x {seconds:g} s")

        n_pre = 64 if args.quick else 256
        pre = rng.integers(0, 256, (n_pre, h, w, 3), dtype=np.uint8)
        pil_fps, ten_fps = bench_preprocess(pre, args.device, args.repeats)
        print(f"\nCLIP preprocessing ({n_pre} frames {w}x{h} -> 224x224)")
        print(f"  PIL processor (today, CPU)   {pil_fps:10.0f} frames/s  {1e3 / pil_fps:7.3f} ms/frame")
        print(f"  tensor on {args.device:<18s} {ten_fps:10.0f} frames/s  {1e3 / ten_fps:7.3f} ms/frame  x{ten_fps / pil_fps:.1f}")

        rows, clip_diff = bench_clip(clip_dir, video, args.device, batches, args.repeats)
        print(f"\nCLIP encode ({n_clips * frames_per_clip} frames; {'float16 autocast' if cuda else 'float32'})")
        for label, fps in rows:
            print(f"  {label:36s} {fps:10.0f} frames/s  x{fps / rows[0][1]:.1f}")
        print(f"  packed vs per clip: max |diff| {clip_diff:.2e}")

        alone, batched, beats_diff = bench_beats(ckpt, audio, args.device, clip_batch, args.repeats)
        print(f"\nBEATs ({n_clips} clips of {seconds:g} s, float32)")
        print(f"  one clip at a time                   {alone:10.2f} clips/s")
        print(f"  equal lengths, batches of {clip_batch:<4d}       {batched:10.2f} clips/s  x{batched / alone:.2f}")
        print(f"  batched vs alone: max |diff| {beats_diff:.2e}")


if __name__ == "__main__":
    main()
