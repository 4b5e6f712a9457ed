"""What the per-chunk crc32c checksums cost: loader and extraction, with vs without, in one run.

    .venv/bin/python bench/bench_checksum.py            # ~5 min on the 2-core VM
    .venv/bin/python bench/bench_checksum.py --quick    # a minute: smoke run

Three variants, measured in alternation (repeat r runs every variant once, so a busy
machine slows all of them alike); each figure is the median over ``--repeats`` (best in
brackets), in clips/s:

- ``no crc``: caches written with ``CacheLayout(checksums=False)``;
- ``crc32c``: checksums as shipped (the ``crc32c`` library; the loader checks chunks in its
  batch thread, plus the verify-ahead thread where ``loader.VERIFY_AHEAD_MIN_CPUS`` CPUs are usable);
- ``crc32c + ahead``: the same, with the verify-ahead thread forced on (a second thread
  checks a freshly opened cache's chunks ahead of the reads; loader only);
- ``crc, before``: checksums as first landed, re-created here by patching: ``google_crc32c``
  (Zarr's library), every check inline in the thread that copies, Zarr's own codec on writes.

Loader: caches of the same paper-shaped clips (video (T, 512), audio (S, 6144) float16,
default layout, parts of 64), written once per variant. Each repeat opens each cache
afresh and reads three epochs with ``make_train_loader`` (batch 32, no training step):
epoch 1 maps and verifies every chunk (crc over every byte; the files are in the page
cache), epochs 2-3 are the warm steady state. Besides clips/s, the CPU seconds of the
process per 1000 clips (all threads) show the work the checksums add, which a spare core
hides from the wall clock but a busy one does not. Write path: ``CacheWriter.write_part``
of the same clips into a new cache per repeat. Extraction: the full runner (decode +
stand-in encoders + cache write, parts of 8) on the same generated media into an empty
cache of each kind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("no crc", "crc32c", "crc32c + ahead", "crc, before")
WRITE_VARIANTS = ("no crc", "crc32c", "crc, before")  # "crc32c + ahead" writes as "crc32c" does


def _records(n: int, dv: int, da: int, seed: int = 0):
    from scav.core.cache import ClipRecord
    from scav.core.schema import AudioTrack, ClipInfo

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t, s = int(rng.integers(80, 120)), int(rng.integers(50, 70))  # ~4 s at 25 fps / 6.25 steps/s
        info = ClipInfo(f"c{i:05d}", "train", source=f"s{i // 8}", n_video=t, tracks=[AudioTrack(0, None, s)])
        out.append(ClipRecord(info, rng.standard_normal((t, dv)).astype(np.float16), np.arange(t) / 25.0,
                              [rng.standard_normal((s, da)).astype(np.float16)]))
    return out


@contextlib.contextmanager
def variant(name: str):
    """The code paths of one variant (``crc, before``: the first landed ones, by patching)."""
    from scav.core import cache, checksum, clip_reader

    if name == "crc32c + ahead":
        from scav.core import loader

        saved_min = loader.VERIFY_AHEAD_MIN_CPUS
        loader.VERIFY_AHEAD_MIN_CPUS = 1
        try:
            yield
        finally:
            loader.VERIFY_AHEAD_MIN_CPUS = saved_min
        return
    if name != "crc, before":
        yield
        return
    import google_crc32c
    from zarr.codecs import Crc32cCodec

    saved = checksum._crc32c, cache.FastCrc32cCodec, clip_reader.ClipReader.needs_verifying
    checksum._crc32c, cache.FastCrc32cCodec = google_crc32c.value, Crc32cCodec
    clip_reader.ClipReader.needs_verifying = lambda self, locs, tracks: False  # checks inline only
    try:
        yield
    finally:
        checksum._crc32c, cache.FastCrc32cCodec, clip_reader.ClipReader.needs_verifying = saved


def _meta(checksums: bool, dv: int, da: int, part_clips: int):
    from scav.core.cache import new_meta
    from scav.core.schema import CacheLayout, EncoderInfo

    return new_meta(EncoderInfo("bench-video", dv), EncoderInfo("bench-audio", da),
                    layout=CacheLayout(part_clips=part_clips, checksums=checksums))


def write_cache(path: Path, records, checksums: bool, part_clips: int) -> float:
    """Seconds to write ``records`` as parts (the write path; the checksums are computed here)."""
    from scav.core.cache import CacheWriter

    meta = _meta(checksums, records[0].video.shape[1], records[0].audio[0].shape[1], part_clips)
    t0 = time.perf_counter()
    with CacheWriter.create_or_open(path, meta) as w:
        for a in range(0, len(records), part_clips):
            w.write_part(records[a : a + part_clips])
    return time.perf_counter() - t0


def read_epochs(path: Path, epochs: int, batch: int) -> list[tuple[float, float]]:
    """(clips/s, CPU ms per clip) of each epoch on one freshly opened cache."""
    from scav.core.cache import FeatureCache
    from scav.core.loader import make_train_loader

    cache = FeatureCache.open(path)
    out = []
    for e in range(epochs):
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        for b in make_train_loader(cache, "train", batch, seed=0, epoch=e):
            n += len(b)
        out.append((n / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / n))  # ms per clip
    return out


def _summary(values: list[float]) -> tuple[float, float]:
    return float(np.median(values)), float(max(values))


def bench_loader(tmp: Path, clips: int, repeats: int) -> dict:
    records = _records(clips, 512, 6144)
    paths = {v: tmp / f"loader-{i}.zarr" for i, v in enumerate(VARIANTS)}
    paths["crc32c + ahead"] = paths["crc32c"]  # the same cache, read with the verify-ahead thread
    write = {v: [] for v in WRITE_VARIANTS}
    for r in range(repeats):
        for v in WRITE_VARIANTS:
            # the first repeat's caches are the ones read below
            p = paths[v] if r == 0 else tmp / f"write-{r}.zarr"
            with variant(v):
                write[v].append(clips / write_cache(p, records, v != "no crc", 64))
            if r:
                shutil.rmtree(p)
    del records
    read_epochs(paths["no crc"], 1, 32)  # untimed: imports, thread start, the buffer pool's first pages
    first, warm, first_cpu, warm_cpu = ({v: [] for v in VARIANTS} for _ in range(4))
    for _ in range(repeats):
        for v in VARIANTS:
            with variant(v):
                r = read_epochs(paths[v], 3, 32)
            first[v].append(r[0][0])
            first_cpu[v].append(r[0][1])
            warm[v].append(float(np.median([x[0] for x in r[1:]])))
            warm_cpu[v].append(float(np.median([x[1] for x in r[1:]])))
    return {"write": write, "first": first, "warm": warm, "first_cpu": first_cpu, "warm_cpu": warm_cpu}


def bench_extract(tmp: Path, n: int, repeats: int) -> dict:
    from bench_extract import make_files

    from scav.core.cache import CacheWriter
    from scav.extract.runner import EncoderSpec, ExtractConfig, cache_meta_for, run

    manifest = make_files(tmp / "media", n, 2.0, 128)  # 2 s clips, 128 px wide
    spec = EncoderSpec()
    rates = {v: [] for v in WRITE_VARIANTS}
    for _ in range(repeats):
        for v in WRITE_VARIANTS:
            out = tmp / "extract.zarr"
            shutil.rmtree(out, ignore_errors=True)
            meta = cache_meta_for(spec)
            # an empty cache of the wanted kind: the run keeps the layout a cache was created with
            CacheWriter.create_or_open(out, replace(meta, layout=replace(meta.layout, checksums=v != "no crc"))
                                       ).close()
            with variant(v):
                s = run(ExtractConfig(manifest=manifest, out=out, encoders=spec, progress=False, part_clips=8))
            rates[v].append(s["extracted"] / s["seconds"])
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clips", type=int, default=512, help="clips of the loader caches")
    ap.add_argument("--media", type=int, default=48, help="generated media files for the extraction runs")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.quick:
        args.clips, args.media, args.repeats = 64, 8, 2
    from scav.core.checksum import LIBRARY

    tmp = Path(tempfile.mkdtemp(prefix="scav-bench-crc-"))
    try:
        lo = bench_loader(tmp, args.clips, args.repeats)
        ex = bench_extract(tmp, args.media, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def row(name, d, unit="clips/s", higher=True):
        base = _summary(d["no crc"])[0]
        cells = []
        for v in VARIANTS:
            if v not in d:
                cells.append(f"{'-':>25}")
                continue
            med, best = _summary(d[v]) if higher else (float(np.median(d[v])), float(min(d[v])))
            cost = "" if v == "no crc" else f" {100 * ((1 - med / base) if higher else (med / base - 1)):+5.1f}%"
            digits = 1 if higher else 3
            cells.append(f"{med:8.{digits}f} ({best:7.{digits}f}){cost:8}")
        print(f"{name:<38} {' '.join(cells)}   {unit}")

    print(f"\ncrc32c cost: {args.clips} paper-shaped clips (loader, write path), {args.media} generated media "
          f"(extraction); median (best) of {args.repeats} alternating repeats; crc library: {LIBRARY}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'':<38} " + " ".join(f"{v:>18}       " for v in VARIANTS))
    row("loader, first epoch (verifies chunks)", lo["first"])
    row("loader, warm epochs (median of 2-3)", lo["warm"])
    row("loader, first epoch CPU per clip", lo["first_cpu"], "CPU ms (all threads)", higher=False)
    row("loader, warm epoch CPU per clip", lo["warm_cpu"], "CPU ms (all threads)", higher=False)
    row("cache write path (write_part)", lo["write"])
    row("extraction, full runner", ex)
    print("(cost = change of the median against no crc: less throughput, or more CPU)")


if __name__ == "__main__":
    main()
