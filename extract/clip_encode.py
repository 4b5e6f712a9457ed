"""The mapper: one clip's decode events -> frozen encoders -> rows of the part being written, or a Failure row.

Video chunks are encoded as they arrive (CLIP and ``pixels`` are per frame:
chunking changes nothing); each audio track's pieces go to the audio encoder
through ``encode_chunks``. Features go to the part as they come
(``core.part_builder``), so what a clip holds at once is one chunk of frames at
the encoder's input size, the audio encoder's window and at most a write unit
of rows per array: nothing that grows with the clip's duration but its frame
times (8 bytes a frame).

Failure precedence is the one of decoding the whole clip first: a decode
failure anywhere in the clip wins over an encoder error (the rest of the
clip's events are read and dropped); among encoder errors, video before audio,
tracks in order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..core.cache import new_meta
from ..core.part_builder import ClipRows
from ..core.schema import AUDIO, VIDEO, AudioTrack, CacheLayout, CacheMeta, ClipInfo, Failure
from ..data_manifests.manifest import ManifestRow
from .config import EncoderSpec

log = logging.getLogger(__name__)

_END_EPS = 1e-3  # s: an end decoded this much short of the asked end counts as clipped

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
            enc.build_audio_encoder(spec.audio, weights=spec.audio_weights, device=device,
                                    window_steps=spec.audio_window),
        )
    return _ENCODERS[key]


def cache_meta_for(spec: EncoderSpec, layout: CacheLayout | None = None) -> CacheMeta:
    """The CacheMeta this encoder pair writes (builds the encoders on CPU)."""
    from . import (
        runner,  # through runner: a test swaps the encoders there, in one place
    )

    video, audio = runner.build_encoders(spec, "cpu")
    return new_meta(video.info, audio.info, layout)


def stream_spec(video_enc, frame_batch: int):
    """How decode workers stream clips for ``video_enc``: its frame preprocessing, chunks of its batch."""
    from .decode_pool import StreamSpec

    make = getattr(video_enc, "frame_prep", None)
    prep = make() if callable(make) else None
    return StreamSpec(prep=prep, chunk_frames=max(1, int(frame_batch)),
                      chunk_multiple=int(getattr(video_enc, "batch_size", 1) or 1))


def _stage_of(exc: BaseException, default: str) -> str:
    return str(getattr(exc, "stage", None) or default)


def _reason_of(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else f"{type(exc).__name__}: {exc}"


class _Failed(Exception):
    """The stream ended with a decode Failure while an encoder was reading it."""

    def __init__(self, failure: Failure):
        self.failure = failure


def _pieces(events: Iterator[object]) -> Iterator[np.ndarray]:
    """The samples of the current audio track, up to its TrackEnd."""
    from .decode import AudioPiece, TrackEnd

    for ev in events:
        if isinstance(ev, AudioPiece):
            yield ev.samples
        elif isinstance(ev, TrackEnd):
            return
        elif isinstance(ev, Failure):
            raise _Failed(ev)


def encode_events(row: ManifestRow, events: Iterable[object], video_enc, audio_enc, rows: ClipRows,
                  split: str | None = None) -> tuple[ClipInfo | Failure, bool]:
    """Encode one clip's events into ``rows`` as they come; (its ClipInfo or a Failure, whether the clip's end
    was clipped to the file). The caller ends ``rows`` with the info, or aborts it on a Failure.

    Reads ``events`` to their end whatever happens (the next clip's follow).
    """
    from .decode import TrackStart, VideoChunk, VideoEnd
    from .encoders.base import audio_steps, encode_chunks, too_short

    prepped = getattr(video_enc, "frame_prep", None) is not None and callable(getattr(video_enc, "encode_prepped", None))
    it = iter(events)
    head = None
    tracks: list[TrackStart] = []
    error: BaseException | None = None
    for ev in it:
        if isinstance(ev, Failure):
            return ev, False
        if error is not None:
            continue  # drain: a decode failure later in the clip still wins
        try:
            if isinstance(ev, VideoChunk):
                feats = np.asarray(video_enc.encode_prepped(ev.frames) if prepped else video_enc.encode(ev.frames))
                if feats.ndim != 2 or len(feats) != len(ev.frames):
                    raise ValueError(f"video encoder returned shape {feats.shape} for {len(ev.frames)} frames")
                rows.video(feats, ev.times)
            elif isinstance(ev, VideoEnd):
                head = ev
            elif isinstance(ev, TrackStart):
                j = len(tracks)
                pieces = _pieces(it)
                try:
                    for block in encode_chunks(audio_enc, pieces):
                        block = np.asarray(block)
                        if block.ndim != 2:
                            raise ValueError(f"audio encoder returned shape {block.shape}")
                        rows.audio(j, block)
                finally:
                    for _ in pieces:  # what the encoder left of this track
                        pass
                if rows.rows(AUDIO, j) == 0:  # too short for one step: the same error as encode() on the whole track
                    raise too_short(ev.n_samples) if audio_steps(ev.n_samples) == 0 else \
                        ValueError("audio encoder returned no steps")
                tracks.append(ev)
        except _Failed as f:
            return f.failure, False
        except Exception as e:
            error = e
    if error is not None:
        log.debug("encode failed for %s: %s", row.clip_id, error)
        return Failure(row.clip_id, _stage_of(error, "encode"), _reason_of(error), row.path), False
    try:
        return _info(row, head, rows, tracks, split or row.split)
    except Exception as e:
        return Failure(row.clip_id, _stage_of(e, "encode"), _reason_of(e), row.path), False


def _info(row: ManifestRow, head, rows: ClipRows, tracks, split: str) -> tuple[ClipInfo, bool]:
    n_video = rows.rows(VIDEO)
    if head is None or not n_video:
        raise ValueError("the decoder gave no video")
    if not tracks:
        raise ValueError("the decoder gave no audio track")
    clipped = row.end is not None and head.end < float(row.end) - _END_EPS
    info = ClipInfo(
        clip_id=row.clip_id,
        split=split,
        label=row.label,
        source=row.source_id,
        path=row.path,
        start=row.start,
        end=float(head.end) if clipped else row.end,  # a window past the file's end: the end decoded
        fps=float(head.fps),
        duration=float(head.duration),
        n_video=n_video,
        tracks=[AudioTrack(index=int(t.index), language=t.language, n_steps=rows.rows(AUDIO, j),
                           original=bool(t.original)) for j, t in enumerate(tracks)],
    )
    return info, clipped
