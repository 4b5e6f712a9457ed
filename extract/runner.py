"""The extraction runner: manifest rows -> decode streams -> frozen encoders -> cache parts.

It composes, clip-retrieval style, a reader (``decode_pool.py``: clips decoded
and preprocessed for the encoder in worker processes or threads, streamed in
chunks), a mapper (``clip_encode.py``: events -> features -> ClipRecord or a
Failure row) and a writer (``shard.py``: one writer per shard, a part every
``part_clips`` clips), run in one of three ways (``run_modes.py``: this
process, one process per device, dask tasks). Options: ``config.py``.

One fixed sequence per clip (skip if committed -> decode -> encode -> record),
with every per-clip error turned into a :class:`~scav.core.schema.Failure` row
committed with the part, so a bad file never stops the run and never prints a
traceback. The run holds the cache lock (``core/writer_lock.py``): a second
run on the same cache is refused with a message naming the holder, and each
shard stages its parts in its own locked folder that no other writer deletes.
A part is committed by an atomic rename, so ``kill -9`` at any moment loses at
most the uncommitted clips; the same command run again extracts only those.

Memory is bounded by design: a clip is never held whole. Frames are
preprocessed to the encoder's input size where they are decoded and travel in
chunks; audio travels in 10 s pieces (``decode_pool.py`` states the bound).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from ..core.cache import CacheWriter, FeatureCache
from ..core.schema import CacheLayout, Failure
from ..data_manifests.manifest import ManifestError, ManifestRow, load_manifest
from .clip_encode import build_encoders, cache_meta_for  # noqa: F401  (tests swap build_encoders here)
from .config import EncoderSpec, ExtractConfig, devices_for_gpus  # noqa: F401  (the public names)
from .run_modes import Progress, run_dask, run_here, run_processes, shards_of
from .shard import extract_shard  # noqa: F401

log = logging.getLogger(__name__)

_shards = shards_of


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
        mode = run_dask if cfg.scheduler else run_processes if len(cfg.devices) > 1 else run_here
        with Progress(len(pending), cfg.progress, Path(cfg.out), done) as bar:
            results = mode(cfg, pending, common, bar)

    failures = [Failure(**f) for r in results for f in r["failures"]]
    seconds = time.perf_counter() - t0
    extracted = sum(r["extracted"] for r in results)
    return {
        "requested": len(rows),
        "already_present": len(rows) - len(pending),
        "extracted": extracted,
        "failed": len(failures),
        "failed_by_stage": dict(sorted(Counter(f.stage for f in failures).items())),
        "clipped_to_file_end": sum(r.get("clipped", 0) for r in results),  # windows past the file's end
        "all_failed": bool(failures) and extracted == 0,  # the CLI exits non-zero then
        "failures": [f.to_dict() for f in failures],
        "parts_written": sum(r["parts"] for r in results),
        "seconds": round(seconds, 3),
        "clips_per_s": round((extracted + len(failures)) / seconds, 3) if seconds > 0 else 0.0,
        "encoders": {"video": writer.meta.video.label, "audio": writer.meta.audio.label},
        "cache": FeatureCache.open(cfg.out).summary(),
    }


