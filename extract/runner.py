"""The extraction runner: manifest rows -> decoded clips -> frozen encoders -> cache parts.

One fixed sequence per clip (skip if committed -> decode -> encode -> record),
with every per-clip error turned into a :class:`~scav.core.schema.Failure` row
committed with the part, so a bad file never stops the run and never prints a
traceback.

Parallelism:

- decoding runs ahead of the encoders in a pool of decode processes
  (``decode_workers``, default the cores minus one per GPU; ``decode_pool.py``):
  frames come through shared memory, at most ``decode_workers + prefetch``
  clips are decoding or waiting (the memory bound), and results arrive in
  manifest order. ``decode_workers=0`` decodes in threads of the encoding
  process instead: the reference path, and what dask tasks do;
- the encoders see several clips at once: consecutive decoded clips are
  grouped up to ``frame_batch`` frames (never waiting for more than is already
  decoded) and given to ``encode_many`` where an encoder has it;
- ``devices`` with more than one entry: one spawned encoder process per device,
  all fed by the one decode pool;
- ``scheduler``: tasks on an existing dask.distributed cluster.

In every mode the pending clips are dealt into disjoint, deterministic shards
(``pending[k::n]``) and each shard writes its own parts, so every part has
exactly one writer (zarr-python #3682). The run itself holds the cache lock
(``core/writer_lock.py``): a second run on the same cache is refused with a
message naming the holder, and each shard stages its parts in its own locked
folder that no other writer deletes. A part is committed by an atomic
rename, so ``kill -9`` at any moment loses at most the uncommitted clips; the
same command run again extracts only those.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
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

from ..core.cache import CacheWriter, ClipRecord, FeatureCache, new_meta
from ..core.device import resolve_device
from ..core.schema import AudioTrack, CacheLayout, CacheMeta, ClipInfo, Failure
from ..data_manifests.manifest import ManifestError, ManifestRow, load_manifest
from .encoders import encode_each_alone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    """Which frozen encoders to build (picklable: sent to worker processes)."""

    video: str = "pixels"
    audio: str = "fbank"
    video_weights: str | None = None  # CLIP folder (clip-vit-b32)
    audio_weights: str | None = None  # BEATs checkpoint (beats-iter3-as2m)
    video_preprocess: str | None = None  # CLIP: "pil" | "tensor" (on the device); None: the encoder's default
    frame_batch: int = 1024  # CLIP frames per batch in encode_many (set from ExtractConfig.frame_batch)


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
    decode_threads: int = 2  # decode threads per encoder when decode_workers == 0
    decode_workers: int | None = None  # decode processes; None: cores minus one per GPU; 0: threads in-process
    prefetch: int = 4  # decoded clips waiting for the encoder beyond those decoding
    frame_batch: int = 1024  # frames per encoder call, gathered across clips (encode_many)
    progress: bool = True
    lock_timeout: float = 0.0  # seconds to wait while another run writes the cache (0: refuse at once)

    def validate(self) -> None:
        if self.manifest is None and self.rows is None:
            raise ValueError("give a manifest path or rows")
        if not self.devices:
            raise ValueError("devices must name at least one device ('cpu', 'cuda:0', ...)")
        if self.part_clips is not None and self.part_clips < 1:
            raise ValueError(f"part_clips must be >= 1, got {self.part_clips}")
        if self.decode_threads < 1 or self.prefetch < 1:
            raise ValueError("decode_threads and prefetch must be >= 1")
        if self.decode_workers is not None and self.decode_workers < 0:
            raise ValueError(f"decode_workers must be >= 0 (0: decode in threads), got {self.decode_workers}")
        if self.frame_batch < 1:
            raise ValueError(f"frame_batch must be >= 1, got {self.frame_batch}")
        if self.lock_timeout < 0:
            raise ValueError(f"lock_timeout (--wait) must be >= 0 seconds, got {self.lock_timeout}")

    def n_decode_workers(self) -> int:
        """Decode processes this run starts (0: decode in threads of each encoder)."""
        if self.decode_workers is not None:
            return self.decode_workers
        from .decode_pool import default_decode_workers

        return default_decode_workers(sum(d.startswith("cuda") for d in self.devices))
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
        import inspect

        takes = inspect.signature(enc.build_video_encoder).parameters
        options = {"frame_batch": spec.frame_batch} if "frame_batch" in takes else {}
        if spec.video_preprocess is not None:
            options["preprocess"] = spec.video_preprocess
        _ENCODERS[key] = (
            enc.build_video_encoder(spec.video, weights=spec.video_weights, device=device, **options),
            enc.build_audio_encoder(spec.audio, weights=spec.audio_weights, device=device),
        )
    return _ENCODERS[key]


def cache_meta_for(spec: EncoderSpec, layout: CacheLayout | None = None) -> CacheMeta:
    """The CacheMeta this encoder pair writes (builds the encoders on CPU)."""
    video, audio = build_encoders(spec, "cpu")
    return new_meta(video.info, audio.info, layout)


def _decode(path: str, start: float | None, end: float | None, **kw):
    from .decode import decode_clip

    return decode_clip(path, start, end, **kw)


# -- encoding: one clip, or a batch of consecutive clips ---------------------------


def _decode_row(row: ManifestRow, media_root: Path):
    """Decoded clip or Failure (the in-process reference path's decode step)."""
    from .decode_pool import decode_row

    return decode_row(row, media_root, _decode)


def _checked_video(video, clip) -> np.ndarray:
    video = np.asarray(video)  # (T, Dv)
    if video.ndim != 2 or len(video) != len(clip.frames):
        raise ValueError(f"video encoder returned shape {video.shape} for {len(clip.frames)} frames")
    return video


def _make_record(row: ManifestRow, clip, video, audio: list, split: str) -> ClipRecord:
    """Check the encoders' outputs for one clip and wrap them (raises ValueError on a bad shape)."""
    video = _checked_video(video, clip)
    tracks = []
    audio = [np.asarray(f) for f in audio]  # (S, Da) per track
    for a, feats in zip(clip.audio, audio):
        if feats.ndim != 2:
            raise ValueError(f"audio encoder returned shape {feats.shape}")
        tracks.append(AudioTrack(index=int(a.index), language=a.language, n_steps=len(feats),
                                 original=bool(a.original)))
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
    # frame times are copied: the decoded clip's memory is released after encoding
    return ClipRecord(info, video, np.array(clip.frame_times, dtype=np.float64), audio)


def encode_clip(row: ManifestRow, clip, video_enc, audio_enc, split: str) -> ClipRecord:
    """Encode one decoded clip into a ClipRecord (raises on encoder errors)."""
    video = _checked_video(video_enc.encode(clip.frames), clip)
    audio = []
    for a in clip.audio:
        feats = np.asarray(audio_enc.encode(a.samples))
        if feats.ndim != 2:  # checked before the next track runs, as always
            raise ValueError(f"audio encoder returned shape {feats.shape}")
        audio.append(feats)
    return _make_record(row, clip, video, audio, split)


def _encode_each(enc, inputs: list) -> list:
    """enc's output for every input, or the exception it raised for that input.

    ``encode_many`` (several clips per call: full batches) where the encoder has
    it; if it raises, each input runs alone so the error lands on its own clip.
    """
    if not inputs:
        return []
    if hasattr(enc, "encode_many"):
        try:
            outs = list(enc.encode_many(inputs))
            if len(outs) == len(inputs):
                return outs
            raise ValueError(f"encode_many returned {len(outs)} outputs for {len(inputs)} inputs")
        except Exception:
            log.debug("encode_many failed for a batch of %d; encoding each alone", len(inputs), exc_info=True)
    return encode_each_alone(enc, inputs, catch=Exception)


def _encode_failure(row: ManifestRow, e: BaseException) -> Failure:
    log.debug("encode failed for %s: %s", row.clip_id, e)
    return Failure(row.clip_id, _stage_of(e, "encode"), _reason_of(e), row.path)


def encode_batch(items: list, video_enc, audio_enc) -> list:
    """[(row, DecodedClip | Failure)] -> [ClipRecord | Failure] in the same order.

    The same records and failure rows as :func:`encode_clip` clip by clip: a
    clip's first error (video before audio, tracks in order) is its failure.
    """
    out: list = [item if isinstance(item, Failure) else None for _, item in items]
    todo = [i for i, o in enumerate(out) if o is None]
    videos = dict(zip(todo, _encode_each(video_enc, [items[i][1].frames for i in todo])))
    for i in todo:
        try:
            if isinstance(videos[i], BaseException):
                raise videos[i]
            videos[i] = _checked_video(videos[i], items[i][1])
        except Exception as e:
            out[i] = _encode_failure(items[i][0], e)
    todo = [i for i in todo if out[i] is None]
    samples = [(i, a.samples) for i in todo for a in items[i][1].audio]
    feats = _encode_each(audio_enc, [x for _, x in samples])
    per_clip: dict[int, list] = {i: [] for i in todo}
    for (i, _), f in zip(samples, feats):
        per_clip[i].append(f)
    for i in todo:
        row, clip = items[i]
        try:
            for f in per_clip[i]:
                if isinstance(f, BaseException):
                    raise f
                if np.asarray(f).ndim != 2:
                    raise ValueError(f"audio encoder returned shape {np.asarray(f).shape}")
            out[i] = _make_record(row, clip, videos[i], per_clip[i], row.split)
        except Exception as e:
            out[i] = _encode_failure(row, e)
    return out


def _stage_of(exc: BaseException, default: str) -> str:
    return str(getattr(exc, "stage", None) or default)


def _reason_of(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else f"{type(exc).__name__}: {exc}"


# -- one shard (one writer) ----------------------------------------------------


@dataclass
class ShardResult:
    extracted: int = 0
    failures: list[Failure] = field(default_factory=list)
    parts: int = 0

    def to_dict(self) -> dict:
        return {"extracted": self.extracted, "failures": [f.to_dict() for f in self.failures], "parts": self.parts}


def write_stream(source, writer: CacheWriter, video_enc, audio_enc, part_clips: int, frame_batch: int,
                 on_clip: Callable[[], None] | None = None) -> ShardResult:
    """Encode what ``source`` decodes, in order, committing a part every ``part_clips`` clips.

    ``source`` yields ``(row, DecodedClip | Failure)`` in row order and says
    whether its next item is ``ready()``. Consecutive clips are grouped up to
    ``frame_batch`` frames, taking only what is already decoded, so the encoder
    never waits to fill a batch. Parts hold the same clips whatever the
    grouping: a part is committed after each clip that fills it.
    """
    from .decode_pool import release

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

    it = iter(source)
    for first in it:
        batch = [first]
        frames = _n_frames(first[1])
        while frames < frame_batch and source.ready():
            batch.append(next(it))
            frames += _n_frames(batch[-1][1])
        try:
            outs = encode_batch(batch, video_enc, audio_enc)
        finally:
            for _, item in batch:
                release(item)
        del batch
        for o in outs:
            (failures if isinstance(o, Failure) else records).append(o)
            if len(records) + len(failures) >= part_clips:
                commit()
            if on_clip is not None:
                on_clip()
    commit()
    return result


def _n_frames(item) -> int:
    return 0 if isinstance(item, Failure) else len(item.frames)


def _open_shard(out, meta: dict, spec: EncoderSpec, device: str) -> tuple[CacheWriter, Any, Any]:
    """This shard's writer (its own staging folder; the run holds the cache lock) and encoders."""
    if device == "auto":
        device = str(resolve_device("auto"))
    cache_meta = CacheMeta.from_dict(meta)
    writer = CacheWriter(Path(out), cache_meta)
    video_enc, audio_enc = build_encoders(spec, device)
    # fingerprints compare JSON forms (a cache's meta has been through JSON: tuples became lists)
    if new_meta(video_enc.info, audio_enc.info).fingerprint() != cache_meta.fingerprint():
        raise RuntimeError(f"encoders built on {device} differ from the cache's encoders")
    return writer, video_enc, audio_enc


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """torch intra-op threads = ``n`` inside (the cores the decoders leave), restored after."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    decode_workers: int = 0,
    frame_batch: int = 1024,
) -> dict:
    """Extract ``rows`` into new parts of the existing cache ``out``; the shard's only writer.

    Runs in the main process, a spawned worker or a dask task. The cache must
    already exist (created by :func:`run`); opening it here must not clear
    ``.staging`` as other shards may be writing there. ``decode_workers`` > 0
    decodes in that many processes; 0 in ``decode_threads`` threads here.
    """
    from .decode_pool import ProcessDecodeSource, ThreadDecodeSource, available_cores

    writer, video_enc, audio_enc = _open_shard(out, meta, spec, device)
    root = Path(media_root)
    if decode_workers > 0:
        source = ProcessDecodeSource(rows, root, decode_workers, prefetch)
        threads = max(1, available_cores() - decode_workers)
    else:
        source = ThreadDecodeSource(rows, root, decode_threads, prefetch, decode=_decode)
        threads = None  # the reference path: torch as the caller set it
    with writer, source, _torch_threads(threads):
        result = write_stream(source, writer, video_enc, audio_enc, part_clips, frame_batch, on_clip)
    return result.to_dict()


def _shard_in_process(kwargs: dict) -> dict:
    """Entry point of a spawned worker process (module-level: picklable)."""
    logging.basicConfig(level=logging.WARNING)
    return extract_shard(**kwargs)


# -- several encoder processes fed by one decode pool ----------------------------


class _InboxSource:
    """An encoder process's share of the pool's output: ``(row, clip)`` from a queue, None ends it."""

    _EMPTY = object()

    def __init__(self, inbox, releases):
        self.inbox, self.releases = inbox, releases
        self._peeked = self._EMPTY

    def ready(self) -> bool:
        import queue as q

        if self._peeked is self._EMPTY:
            try:
                self._peeked = self.inbox.get_nowait()
            except q.Empty:
                return False
        return self._peeked is not None  # the end marker is not a clip

    def __iter__(self):
        from .decode_pool import attach

        while True:
            item, self._peeked = (self.inbox.get() if self._peeked is self._EMPTY else self._peeked), self._EMPTY
            if item is None:
                return
            row, decoded = item
            if isinstance(decoded, Failure):
                yield row, decoded
            else:  # the pool counts this clip until we report its release
                yield row, attach(decoded, lambda: self.releases.put(1))


def _encoder_process(kwargs: dict, inbox, releases, results, torch_threads: int) -> None:
    """Entry point of one device's encoder process in the shared-pool mode."""
    import traceback

    logging.basicConfig(level=logging.WARNING)
    try:
        import torch

        torch.set_num_threads(max(1, torch_threads))
        writer, video_enc, audio_enc = _open_shard(kwargs["out"], kwargs["meta"], kwargs["spec"], kwargs["device"])
        with writer:
            res = write_stream(_InboxSource(inbox, releases), writer, video_enc, audio_enc,
                               kwargs["part_clips"], kwargs["frame_batch"])
        results.put((kwargs["shard"], "ok", res.to_dict()))
    except BaseException:
        results.put((kwargs["shard"], "error", traceback.format_exc()))


# -- the whole run -------------------------------------------------------------


def select_rows(cfg: ExtractConfig) -> list[ManifestRow]:
    """Manifest rows after the split filter / override."""
    rows = list(cfg.rows) if cfg.rows is not None else load_manifest(cfg.manifest)
    if not rows:  # never create or touch a cache for nothing
        raise ManifestError(f"{cfg.manifest or 'the given rows'}: no clips (a header without rows?)")
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
    cfg = replace(cfg, encoders=replace(cfg.encoders, frame_batch=cfg.frame_batch))
    t0 = time.perf_counter()
    rows = select_rows(cfg)
    media_root = Path(cfg.media_root) if cfg.media_root is not None else (
        Path(cfg.manifest).resolve().parent if cfg.manifest is not None else Path.cwd()
    )
    layout = CacheLayout(part_clips=cfg.part_clips) if cfg.part_clips else None
    meta = cache_meta_for(cfg.encoders, layout)
    with CacheWriter.create_or_open(cfg.out, meta, timeout=cfg.lock_timeout) as writer:  # refuses other encoders
        return _run_locked(cfg, rows, media_root, writer, t0)


def _run_locked(cfg: ExtractConfig, rows: list[ManifestRow], media_root: Path, writer: CacheWriter,
                t0: float) -> dict:
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
        frame_batch=cfg.frame_batch,
    )
    results: list[dict] = []
    if pending:
        with _Progress(len(pending), cfg.progress, Path(cfg.out), done) as bar:
            if cfg.scheduler:
                results = _run_dask(cfg, pending, common, bar)
            elif len(cfg.devices) > 1:
                results = _run_processes(cfg, pending, common, bar)
            else:
                results = [extract_shard(pending, device=cfg.devices[0], on_clip=bar.step,
                                         decode_workers=cfg.n_decode_workers(), **common)]

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
    if cfg.n_decode_workers() > 0:
        return _run_shared_pool(cfg, pending, common, bar)
    import multiprocessing as mp

    shards = _shards(pending, len(cfg.devices))
    ctx = mp.get_context("spawn")  # never fork a process holding CUDA / zarr state
    with cf.ProcessPoolExecutor(len(shards), mp_context=ctx) as pool:
        futs = [
            pool.submit(_shard_in_process, dict(rows=shard, device=dev, **common))
            for shard, dev in zip(shards, cfg.devices)
        ]
        return _wait_polling(futs, bar, cf.wait)


def _run_shared_pool(cfg: ExtractConfig, pending, common: dict, bar: "_Progress") -> list[dict]:
    """One decode pool here, one encoder process per device; device k encodes (and writes) pending[k::n].

    The same shards as the threads path, so the same parts; a router thread
    deals the pool's in-order output to the devices' inboxes.
    """
    import multiprocessing as mp
    import queue as q

    from .decode_pool import ProcessDecodeSource, available_cores, release

    ctx = mp.get_context("spawn")
    n = min(len(cfg.devices), len(pending))
    workers = cfg.n_decode_workers()
    releases = ctx.Queue()
    results = ctx.Queue()
    inboxes = [ctx.Queue() for _ in range(n)]
    torch_threads = max(1, (available_cores() - workers) // n)
    procs = [
        ctx.Process(target=_encoder_process, name=f"scav-encode-{dev}",
                    args=(dict(common, device=dev, shard=k), inboxes[k], releases, results, torch_threads))
        for k, dev in enumerate(cfg.devices[:n])
    ]
    stop = threading.Event()
    route_error: list[BaseException] = []

    def route(source) -> None:
        try:
            for k, (row, item) in enumerate(source):
                if stop.is_set():
                    if not isinstance(item, Failure):
                        release(item)
                    return
                inboxes[k % n].put((row, item))
        except BaseException as e:  # surfaced by the main thread
            route_error.append(e)
        finally:
            for box in inboxes:
                box.put(None)

    for p in procs:
        p.start()
    done: dict[int, dict] = {}
    with ProcessDecodeSource(pending, Path(common["media_root"]), workers, cfg.prefetch,
                             attach=False, releases=releases) as source:
        router = threading.Thread(target=route, args=(source,), name="scav-route", daemon=True)
        router.start()
        try:
            while len(done) < n:
                try:
                    k, status, payload = results.get(timeout=1.0)
                except q.Empty:
                    bar.poll()
                    dead = [p.name for p in procs if p.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(f"encoder process(es) died: {', '.join(dead)}")
                    continue
                if status != "ok":
                    raise RuntimeError(f"encoder process for {cfg.devices[k]} failed:\n{payload}")
                done[k] = payload
            bar.poll()
        finally:
            stop.set()
            source.stop()
            router.join(timeout=30)
            for p in procs:
                p.join(timeout=30 if not done or len(done) == n else 1)
                if p.is_alive():
                    p.terminate()
    if route_error:
        raise route_error[0]
    return [done[k] for k in range(n)]


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
