"""The writer side of one shard: reader (decode streams) -> mapper (``clip_encode``) -> parts.

A shard is one writer (zarr-python #3682): it commits a part every
``part_clips`` clips, each part staged in the shard's own locked folder and
renamed into place, so ``kill -9`` at any moment loses at most the clips of
the part being written.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.cache import CacheWriter, new_meta
from ..core.device import resolve_device
from ..core.schema import CacheMeta, Failure, require_same_encoders
from ..data_manifests.manifest import ManifestRow
from .clip_encode import encode_events, stream_spec
from .config import EncoderSpec

log = logging.getLogger(__name__)


@dataclass
class ShardResult:
    extracted: int = 0
    failures: list[Failure] = field(default_factory=list)
    parts: int = 0
    clipped: int = 0  # clips whose window reached past the end of the file

    def to_dict(self) -> dict:
        return {"extracted": self.extracted, "failures": [f.to_dict() for f in self.failures], "parts": self.parts,
                "clipped": self.clipped}


def write_clips(source: Iterable[tuple[ManifestRow, Iterable[object]]], writer: CacheWriter, video_enc, audio_enc,
                part_clips: int, on_clip: Callable[[], None] | None = None) -> ShardResult:
    """Encode every clip ``source`` streams, in order, into parts of ``part_clips`` clips (failure rows count)."""
    result = ShardResult()
    part = writer.open_part()
    failures: list[Failure] = []

    def commit() -> None:
        nonlocal part
        if len(part) or failures:
            part.commit(failures)
            result.parts += 1
            result.extracted += len(part)
            result.failures.extend(failures)
            failures.clear()
        part = writer.open_part()

    try:
        for row, events in source:
            rows = part.clip()
            out, clipped = encode_events(row, events, video_enc, audio_enc, rows)
            if isinstance(out, Failure):
                rows.abort()
                failures.append(out)
            else:
                rows.end(out)
                result.clipped += int(clipped)
            if len(part) + len(failures) >= part_clips:
                commit()
            if on_clip is not None:
                on_clip()
        commit()
    finally:
        part.discard()  # what was staged and not committed (an exception): the clips are not done
    return result


def open_shard(out, meta: dict, spec: EncoderSpec, device: str) -> tuple[CacheWriter, Any, Any]:
    """This shard's writer (its own staging folder; the run holds the cache lock) and encoders."""
    from . import (
        runner,  # through runner: a test swaps the encoders there, in one place
    )

    if device == "auto":
        device = str(resolve_device("auto"))
    cache_meta = CacheMeta.from_dict(meta)
    writer = CacheWriter(Path(out), cache_meta)
    video_enc, audio_enc = runner.build_encoders(spec, device)
    # fingerprints compare JSON forms (a cache's meta has been through JSON: tuples became lists)
    require_same_encoders(cache_meta, new_meta(video_enc.info, audio_enc.info), "the cache",
                          f"the encoders built on {device} have", "a worker must build the run's encoders",
                          error=RuntimeError)
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
    torch_threads: int | None = None,
) -> dict:
    """Extract ``rows`` into new parts of the existing cache ``out``; the shard's only writer.

    Runs in the main process, a spawned worker or a dask task. The cache must
    already exist (created by ``runner.run``); opening it here must not clear
    ``.staging`` as other shards may be writing there. ``decode_workers`` > 0
    decodes in that many processes; 0 in ``decode_threads`` threads here.
    Memory: (workers x ``prefetch`` + 1) chunks of at most ``frame_batch``
    frames at the encoder's input size (<= 32 MB each), whatever the media.
    """
    from .decode_pool import ProcessStreams, ThreadStreams, available_cores

    writer, video_enc, audio_enc = open_shard(out, meta, spec, device)
    sspec = stream_spec(video_enc, frame_batch)
    root = Path(media_root)
    if decode_workers > 0:
        source = ProcessStreams(rows, root, sspec, decode_workers, credits=prefetch)
        threads = torch_threads or max(1, available_cores() - decode_workers)
    else:
        source = ThreadStreams(rows, root, sspec, decode_threads, credits=prefetch)
        threads = torch_threads  # the reference path: torch as the caller set it
    with writer, source, _torch_threads(threads):
        result = write_clips(source, writer, video_enc, audio_enc, part_clips, on_clip)
    return result.to_dict()


def shard_in_process(kwargs: dict) -> dict:
    """Entry point of a spawned encoder process (module-level: picklable)."""
    logging.basicConfig(level=logging.WARNING)
    return extract_shard(**kwargs)
