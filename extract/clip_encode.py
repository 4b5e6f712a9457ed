"""The mapper: one clip's decode events -> frozen encoders -> a ClipRecord, or a Failure row.

Video chunks are encoded as they arrive (CLIP and ``pixels`` are per frame:
chunking changes nothing); each audio track's pieces go to the audio encoder
through ``encode_chunks``. What a clip holds at once: one chunk of frames at
the encoder's input size, its features so far, and the audio encoder's window.

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

from ..core.cache import ClipRecord, new_meta
from ..core.schema import AudioTrack, CacheLayout, CacheMeta, ClipInfo, Failure
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


def encode_events(row: ManifestRow, events: Iterable[object], video_enc, audio_enc,
                  split: str | None = None) -> tuple[ClipRecord | Failure, bool]:
    """(ClipRecord or Failure, whether the clip's end was clipped to the file) for one clip's events.

    Reads ``events`` to their end whatever happens (the next clip's follow).
    """
    from .decode import TrackStart, VideoChunk, VideoEnd
    from .encoders.base import audio_steps, encode_chunks

    prepped = getattr(video_enc, "frame_prep", None) is not None and callable(getattr(video_enc, "encode_prepped", None))
    it = iter(events)
    video: list[np.ndarray] = []
    times: list[np.ndarray] = []
    head = None
    tracks: list[tuple[TrackStart, list[np.ndarray]]] = []
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
                video.append(feats)
                times.append(ev.times)
            elif isinstance(ev, VideoEnd):
                head = ev
            elif isinstance(ev, TrackStart):
                pieces = _pieces(it)
                try:
                    feats = _gather(encode_chunks(audio_enc, pieces), audio_steps(ev.n_samples))
                finally:
                    for _ in pieces:  # what the encoder left of this track
                        pass
                if feats is None:  # too short for one step: the same error as encode() on the whole track
                    from .encoders.base import _check_audio

                    _check_audio(np.zeros(ev.n_samples, np.float32))
                    raise ValueError("audio encoder returned no steps")
                tracks.append((ev, feats))
        except _Failed as f:
            return f.failure, False
        except Exception as e:
            error = e
    if error is not None:
        log.debug("encode failed for %s: %s", row.clip_id, error)
        return Failure(row.clip_id, _stage_of(error, "encode"), _reason_of(error), row.path), False
    try:
        return _record(row, head, video, times, tracks, split or row.split)
    except Exception as e:
        return Failure(row.clip_id, _stage_of(e, "encode"), _reason_of(e), row.path), False


def _gather(blocks: Iterable[np.ndarray], expected: int) -> np.ndarray | None:
    """The (S, D) concatenation of ``blocks``, written into one array of ``expected`` rows as they come
    (one copy of an hour's features, not two); a list and a concatenation if the count differs."""
    out, n, rest = None, 0, []
    for b in blocks:
        b = np.asarray(b)
        if b.ndim != 2:
            raise ValueError(f"audio encoder returned shape {b.shape}")
        if out is None and not rest and expected > 0:
            out = np.empty((expected, b.shape[1]), b.dtype)
        if out is not None and n + len(b) <= expected and b.shape[1:] == out.shape[1:] and b.dtype == out.dtype:
            out[n : n + len(b)] = b
            n += len(b)
            continue
        if out is not None:  # not the expected count: keep what was written, then the rest as they are
            rest.append(out[:n])
            out = None
        rest.append(b)
    if out is not None and n == expected:
        return out
    if out is not None:
        rest.insert(0, out[:n])
    rest = [r for r in rest if len(r)] or rest
    return np.concatenate(rest) if len(rest) > 1 else (rest[0] if rest and len(rest[0]) else None)


def _record(row: ManifestRow, head, video, times, tracks, split: str) -> tuple[ClipRecord, bool]:
    if head is None or not video:
        raise ValueError("the decoder gave no video")
    if not tracks:
        raise ValueError("the decoder gave no audio track")
    first, feats0 = tracks[0]
    if len(feats0) == 0:
        raise ValueError(f"audio too short for one step ({first.n_samples} samples at 16 kHz)")
    video_feats = np.concatenate(video) if len(video) > 1 else video[0]
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
        n_video=len(video_feats),
        tracks=[AudioTrack(index=int(t.index), language=t.language, n_steps=len(f), original=bool(t.original))
                for t, f in tracks],
    )
    return ClipRecord(info, video_feats, np.concatenate(times), [f for _, f in tracks]), clipped
