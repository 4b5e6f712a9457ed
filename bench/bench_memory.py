"""Peak memory of extraction (RSS of the whole process tree) on large and long media, one clip each.

    .venv/bin/python bench/bench_memory.py --quick                  # small scale, stand-ins (about 2 min on 2 cores)
    .venv/bin/python bench/bench_memory.py                          # issue 22's cases, stand-ins
    .venv/bin/python bench/bench_memory.py --models stand-in,full   # + CLIP ViT-B/32 and BEATs (random weights)

Cases (each file is one manifest row, extracted with default settings:
``scav-extract``'s runner, decode pool on all cores): 10 s 1080p30, 10 s
2160p60, 8000x8000 frames, 1 minute and 1 hour of 720p at 1 fps with 16 kHz
audio, 3 hours of audio (two 16 kHz tracks) with a small 1 fps video, and (case 7)
10 minutes of the 720p file, the long case CLIP + BEATs can run in minutes on a CPU. The media
is generated cheaply: flat moving colour (fast to encode, as fast to decode as
real video is not, so the figures are about memory, not speed), libx264
ultrafast or FFV1 for 8000x8000, PCM audio in Matroska.

Peak RSS is sampled every 20 ms over the run's process and all its children
(decode workers): the sum of their RSS at each instant, the largest sum
reported. Ratio: peak / the 1-minute case's peak. ``--quick`` scales every
case down (durations / 6 or less, 4000x4000) for CI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def write_file(path: Path, w: int, h: int, fps: float, seconds: float, tracks: int = 1, audio_rate: int = 16000,
               codec: str = "libx264") -> Path:
    """Flat colour video (changing every frame) + ``tracks`` PCM tracks of a quiet tone, written with PyAV."""
    import av

    n = max(1, int(round(seconds * fps)))
    with av.open(str(path), "w", format="matroska") as c:
        v = c.add_stream(codec, rate=int(fps) if float(fps).is_integer() else fps)
        v.width, v.height = w, h
        v.pix_fmt = "yuv420p"
        if codec == "libx264":
            v.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "35"}
        auds = []
        for _ in range(tracks):
            a = c.add_stream("pcm_s16le", rate=audio_rate)
            a.layout = "mono"
            auds.append(a)
        frame = np.zeros((h, w, 3), np.uint8)
        block = audio_rate  # one second of audio per write
        t = np.arange(block) / audio_rate
        tone = (0.1 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
        a_sec = 0
        for i in range(n):
            frame[:] = ((i * 7) % 256, (i * 3) % 256, 128)
            for p in v.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
            while a_sec < min(seconds, (i + 1) / fps):  # interleave audio with the video
                for a in auds:
                    af = av.AudioFrame.from_ndarray(tone[None], format="s16", layout="mono")
                    af.sample_rate, af.pts = audio_rate, a_sec * audio_rate
                    for p in a.encode(af):
                        c.mux(p)
                a_sec += 1
        for s in (v, *auds):
            for p in s.encode(None):
                c.mux(p)
    return path


def cases(quick: bool) -> list[tuple[str, dict]]:
    if quick:
        return [
            ("1080p30 x 2 s", dict(w=1920, h=1080, fps=30, seconds=2)),
            ("2160p60 x 1 s", dict(w=3840, h=2160, fps=60, seconds=1)),
            ("4000x4000 x 2 frames", dict(w=4000, h=4000, fps=1, seconds=2, codec="ffv1")),
            ("720p 1 fps x 1 min", dict(w=1280, h=720, fps=1, seconds=60)),
            ("720p 1 fps x 10 min", dict(w=1280, h=720, fps=1, seconds=600)),
            ("audio x 30 min, 2 tracks", dict(w=160, h=96, fps=1, seconds=1800, tracks=2)),
        ]
    return [
        ("1080p30 x 10 s", dict(w=1920, h=1080, fps=30, seconds=10)),
        ("2160p60 x 10 s", dict(w=3840, h=2160, fps=60, seconds=10)),
        ("8000x8000 x 4 frames", dict(w=8000, h=8000, fps=1, seconds=4, codec="ffv1")),
        ("720p 1 fps x 1 min", dict(w=1280, h=720, fps=1, seconds=60)),
        ("720p 1 fps x 1 h", dict(w=1280, h=720, fps=1, seconds=3600)),
        ("audio x 3 h, 2 tracks", dict(w=160, h=96, fps=1, seconds=3 * 3600, tracks=2)),
        # the duration step that CLIP + BEATs on CPU can afford (1 h of BEATs is ~350 windows of 10 s)
        ("720p 1 fps x 10 min", dict(w=1280, h=720, fps=1, seconds=600)),
    ]


_CHILD = """
import json, sys
from pathlib import Path
from scav.data_manifests.manifest import ManifestRow
from scav.extract.runner import EncoderSpec, ExtractConfig, run
spec = EncoderSpec(**json.loads(sys.argv[3]))
s = run(ExtractConfig(manifest=None, rows=(ManifestRow("c", Path(sys.argv[1]).name),), media_root=Path(sys.argv[1]).parent,
                      out=Path(sys.argv[2]), encoders=spec, progress=False))
print(json.dumps({k: s[k] for k in ("extracted", "failed", "failures")}))
"""


def peak_rss(cmd: list[str], timeout: float) -> tuple[float, float, str]:
    """(peak GiB of the process tree, seconds, stdout) of running ``cmd``."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = 0
        for p in tree:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        peak = max(peak, total)
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            break
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        out = f"FAILED rc={proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}"
    return peak / 2**30, time.perf_counter() - t0, out.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="stand-in", help="comma-separated: stand-in, full (CLIP + BEATs, random)")
    ap.add_argument("--cases", default=None, help="comma-separated case numbers (1-based) to run")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before it is killed")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()

    from bench_extract import make_full_beats_ckpt, make_full_clip_dir

    chosen = cases(args.quick)
    if args.cases:
        keep = {int(k) for k in args.cases.split(",")}
        chosen = [c for i, c in enumerate(chosen, 1) if i in keep]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        specs = []
        for m in args.models.split(","):
            if m.strip() == "stand-in":
                specs.append(("pixels + fbank", {}))
            elif m.strip() == "full":
                specs.append(("CLIP B/32 + BEATs (random)", dict(
                    video="clip-vit-b32", video_weights=str(make_full_clip_dir(folder)),
                    audio="beats-iter3-as2m", audio_weights=str(make_full_beats_ckpt(folder)))))
        print(f"{'case':28s} {'encoders':28s} {'peak GiB':>9s} {'/ 1 min':>8s} {'seconds':>8s}  result", flush=True)
        for name, kw in chosen:
            t0 = time.perf_counter()
            path = write_file(folder / "media.mkv", **kw)
            made = time.perf_counter() - t0
            for label, spec in specs:
                out = folder / "out.zarr"
                subprocess.run(["rm", "-rf", str(out)], check=True)
                cmd = [sys.executable, "-c", _CHILD, str(path), str(out), json.dumps(spec)]
                peak, secs, text = peak_rss(cmd, args.timeout)
                base = next((r["peak_gib"] for r in rows if r["encoders"] == label and "1 min" in r["case"]), None)
                ratio = 1.0 if "1 min" in name else peak / base if base else float("nan")
                rows.append({"case": name, "encoders": label, "peak_gib": peak, "seconds": secs,
                             "ratio_to_1min": ratio, "result": text, "generated_s": made})
                print(f"{name:28s} {label:28s} {peak:9.2f} {ratio:8.2f} {secs:8.1f}  {text[:80]}", flush=True)
            path.unlink()
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
