"""The extraction runner: manifest rows -> decoded clips -> frozen encoders -> cache parts.

One fixed sequence per clip (skip if committed -> decode -> encode -> record),
with every per-clip error turned into a :class:`~scav.core.schema.Failure` row
committed with the part, so a bad file never stops the run and never prints a
traceback.

Parallelism:

- decoding overlaps inference: a small thread pool decodes the next clips
  (PyAV releases the GIL) while the main thread encodes the current one;
- ``devices`` with more than one entry: one spawned worker process per device;
- ``scheduler``: tasks on an existing dask.distributed cluster.

In every mode the pending clips are dealt into disjoint, deterministic shards
(``pending[k::n]``) and each shard writes its own parts, so every part has
exactly one writer (zarr-python #3682). A part is committed by an atomic
rename, so ``kill -9`` at any moment loses at most the uncommitted clips; the
same command run again extracts only those.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.device import resolve_device
from ..core.cache import CacheWriter, ClipRecord, FeatureCache, new_meta
from ..core.schema import AudioTrack, CacheLayout, CacheMeta, ClipInfo, Failure
from ..data_manifests.manifest import ManifestError, ManifestRow, load_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    """Which frozen encoders to build (picklable: sent to worker processes)."""

    video: str = "pixels"
    audio: str = "fbank"
    video_weights: str | None = None  # CLIP folder (clip-vit-b32)
    audio_weights: str | None = None  # BEATs checkpoint (beats-iter3-as2m)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one extraction needs; validated by :meth:`validate`, never changed."""

    manifest: Path | None  # CSV; or None when ``rows`` is given
    out: Path = Path("features.zarr")
    rows: tuple[ManifestRow, ...] | None = None  # rows instead of a manifest file
    media_root: Path | None = None  # default: the manifest's folder
    encoders: EncoderSpec = field(default_factory=EncoderSpec)
    devices: tuple[str, ...] = ("cpu",)  # one worker per device when more than one
    scheduler: str | None = None  # dask.distributed scheduler address
    shards: int | None = None  # dask only: default 2 x workers
    part_clips: int | None = None  # default: the cache layout's part_clips
    split: str | None = None  # keep only rows of this split
    as_split: str | None = None  # store every kept row under this split name
    retry_failed: bool = False  # re-try clips committed as failures earlier
    decode_threads: int = 2
    prefetch: int = 4  # decoded clips waiting for the encoder
    progress: bool = True

    def validate(self) -> None:
        if self.manifest is None and self.rows is None:
            raise ValueError("give a manifest path or rows")
        if not self.devices:
            raise ValueError("devices must name at least one device ('cpu', 'cuda:0', ...)")
        if self.part_clips is not None and self.part_clips < 1:
            raise ValueError(f"part_clips must be >= 1, got {self.part_clips}")
        if self.decode_threads < 1 or self.prefetch < 1:
            raise ValueError("decode_threads and prefetch must be >= 1")
        if self.shards is not None and self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")


def devices_for_gpus(gpus: int) -> tuple[str, ...]:
    """``--gpus N`` -> device names: N = 0 is one CPU worker."""
    if gpus < 0:
        raise ValueError(f"--gpus must be >= 0, got {gpus}")
    if gpus == 0:
        return ("cpu",)
    import torch

    available = torch.cuda.device_count()
    if available == 0:
        # The documented command (`--gpus 1`) must still run on a laptop or CI box.
        log.warning("--gpus %d: no CUDA device is visible; running one CPU worker instead", gpus)
        return ("cpu",)
    if gpus > available:
        raise ValueError(f"--gpus {gpus}: only {available} CUDA device(s) visible; use --gpus {available}")
    return tuple(f"cuda:{i}" for i in range(gpus))


# -- encoders and decoder (looked up lazily: torch is imported only when used) --

_ENCODERS: dict[tuple, Any] = {}


def build_encoders(spec: EncoderSpec, device: str = "cpu") -> tuple[Any, Any]:
    """(video encoder, audio encoder), built once per process and device."""
    from . import encoders as enc

    key = (spec, device)
    if key not in _ENCODERS:
        _ENCODERS[key] = (
            enc.build_video_encoder(spec.video, weights=spec.video_weights, device=device),
            enc.build_audio_encoder(spec.audio, weights=spec.audio_weights, device=device),
        )
    return _ENCODERS[key]


def cache_meta_for(spec: EncoderSpec, layout: CacheLayout | None = None) -> CacheMeta:
    """The CacheMeta this encoder pair writes (builds the encoders on CPU)."""
    video, audio = build_encoders(spec, "cpu")
    return new_meta(video.info, audio.info, layout)


def _decode(path: str, start: float | None, end: float | None):
    from .decode import decode_clip

    return decode_clip(path, start, end)


# -- one clip ------------------------------------------------------------------


def _stage_of(exc: BaseException, default: str) -> str:
    return str(getattr(exc, "stage", None) or default)


def _reason_of(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else f"{type(exc).__name__}: {exc}"


def _decode_row(row: ManifestRow, media_root: Path):
    """Decoded clip or Failure; runs in a decode thread."""
    path = row.resolve(media_root)
    try:
        if not path.exists():
            return Failure(row.clip_id, "open", f"file not found: {path}", row.path)
        if path.is_file() and path.stat().st_size == 0:
            return Failure(row.clip_id, "open", "file is empty (0 bytes)", row.path)
        clip = _decode(str(path), row.start, row.end)
    except Exception as e:  # any per-clip error becomes a record, never a crash
        log.debug("decode failed for %s", row.clip_id, exc_info=True)
        return Failure(row.clip_id, _stage_of(e, "decode"), _reason_of(e), row.path)
    if len(clip.frames) == 0:
        return Failure(row.clip_id, "decode-video", "no video frames in range", row.path)
    if not clip.audio:
        return Failure(row.clip_id, "decode-audio", "no audio stream", row.path)
    return clip


def encode_clip(row: ManifestRow, clip, video_enc, audio_enc, split: str) -> ClipRecord:
    """Encode one decoded clip into a ClipRecord (raises on encoder errors)."""
    video = np.asarray(video_enc.encode(clip.frames))  # (T, Dv)
    if video.ndim != 2 or len(video) != len(clip.frames):
        raise ValueError(f"video encoder returned shape {video.shape} for {len(clip.frames)} frames")
    tracks, audio = [], []
    for a in clip.audio:
        feats = np.asarray(audio_enc.encode(a.samples))  # (S, Da)
        if feats.ndim != 2:
            raise ValueError(f"audio encoder returned shape {feats.shape}")
        audio.append(feats)
        tracks.append(AudioTrack(index=int(a.index), language=a.language, n_steps=len(feats)))
    if len(audio[0]) == 0:
        raise ValueError(f"audio too short for one step ({len(clip.audio[0].samples)} samples at 16 kHz)")
    info = ClipInfo(
        clip_id=row.clip_id,
        split=split,
        label=row.label,
        source=row.source_id,
        path=row.path,
        start=row.start,
        end=row.end,
        fps=float(clip.fps),
        duration=float(clip.duration),
        n_video=len(video),
        tracks=tracks,
    )
    return ClipRecord(info, video, np.asarray(clip.frame_times, dtype=np.float64), audio)


# -- one shard (one writer) ----------------------------------------------------


@dataclass
class ShardResult:
    extracted: int = 0
    failures: list[Failure] = field(default_factory=list)
    parts: int = 0

    def to_dict(self) -> dict:
        return {"extracted": self.extracted, "failures": [f.to_dict() for f in self.failures], "parts": self.parts}


def extract_shard(
    rows: Sequence[ManifestRow],
    media_root: str | os.PathLike,
    out: str | os.PathLike,
    meta: dict,
    spec: EncoderSpec,
    device: str = "cpu",
    part_clips: int = 256,
    decode_threads: int = 2,
    prefetch: int = 4,
    on_clip: Callable[[], None] | None = None,
) -> dict:
    """Extract ``rows`` into new parts of the existing cache ``out``; the shard's only writer.

    Runs in the main process, a spawned worker or a dask task. The cache must
    already exist (created by :func:`run`); opening it here must not clear
    ``.staging`` as other shards may be writing there.
    """
    if device == "auto":
        device = str(resolve_device("auto"))
    cache_meta = CacheMeta.from_dict(meta)
    writer = CacheWriter(Path(out), cache_meta)
    video_enc, audio_enc = build_encoders(spec, device)
    # fingerprints compare JSON forms (a cache's meta has been through JSON: tuples became lists)
    if new_meta(video_enc.info, audio_enc.info).fingerprint() != cache_meta.fingerprint():
        raise RuntimeError(f"encoders built on {device} differ from the cache's encoders")
    root = Path(media_root)
    result = ShardResult()
    records: list[ClipRecord] = []
    failures: list[Failure] = []

    def commit() -> None:
        if records or failures:
            writer.write_part(records, failures)
            result.parts += 1
            result.extracted += len(records)
            result.failures.extend(failures)
            records.clear()
            failures.clear()

    with cf.ThreadPoolExecutor(decode_threads, thread_name_prefix="scav-decode") as pool:
        queue: deque = deque()
        it = iter(rows)
        # keep the pool busy: decoded clips wait in order while the encoder works
        for row in it:
            queue.append((row, pool.submit(_decode_row, row, root)))
            if len(queue) >= prefetch:
                break
        while queue:
            row, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(_decode_row, nxt, root)))
            decoded = fut.result()
            if isinstance(decoded, Failure):
                failures.append(decoded)
            else:
                try:
                    records.append(encode_clip(row, decoded, video_enc, audio_enc, row.split))
                except Exception as e:
                    log.debug("encode failed for %s", row.clip_id, exc_info=True)
                    failures.append(Failure(row.clip_id, _stage_of(e, "encode"), _reason_of(e), row.path))
            del decoded
            if len(records) + len(failures) >= part_clips:
                commit()
            if on_clip is not None:
                on_clip()
        commit()
    return result.to_dict()


def _shard_in_process(kwargs: dict) -> dict:
    """Entry point of a spawned worker process (module-level: picklable)."""
    logging.basicConfig(level=logging.WARNING)
    return extract_shard(**kwargs)


# -- the whole run -------------------------------------------------------------


def select_rows(cfg: ExtractConfig) -> list[ManifestRow]:
    """Manifest rows after the split filter / override."""
    rows = list(cfg.rows) if cfg.rows is not None else load_manifest(cfg.manifest)
    if cfg.split is not None:
        kept = [r for r in rows if r.split == cfg.split]
        if not kept:
            have = ", ".join(f"{s} ({n})" for s, n in sorted(Counter(r.split for r in rows).items()))
            raise ManifestError(f"no rows of split {cfg.split!r} in the manifest; it has: {have or 'no rows'}")
        rows = kept
    if cfg.as_split is not None:
        rows = [replace(r, split=cfg.as_split) for r in rows]
    return rows


def _committed_ids(out: Path, writer: CacheWriter, retry_failed: bool) -> set[str]:
    if not retry_failed:
        return writer.done_clip_ids()
    return {c.clip_id for c in FeatureCache.open(out).clips()}


def run(cfg: ExtractConfig) -> dict:
    """Extract every pending clip of the manifest into ``cfg.out``; returns a summary dict."""
    cfg.validate()
    t0 = time.perf_counter()
    rows = select_rows(cfg)
    media_root = Path(cfg.media_root) if cfg.media_root is not None else (
        Path(cfg.manifest).resolve().parent if cfg.manifest is not None else Path.cwd()
    )
    layout = CacheLayout(part_clips=cfg.part_clips) if cfg.part_clips else None
    meta = cache_meta_for(cfg.encoders, layout)
    writer = CacheWriter.create_or_open(cfg.out, meta)  # refuses other encoders
    part_clips = cfg.part_clips or writer.meta.layout.part_clips
    done = _committed_ids(Path(cfg.out), writer, cfg.retry_failed)
    pending = [r for r in rows if r.clip_id not in done]
    log.info("%d clips requested, %d already in %s, %d to extract", len(rows), len(rows) - len(pending), cfg.out, len(pending))

    common = dict(
        media_root=str(media_root),
        out=str(cfg.out),
        meta=writer.meta.to_dict(),
        spec=cfg.encoders,
        part_clips=part_clips,
        decode_threads=cfg.decode_threads,
        prefetch=cfg.prefetch,
    )
    results: list[dict] = []
    if pending:
        with _Progress(len(pending), cfg.progress, Path(cfg.out), done) as bar:
            if cfg.scheduler:
                results = _run_dask(cfg, pending, common, bar)
            elif len(cfg.devices) > 1:
                results = _run_processes(cfg, pending, common, bar)
            else:
                results = [extract_shard(pending, device=cfg.devices[0], on_clip=bar.step, **common)]

    failures = [Failure(**f) for r in results for f in r["failures"]]
    seconds = time.perf_counter() - t0
    extracted = sum(r["extracted"] for r in results)
    return {
        "requested": len(rows),
        "already_present": len(rows) - len(pending),
        "extracted": extracted,
        "failed": len(failures),
        "failed_by_stage": dict(sorted(Counter(f.stage for f in failures).items())),
        "failures": [f.to_dict() for f in failures],
        "parts_written": sum(r["parts"] for r in results),
        "seconds": round(seconds, 3),
        "clips_per_s": round((extracted + len(failures)) / seconds, 3) if seconds > 0 else 0.0,
        "encoders": {"video": writer.meta.video.label, "audio": writer.meta.audio.label},
        "cache": FeatureCache.open(cfg.out).summary(),
    }


def _shards(pending: list[ManifestRow], n: int) -> list[list[ManifestRow]]:
    """Deterministic disjoint shares: shard k gets pending[k::n] (empty ones dropped)."""
    return [s for s in (pending[k::n] for k in range(n)) if s]


def _run_processes(cfg: ExtractConfig, pending, common: dict, bar: "_Progress") -> list[dict]:
    import multiprocessing as mp

    shards = _shards(pending, len(cfg.devices))
    ctx = mp.get_context("spawn")  # never fork a process holding CUDA / zarr state
    with cf.ProcessPoolExecutor(len(shards), mp_context=ctx) as pool:
        futs = [
            pool.submit(_shard_in_process, dict(rows=shard, device=dev, **common))
            for shard, dev in zip(shards, cfg.devices)
        ]
        return _wait_polling(futs, bar, cf.wait)


def _run_dask(cfg: ExtractConfig, pending, common: dict, bar: "_Progress") -> list[dict]:
    from distributed import Client

    with Client(cfg.scheduler) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        shards = _shards(pending, cfg.shards or 2 * n_workers)
        futs = [
            client.submit(extract_shard, shard, device="auto", pure=False, key=f"scav-extract-shard-{k}-{time.time_ns()}", **common)
            for k, shard in enumerate(shards)
        ]
        from distributed import wait as dask_wait

        def waiter(fs, timeout):
            try:
                dask_wait(fs, timeout=timeout)
            except TimeoutError:
                pass

        return _wait_polling(futs, bar, waiter)


def _wait_polling(futs: list, bar: "_Progress", waiter) -> list[dict]:
    """Wait for shard futures, moving the progress bar from the committed parts."""
    while not all(f.done() for f in futs):
        waiter(futs, timeout=1.0)
        bar.poll()
    return [f.result() for f in futs]


class _Progress:
    """tqdm bar with clips/s and ETA; polls committed parts when work runs elsewhere."""

    def __init__(self, total: int, enabled: bool, out: Path, done_before: set[str]):
        self.total, self.enabled, self.out = total, enabled, out
        self.base = len(done_before)
        self.bar = None
        self._lock = threading.Lock()

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, unit="clip", desc="extract", dynamic_ncols=True, smoothing=0.1)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def poll(self) -> None:
        if self.bar is None:
            return
        n = len(CacheWriter(self.out, None).done_clip_ids()) - self.base  # type: ignore[arg-type]
        with self._lock:
            self.bar.update(max(0, min(n, self.total) - self.bar.n))
