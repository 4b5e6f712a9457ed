"""Benchmark the training loader against the disk and the one-clip-at-a-time path.

    python bench/bench_loader.py --quick            # seconds: smoke run
    python bench/bench_loader.py                    # 20,000 paper-shaped clips (~23 GB), < 10 min
    python bench/bench_loader.py --layouts          # storage choices: write / get / loader per layout

Paper shapes: a clip is ~250 video steps x 768 + ~62 audio steps x 6144, float16 (~1.1 MB).
Features are random float16 written through ``CacheWriter.write_part``.
Warm figures are measured on a subset that fits in the page cache (``--warm-clips``),
pinned there with mmap + mlock when run as root (see ``PinnedFiles`` for why);
cold figures drop the page cache (``echo 3 > /proc/sys/vm/drop_caches``, needs root)
and compare with ``cat`` of the same files (the disk's own rate).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scav.core.cache import CacheWriter, ClipRecord, FeatureCache, new_meta
from scav.core.loader import iter_eval_batches, make_train_loader
from scav.core.schema import AudioTrack, CacheLayout, ClipInfo, EncoderInfo

DV, DA = 768, 6144


def write_cache(path: Path, n: int, layout: CacheLayout, dv: int, da: int, t_mean: int, s_mean: int,
                sources: int = 20) -> float:
    """Random float16 clips, sources stored contiguously; returns seconds."""
    rng = np.random.default_rng(0)
    pool_v = rng.standard_normal((t_mean * 8, dv), dtype=np.float32).astype(np.float16)
    pool_a = rng.standard_normal((s_mean * 8, da), dtype=np.float32).astype(np.float16)
    meta = new_meta(EncoderInfo("bench-video", dv, stand_in=True), EncoderInfo("bench-audio", da, stand_in=True),
                    layout=layout)
    w = CacheWriter.create_or_open(path, meta)
    t0 = time.perf_counter()
    per_source = -(-n // sources)
    for a in range(0, n, layout.part_clips):
        recs = []
        for i in range(a, min(n, a + layout.part_clips)):
            t = int(rng.integers(t_mean * 0.9, t_mean * 1.1 + 1))
            s = int(rng.integers(s_mean * 0.9, s_mean * 1.1 + 1))
            ov, oa = int(rng.integers(0, len(pool_v) - t)), int(rng.integers(0, len(pool_a) - s))
            info = ClipInfo(f"clip{i:06d}", "train", source=f"src{i // per_source}", n_video=t,
                            tracks=[AudioTrack(0, None, s)])
            recs.append(ClipRecord(info, pool_v[ov : ov + t], np.arange(t) / 25.0, [pool_a[oa : oa + s]]))
        w.write_part(recs)
    os.sync()
    return time.perf_counter() - t0


def feature_bytes(cache: FeatureCache, ids: list[str] | None = None) -> int:
    clips = cache.clips() if ids is None else [cache.info(c) for c in ids]
    dv, da = cache.meta.video.dim, cache.meta.audio.dim
    return sum(2 * (c.n_video * dv + c.n_audio * da) for c in clips)


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def disk_read_bytes() -> int | None:
    """Bytes this process has made the kernel fetch from storage (Linux /proc/self/io)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PinnedFiles:
    """Keep files resident in the page cache: mmap + mlock (needs CAP_IPC_LOCK, i.e. root).

    Why the bench needs it: the VM it was written on runs a DAMON ``pageout`` scheme
    (/sys/kernel/mm/damon/admin/kdamonds/0) that evicts unmapped page cache left idle
    for ~30 s, so a "warm" subset read once was partly back on the disk a pass later
    (0.7-1.4 GB re-read per 6.8 GB pass in one run, none in another). Pinning measures
    the loader, not the host's reclaim policy; the loader still makes its own maps.
    """

    def __init__(self, files: list[str]):
        import ctypes
        import mmap

        self._libc = ctypes.CDLL(None, use_errno=True)
        self._maps, self.pinned_bytes, self.error = [], 0, None
        for f in files:
            size = os.path.getsize(f)
            if size == 0:
                continue
            with open(f, "rb") as fh:
                m = mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ)
            self._maps.append(m)
            view = np.frombuffer(m, dtype=np.uint8)  # read-only buffer: numpy gives its address
            base = view.ctypes.data
            del view  # an exported buffer would keep m from closing
            if self._libc.mlock(ctypes.c_void_p(base), ctypes.c_size_t(size)) != 0:
                self.error = os.strerror(ctypes.get_errno())
                break
            self.pinned_bytes += size

    def close(self) -> None:
        for m in self._maps:
            m.close()  # munmap also unlocks
        self._maps = []


def data_files(path: Path) -> list[str]:
    return sorted(str(p) for p in path.rglob("*") if p.is_file() and "/c/" in str(p))


def time_cat(files: list[str], max_seconds: float | None = None) -> tuple[int, float]:
    """(bytes, seconds) of ``cat`` over the files, in groups, until max_seconds."""
    t0, nbytes = time.perf_counter(), 0
    for i in range(0, len(files), 50):
        group = files[i : i + 50]
        subprocess.run(["cat", *group], stdout=subprocess.DEVNULL, check=True)
        nbytes += sum(os.path.getsize(f) for f in group)
        if max_seconds and time.perf_counter() - t0 > max_seconds:
            break
    return nbytes, time.perf_counter() - t0


def time_page_cache_reads(files: list[str], dest_bytes: int = 64 << 20, piece: int = 768 << 10):
    """GB/s of the machine's own ways to copy page-cache bytes into memory, same files:
    ``pread`` into a batch-sized buffer, and memcpy from read-only maps (mapped beforehand,
    as the loader keeps them). The loader cannot beat the faster one: it is its ceiling."""
    import mmap

    dest = np.zeros(dest_bytes, np.uint8)  # reused, so no page faults on the destination
    mv = memoryview(dest)
    n, pos, t0 = 0, 0, time.perf_counter()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            off, size = 0, os.fstat(fd).st_size
            while off < size:
                k = min(piece, size - off)
                pos = 0 if pos + k > dest_bytes else pos
                k = os.preadv(fd, [mv[pos : pos + k]], off)
                off, pos, n = off + k, pos + k, n + k
        finally:
            os.close(fd)
    pread_rate = n / (time.perf_counter() - t0) / 1e9
    maps = []
    for f in files:
        if os.path.getsize(f):
            with open(f, "rb") as fh:
                maps.append(np.frombuffer(mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ), np.uint8))
    for m in maps:  # map every page first (the loader's steady state after its first epoch)
        m[:: mmap.PAGESIZE].sum()
    n, pos, t0 = 0, 0, time.perf_counter()
    for m in maps:
        for off in range(0, len(m), piece):
            src = m[off : off + piece]
            pos = 0 if pos + len(src) > dest_bytes else pos
            np.copyto(dest[pos : pos + len(src)], src)
            pos, n = pos + len(src), n + len(src)
    return pread_rate, n / (time.perf_counter() - t0) / 1e9


def time_loader(path, ids, batch_size, workers, max_seconds=None, seed=0, epoch=0) -> tuple[int, float]:
    """(clips served, seconds) for one epoch of the training loader (or until max_seconds).

    ``path``: a path, opened before the clock starts (opening parses the clip table: ~0.4 s
    for 20,000 clips), or an open cache, as the training loop passes every epoch: then the
    chunk-file maps the loader made in earlier epochs are reused.
    """
    cache = path if isinstance(path, FeatureCache) else FeatureCache.open(path)
    n, t0 = 0, time.perf_counter()
    loader = make_train_loader(cache, "train", batch_size, seed=seed, epoch=epoch, clip_ids=ids,
                               num_workers=workers)
    for b in loader:
        n += len(b)
        if max_seconds and time.perf_counter() - t0 > max_seconds:
            break
    return n, time.perf_counter() - t0


def time_get(path, ids) -> tuple[int, float]:
    cache = FeatureCache.open(path)
    t0 = time.perf_counter()
    for c in ids:
        f = cache.get(c)
        f.video.sum(), f.audio.sum()  # noqa: B018 - touch the data like a consumer would
    return len(ids), time.perf_counter() - t0


def row(name, n, secs, nbytes=None):
    gbs = f"{nbytes / secs / 1e9:6.2f} GB/s" if nbytes is not None else ""
    print(f"  {name:<48} {n:>7} clips {secs:7.2f} s {n / secs:9.0f} clips/s {gbs}", flush=True)


def bench_layouts(args, root: Path) -> None:
    """Write / get / loader for a few storage layouts on a small warm cache."""
    n = args.layout_clips
    print(f"layouts: {n} clips, shapes ({args.t}, {DV}) + ({args.s}, {DA}) float16, warm page cache")
    layouts = {
        "chunk 16384 rows, no shard (old default)": CacheLayout(16384, None, None),
        "chunk 1024 rows, no shard": CacheLayout(1024, None, None),
        "chunk 256 rows, 1 shard per part": CacheLayout(256, 1 << 20, None),
        "chunk 64 rows, 1 shard per part": CacheLayout(64, 1 << 20, None),
        "chunk 256 rows, 1 shard per part, zstd": CacheLayout(256, 1 << 20, "zstd"),
    }
    for name, layout in layouts.items():
        p = root / f"layout-{abs(hash(name))}.zarr"
        secs = write_cache(p, n, layout, DV, DA, args.t, args.s)
        cache = FeatureCache.open(p)
        nbytes = feature_bytes(cache)
        disk = sum(os.path.getsize(f) for f in data_files(p))
        print(f" {name}: written {nbytes / secs / 1e9:.2f} GB/s, on disk {disk / nbytes:.2f}x the features")
        ids = [c.clip_id for c in cache.clips()]
        time_get(p, ids[:20])  # warm up
        k, s = time_get(p, ids[: args.get_clips])
        row("FeatureCache.get loop", k, s, feature_bytes(cache, ids[:k]))
        k, s = time_loader(p, None, args.batch_size, 0)
        row("train loader, 0 workers", k, s, nbytes * k / len(ids))
        shutil.rmtree(p)


def bench_training_step(path, ids, args) -> None:
    """Steps/s of a small model on CPU: real loader vs batches already in memory."""
    torch.manual_seed(0)
    model, what = _small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(b):
        out = model(b.video, b.video_mask, b.audio, b.audio_mask)
        logits = out["video_emb"] @ out["audio_emb"].T
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(b)))
        opt.zero_grad()
        loss.backward()
        opt.step()

    n_steps = args.train_steps
    # just the clips the passes use, read once right before: this VM pages out page cache
    # idle for ~30 s (a DAMON pageout scheme), so an older warm-up would not hold
    ids = ids[: n_steps * args.train_batch * (args.repeats + 3)]
    list(iter_eval_batches(path, clip_ids=ids, batch_size=64))
    batches = []
    for b in make_train_loader(path, "train", args.train_batch, seed=1, clip_ids=ids):
        batches.append(b.to("cpu"))  # in memory and already float32
        if len(batches) == n_steps:
            break
    step(batches[0])

    def from_memory() -> float:
        t0 = time.perf_counter()
        for b in batches:
            step(b)
        return len(batches) / (time.perf_counter() - t0)

    run_cache = FeatureCache.open(path)  # opened once, as scav-train does: maps are reused

    def from_loader(workers: int, seed: int) -> float:
        it = iter(make_train_loader(run_cache, "train", args.train_batch, seed=seed, clip_ids=ids, num_workers=workers))
        step(next(it).to("cpu"))
        t0, k = time.perf_counter(), 0
        for b in it:
            step(b.to("cpu"))  # as the training loop does: move, then cast to float32
            k += 1
            if k == n_steps:
                break
        it.close()
        return k / (time.perf_counter() - t0)

    # interleaved passes, medians: the two figures share whatever the machine is doing
    threads = torch.get_num_threads()
    for t in sorted({threads, 1}, reverse=True):  # 1 thread: a core left for the reader thread
        torch.set_num_threads(t)
        mem, real = [], []
        r0 = disk_read_bytes()
        for rep in range(args.repeats):
            mem.append(from_memory())
            real.append(from_loader(0, seed=2 + rep))
        m, r = float(np.median(mem)), float(np.median(real))
        disk = f", {(disk_read_bytes() - r0) / 1e9:.2f} GB read from the disk" if r0 is not None else ""
        print(f"  {what}, batch {args.train_batch}, torch threads {t}, {n_steps} steps x {args.repeats} "
              f"interleaved passes (medians): {m:.2f} steps/s from memory, {r:.2f} from the loader "
              f"(0 workers) = {100 * r / m:.0f} %{disk}", flush=True)
    torch.set_num_threads(threads)
    print(f"  from the loader with 1 worker: {from_loader(1, seed=9):.2f} steps/s", flush=True)


def _small_model():
    try:
        from scav.model.network import SCAVModel
        from scav.model.config import ModelConfig, ObjectiveConfig

        cfg = ModelConfig(c=64, video_layers=1, audio_layers=1, heads=2, video_mlp_hidden=128,
                          audio_mlp_hidden=128)
        model = SCAVModel(cfg, DV, DA, ObjectiveConfig(kind="cav"))
        return model, "SCAVModel(c=64, 1+1 layers, cav)"
    except Exception as e:  # the model is another helper's work in progress
        print(f"  (SCAVModel unavailable: {type(e).__name__}: {e}; using a stand-in MLP)")

        class StandIn(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.v = torch.nn.Sequential(torch.nn.Linear(DV, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
                self.a = torch.nn.Sequential(torch.nn.Linear(DA, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))

            def forward(self, video, video_mask, audio, audio_mask):
                def mean(x, m):
                    return (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)

                return {"video_emb": mean(self.v(video), video_mask), "audio_emb": mean(self.a(audio), audio_mask)}

        return StandIn(), "stand-in MLP (768/6144 -> 128 -> 64)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=20000, help="clips in the bench cache")
    ap.add_argument("--warm-clips", type=int, default=6000, help="subset for warm figures (fits in RAM)")
    ap.add_argument("--get-clips", type=int, default=300, help="sample for the FeatureCache.get loop")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cold-seconds", type=float, default=60.0, help="cap on each cold pass (0: skip the cold section)")
    ap.add_argument("--t", type=int, default=250, help="mean video steps")
    ap.add_argument("--s", type=int, default=62, help="mean audio steps")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the bench cache")
    ap.add_argument("--reuse", action="store_true", help="use the cache a --keep run left in --dir")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    ap.add_argument("--layouts", action="store_true", help="compare storage layouts instead")
    ap.add_argument("--layout-clips", type=int, default=1024)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--repeats", type=int, default=3, help="warm loader passes (the median is reported)")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not mmap+mlock the warm subset (see PinnedFiles: page cache may be evicted)")
    args = ap.parse_args(argv)
    if args.quick:
        args.clips, args.warm_clips, args.get_clips, args.t, args.s = 300, 200, 40, 50, 12
        args.layout_clips, args.train_steps, args.train_batch, args.batch_size = 128, 3, 16, 32
        args.repeats = 1
    torch.set_num_threads(args.threads)
    root = Path(args.dir or tempfile.mkdtemp(prefix="scav-bench-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          f"(figures measured under that load), torch threads {args.threads}")
    try:
        if args.layouts:
            bench_layouts(args, root)
            return 0
        path = root / "bench.zarr"
        layout = CacheLayout()
        if args.reuse and path.exists():
            cache = FeatureCache.open(path)
            total, secs = feature_bytes(cache), float("nan")
            print(f"reusing {path} ({len(cache)} clips)")
        else:
            print(f"writing {args.clips} clips ({args.t} x {DV} + {args.s} x {DA} float16), "
                  f"layout {layout.to_dict()}")
            secs = write_cache(path, args.clips, layout, DV, DA, args.t, args.s)
            cache = FeatureCache.open(path)
            total = feature_bytes(cache)
        print(f"  {total / 1e9:.1f} GB, written in {secs:.1f} s ({total / secs / 1e9:.2f} GB/s), "
              f"{len(cache.parts)} parts")
        ids = [c.clip_id for c in cache.clips()]
        warm = ids[: args.warm_clips]
        warm_bytes = feature_bytes(cache, warm)
        # the data files of the parts that hold the warm clips
        warm_files = [f for pi in sorted({cache.locate(c)[0] for c in warm}) for f in data_files(cache.parts[pi].path)]
        pin = None
        if not args.no_pin:
            pin = PinnedFiles(warm_files)
            how = (f"pinned in the page cache: {pin.pinned_bytes / 1e9:.1f} GB, mmap + mlock of its parts' files"
                   if pin.error is None else f"could not pin ({pin.error}): in the page cache after one pass")
        else:
            how = "in the page cache after one pass, not pinned"
        print(f"warm: {len(warm)} clips ({warm_bytes / 1e9:.1f} GB, {how})")
        list(iter_eval_batches(path, clip_ids=warm, batch_size=args.batch_size))  # bring into page cache
        ceilings = []
        for workers in (0, 2):
            # this VM's speed varies from pass to pass and day to day (2x seen): every pass is
            # printed, the median is the figure, and the page-cache ceilings are measured
            # between the passes
            # 0 workers: one open cache for every epoch, as scav-train runs (epoch 1 maps the
            # chunk files, later epochs reuse the maps); workers open their own each epoch
            run_cache = FeatureCache.open(path) if workers == 0 else path
            if workers == 0:
                n, s = time_loader(run_cache, warm, args.batch_size, 0, seed=0, epoch=0)
                row(f"train loader, 0 workers, batch {args.batch_size}, epoch 1", n, s, warm_bytes * n / len(warm))
                first_epoch = n / s
            rates = []
            for rep in range(args.repeats):
                if workers == 0:
                    ceilings.append(time_page_cache_reads(warm_files))
                    print(f"  {'page cache -> memory (same files): pread':<48} {ceilings[-1][0]:6.2f} GB/s, "
                          f"memcpy from maps {ceilings[-1][1]:6.2f} GB/s", flush=True)
                r0 = disk_read_bytes()
                n, s = time_loader(run_cache, warm, args.batch_size, workers, seed=0, epoch=rep + 1)
                rates.append(n / s)
                what = f"epoch {rep + 2}" if workers == 0 else f"pass {rep + 1}"
                row(f"train loader, {workers} workers, batch {args.batch_size}, {what}", n, s,
                    warm_bytes * n / len(warm))
                if workers == 0 and r0 is not None:  # workers' reads are not this process's
                    print(f"    read from the disk during the pass: {(disk_read_bytes() - r0) / 1e9:.2f} GB "
                          f"(page-cache misses)")
            med = float(np.median(rates))
            gbs = med * warm_bytes / len(warm) / 1e9
            later = " of epochs 2+" if workers == 0 else ""
            print(f"  -> median{later} {med:.0f} clips/s ({gbs:.2f} GB/s), range {min(rates):.0f}-{max(rates):.0f}"
                  + (f"; epoch 1 {first_epoch:.0f} clips/s" if workers == 0 else ""), flush=True)
            if workers == 0:
                pr, mc = (float(np.median([c[i] for c in ceilings])) for i in (0, 1))
                print(f"  -> {gbs / mc:.2f}x the memcpy-from-maps ceiling ({mc:.2f} GB/s), "
                      f"{gbs / pr:.2f}x pread ({pr:.2f} GB/s); medians", flush=True)
        n, s = time_get(path, warm[: args.get_clips])
        row("FeatureCache.get one clip at a time", n, s, feature_bytes(cache, warm[:n]))
        n, s = 0, time.perf_counter()
        for b in iter_eval_batches(path, clip_ids=warm, batch_size=args.batch_size):
            n += len(b)
        row("iter_eval_batches (cache order)", n, time.perf_counter() - s, warm_bytes)
        print("training step (CPU, small model, warm subset):")
        bench_training_step(path, warm, args)
        if pin is not None:
            pin.close()
        print(f"cold: all {len(ids)} clips ({total / 1e9:.1f} GB)")
        if args.cold_seconds <= 0:
            print("  skipped (--cold-seconds 0)")
        elif not drop_caches():
            print("  could not drop the page cache (not root?): cold figures skipped")
        else:
            # this disk's rate drifts (0.11-1.3 GB/s seen on one day), so the disk and the
            # loader are timed alternately, each pass from a dropped page cache
            files = data_files(path)
            for rep in range(2):
                drop_caches()
                nbytes, s = time_cat(files, args.cold_seconds / 2)
                print(f"  {'cat of the data files (disk rate)':<48} {nbytes / 1e9:7.1f} GB {s:7.2f} s "
                      f"{nbytes / s / 1e9:6.2f} GB/s", flush=True)
                for workers in (0, 2):
                    drop_caches()
                    n, s = time_loader(path, None, args.batch_size, workers, args.cold_seconds / 2, seed=rep)
                    row(f"train loader, {workers} workers, cold", n, s, total * n / len(ids))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
