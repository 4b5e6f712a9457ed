"""Decode one clip of a media file: every video frame in a time range, and every audio stream.

Decoder: PyAV (FFmpeg bindings; the wheels carry FFmpeg). Why not decord 0.6.0,
the usual choice in video-feature code? Checked on files written by
``scav.data_manifests.media.write_media`` (tests/test_decode.py repeats the
first two checks, so this choice stays measured):

- decord's ``AudioReader`` has no stream argument and returns only the first
  audio track (a file with a 440 Hz track and a 1000 Hz track gives one
  (1, N) array at 440 Hz). SCAV keeps every audio stream as its own track.
- when the video stream starts after the audio (first frame at 0.48 s),
  decord's frame timestamps start at 0, so a time window selects shifted
  frames. PyAV gives the container's pts.
- decord's decoded audio keeps the AAC end padding (1 s at 16 kHz -> 16384
  samples); stereo reading is broken (decord #242); an mp4 cut short does not
  open; decord has had no release since 2021 (PITFALLS.md).

Rules (the contract the runner and the cache rely on):

- Times are seconds relative to the container start (``container.start_time``),
  computed from pts, so a window means the same instant for video and audio.
- Video: every frame whose pts ``t`` satisfies ``start <= t < end`` (with a
  1 microsecond tolerance for float round-off), at the container's native
  rate; variable-frame-rate files are counted by pts, never by an assumed
  rate. ``fps`` = frames / seconds of the range covered by the video stream
  (falls back to the stream's average rate).
- Range: ``start=None`` means the container start, ``end=None`` the container
  end; an ``end`` past the container end is clipped to it (VGGSound has clips
  shorter than 10 s). ``start < 0``, ``end <= start``, a start at or past the
  end of the file, or a range without a single video frame -> ``DecodeError``
  with stage ``"range"``.
- Audio: each stream is resampled to 16 kHz mono float32 (PyAV/libswresample,
  ``format='flt', layout='mono'``) and cut by sample time relative to the
  stream's first decoded sample. Its length follows the *range*, clipped to the
  stream's nominal duration, not the decoded sample count: AAC decodes longer
  than its nominal duration (end padding; the priming is already removed by
  FFmpeg), so a 10 s clip gives exactly 160000 samples. Samples missing at the
  edges (a stream that starts late or is truncated) are zero-filled only within
  that nominal extent.
- Original track: a stream whose FFmpeg disposition has ``original`` is the
  original-language track; if none has it, the first stream not flagged ``dub``
  (so a file without dispositions: its first stream; an mp4, which keeps ``dub``
  but drops ``original`` on writing: its undubbed stream); all dubs: none.
- Tracks in separate files (``extra_audio``, the manifest's ``audio_tracks``):
  each file's first audio stream, decoded like the container's over the range
  actually decoded (times from that file's own start: a dub is assumed to start
  with the video), appended after the container's streams with the tag given.
  A file track marked original overrides the container's flags (the manifest is
  the explicit statement). A missing or unreadable file -> ``open``; no audio
  stream or a file ending before the range -> ``decode-audio``/``range``.
- Failures raise ``DecodeError(stage, reason)``; no raw FFmpeg traceback
  escapes for a bad file. Stages: ``open``, ``decode-video``, ``decode-audio``,
  ``range``.
- Containers are always closed (PyAV leaks otherwise: PyAV #1117, #838).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .decode_audio import _audio_events, _decode_audio  # noqa: F401
from .decode_events import (  # noqa: F401  (re-exported: the decoder's public types)
    _EPS,
    AUDIO_RATE,
    _container_end,
    _stream_end,
    _seek,
    AudioPiece,
    DecodedAudio,
    DecodedClip,
    DecodeError,
    TrackEnd,
    TrackSource,
    TrackStart,
    VideoChunk,
    VideoEnd,
)

log = logging.getLogger(__name__)

# FFmpeg's AV_DISPOSITION_* bits (stable ABI; av.stream.Disposition from PyAV 13 has the same values)
_DISPOSITION_DUB = 0x2
_DISPOSITION_ORIGINAL = 0x4


def iter_clip(
    path: str | os.PathLike,
    start: float | None = None,
    end: float | None = None,
    *,
    prep=None,
    chunk_frames: int = 256,
    chunk_bytes: int | None = None,
    chunk_multiple: int = 1,
    audio_piece: int = 10 * AUDIO_RATE,
    audio_rate: int = AUDIO_RATE,
    max_side: int | None = None,
    threads: int | None = None,
    require_audio: bool = True,
    extra_audio: Sequence[TrackSource] = (),
):
    """The clip as a stream: ``VideoChunk``s, one ``VideoEnd``, then per audio track ``TrackStart``,
    ``AudioPiece``s, ``TrackEnd``. Raises ``DecodeError`` at the point a problem shows.

    prep: a frame preprocessing (``frame_prep.py``) applied to each frame as it
    leaves FFmpeg; None: (H, W, 3) uint8 RGB (area-downscaled to ``max_side``).
    A chunk holds ``chunk_frames`` frames, fewer where that exceeds ``chunk_bytes``,
    rounded down to a multiple of ``chunk_multiple`` (the encoder's batch: same
    batches as encoding the whole clip). The last chunk may be shorter.
    Memory: at most one chunk of preprocessed frames and about two ``audio_piece``
    samples are held, whatever the clip's duration or resolution. The events
    concatenate to exactly what :func:`decode_clip` returns.
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError("open", f"file not found: {path}")
    if path.stat().st_size == 0:
        raise DecodeError("open", f"empty file (0 bytes): {path}")
    for src in extra_audio:  # before decoding anything: a missing dub costs no video decode
        if not Path(src.path).is_file():
            raise DecodeError("open", f"{_describe(src)}: file not found")
    override = any(src.original for src in extra_audio)  # the manifest's mark overrides the container's flags
    with open_container(path, "decode-video") as container:
        lo, hi = yield from _video_events(container, start, end, prep, (chunk_frames, chunk_bytes, chunk_multiple),
                                          max_side, threads, require_audio)
        origin = (container.start_time or 0) / 1e6
        flags = original_flags(_dispositions(container))
        for k in range(len(container.streams.audio)):
            yield from _audio_events(container, k, origin, lo, hi, audio_rate, audio_piece,
                                     original=flags[k] and not override)
    n_own = len(flags)
    for j, src in enumerate(extra_audio):
        what = _describe(src)
        with open_container(src.path, "decode-audio", what=what) as container:
            if not container.streams.audio:
                raise DecodeError("decode-audio", f"{what}: no audio stream")
            o = (container.start_time or 0) / 1e6
            yield from _audio_events(container, 0, o, lo, hi, audio_rate, audio_piece, index=n_own + j,
                                     language=src.language, original=src.original, what=what)


def decode_clip(
    path: str | os.PathLike,
    start: float | None = None,
    end: float | None = None,
    *,
    audio_rate: int = AUDIO_RATE,
    max_side: int | None = None,
    threads: int | None = None,
    alloc_frames=None,
    extra_audio: Sequence[TrackSource] = (),
    prep=None,
    require_audio: bool = True,
) -> DecodedClip:
    """Decode video frames with pts in [start, end) and every audio stream of that range.

    The whole clip in memory (for short clips: queries, reports, tests); the
    extraction runner streams :func:`iter_clip` instead.
    max_side: if set, frames whose longer side exceeds it are area-downscaled on
    decode (keeps aspect ratio) to save memory; the encoders resize anyway.
    threads: FFmpeg video decoding threads (None: FFmpeg's default, one per core).
    alloc_frames: ``(shape, dtype) -> array`` giving the (T, ...) array the
    frames are stacked into; default a new numpy array.
    extra_audio: tracks in separate files, appended after the container's streams.
    prep: a per-frame preprocessing (``frame_prep.py``); frames are then its outputs.
    require_audio: False lets a file without audio streams decode (no tracks; a video query).
    """
    chunks, times, tracks = [], [], []
    head = None
    for ev in iter_clip(path, start, end, prep=prep, audio_rate=audio_rate, max_side=max_side, threads=threads,
                        extra_audio=extra_audio, require_audio=require_audio):
        if isinstance(ev, VideoChunk):
            chunks.append(ev.frames)
            times.append(ev.times)
        elif isinstance(ev, VideoEnd):
            head = ev
        elif isinstance(ev, TrackStart):
            tracks.append((ev, []))
        elif isinstance(ev, AudioPiece):
            tracks[-1][1].append(ev.samples)
    n = sum(len(c) for c in chunks)
    shape = (n, *chunks[0].shape[1:])
    frames = alloc_frames(shape, chunks[0].dtype) if alloc_frames else np.empty(shape, chunks[0].dtype)
    np.concatenate(chunks, out=frames)
    del chunks
    audio = [
        DecodedAudio(np.concatenate(p) if p else np.zeros(0, np.float32), t.index, t.language, t.sample_rate, t.original)
        for t, p in tracks
    ]
    return DecodedClip(frames=frames, frame_times=np.concatenate(times), fps=head.fps, duration=head.duration,
                       start=head.start, end=head.end, audio=audio)


@contextlib.contextmanager
def open_container(path: str | os.PathLike, stage: str, what: str | None = None):
    """An open PyAV container of ``path``, closed on exit. Any FFmpeg/IO error while opening
    becomes ``DecodeError('open')``, and while using it ``DecodeError(stage)``; ``what``
    (e.g. "audio track 'spa' (x.m4a)") prefixes the reasons."""
    import av

    pre = f"{what}: " if what else ""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DecodeError("open", f"{pre}cannot open container: {e}") from None
    try:
        yield container
    except DecodeError as e:
        if what and not e.reason.startswith(pre):
            raise DecodeError(e.stage, pre + e.reason) from None
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as e:
        raise DecodeError(stage, f"{pre}{type(e).__name__}: {e}") from None
    finally:
        container.close()


def read_audio_tracks(path: str | os.PathLike, audio_rate: int = AUDIO_RATE) -> list[DecodedAudio]:
    """Every audio stream of a whole file, without decoding its video: the samples, languages
    and original flags :func:`decode_clip` gives for the file's full range."""
    path = Path(path)
    if not path.is_file():
        raise DecodeError("open", f"file not found: {path}")
    with open_container(path, "decode-audio") as container:
        if not container.streams.audio:
            raise DecodeError("decode-audio", "no audio stream")
        origin = (container.start_time or 0) / 1e6
        end = _container_end(container, origin)
        if end is None:
            raise DecodeError("range", "the file states no duration")
        tracks = [_decode_audio(container, k, origin, 0.0, end, audio_rate) for k in range(len(container.streams.audio))]
        for track, original in zip(tracks, original_flags(_dispositions(container))):
            track.original = original
    return tracks


def original_flags(dispositions: Sequence[tuple[bool, bool]]) -> list[bool]:
    """Which of a container's audio streams is the original, from each one's (original, dub) flags.

    Streams flagged original; if none is, the first not flagged dub; all dubs: none.
    """
    flagged = [orig for orig, _ in dispositions]
    if any(flagged):
        return flagged
    first = next((k for k, (_, dub) in enumerate(dispositions) if not dub), None)
    return [k == first for k in range(len(dispositions))]


def _dispositions(container) -> list[tuple[bool, bool]]:
    bits = [int(getattr(s, "disposition", 0) or 0) for s in container.streams.audio]
    return [(bool(b & _DISPOSITION_ORIGINAL), bool(b & _DISPOSITION_DUB)) for b in bits]


def _describe(src: TrackSource) -> str:
    return f"audio track {src.language!r} ({src.path})" if src.language else f"audio track ({src.path})"


def _video_events(container, start, end, prep, chunking, max_side, threads, require_audio=True):
    """VideoChunk ... VideoEnd of the range; returns the range (lo, hi) actually decoded."""
    if not container.streams.video:
        raise DecodeError("decode-video", "no video stream")
    if require_audio and not container.streams.audio:
        raise DecodeError("decode-audio", "no audio stream")
    origin = (container.start_time or 0) / 1e6  # container start, seconds (AV_TIME_BASE)
    file_end = _container_end(container, origin)
    lo = 0.0 if start is None else float(start)
    hi = (math.inf if file_end is None else file_end) if end is None else float(end)
    if not math.isfinite(lo) or math.isnan(hi) or (end is not None and not math.isfinite(hi)):
        raise DecodeError("range", f"range [{start}, {end}) is not finite")
    if lo < 0 or hi <= lo:
        raise DecodeError("range", f"empty or negative range [{lo:g}, {hi:g})")
    if file_end is not None:
        if lo >= file_end:
            raise DecodeError("range", f"start {lo:g} s is at or past the end of the file ({file_end:g} s)")
        if hi > file_end + _EPS:
            log.debug("range end %g s clipped to the file end %g s", hi, file_end)
            hi = file_end

    n, (span_lo, span_hi) = yield from _decode_video(container, origin, lo, hi, max_side, threads, prep, chunking)
    if n == 0:
        raise DecodeError("range", f"no video frame in [{lo:g}, {hi:g}) s")
    if not math.isfinite(hi):  # the file states no duration: the video's last frame ends it
        hi = span_hi
    vstream = container.streams.video[0]
    span = span_hi - span_lo
    fps = n / span if span > 0 else float(vstream.average_rate or 0.0)
    yield VideoEnd(n_frames=n, fps=float(fps), start=lo, end=hi)
    return lo, hi








def _chunk_size(frame_bytes: int, chunking) -> int:
    frames, nbytes, multiple = chunking
    n = max(1, int(frames))
    if nbytes:
        n = min(n, max(1, int(nbytes) // max(1, frame_bytes)))
    m = max(1, int(multiple))
    return max(m, (n // m) * m) if n >= m else n


def _decode_video(container, origin, lo, hi, max_side, threads, prep, chunking):
    """Yields VideoChunks of the frames with pts in [lo, hi); returns (count, (first, end) covered)."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if threads is not None:
        stream.codec_context.thread_count = max(1, int(threads))
    tb = stream.time_base
    rate = float(stream.average_rate) if stream.average_rate else None
    if lo > 0:
        _seek(container, stream, lo, origin)
    size = None
    buf = None  # (chunk_frames, ...) the current chunk, filled frame by frame
    chunk_frames = 0
    times: list[float] = []
    n = 0
    first_t = last_t = last_dur = None
    reached_end = False
    frames_iter = container.decode(stream)
    while True:
        try:  # only FFmpeg's own errors are caught here, never the consumer's
            frame = next(frames_iter, None)
        except Exception as e:  # FFmpeg errors mid-stream (corrupt / truncated data)
            if n == 0 and not times:
                raise DecodeError("decode-video", f"{type(e).__name__}: {e}") from None
            # keep what decoded: a truncated tail loses frames, which the counts will show
            log.warning("video decoding stopped early at %.3f s: %s", last_t, e)
            break
        if frame is None:
            break
        if frame.pts is None:
            raise DecodeError("decode-video", "a decoded frame has no timestamp (pts)")
        t = float(frame.pts * tb) - origin
        if t >= hi - _EPS:
            reached_end = True
            break
        if t < lo - _EPS:
            continue
        if size is None:
            size = _target_size(frame.width, frame.height, None if prep is not None else max_side)
        if size == (frame.width, frame.height):
            rgb = frame.to_ndarray(format="rgb24")
        else:
            rgb = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA").to_ndarray()
        x = prep(rgb) if prep is not None else rgb
        del rgb
        if buf is None:
            chunk_frames = _chunk_size(x.nbytes, chunking)
            buf = np.empty((chunk_frames, *x.shape), x.dtype)
        buf[len(times)] = x
        times.append(t)
        first_t = t if first_t is None else first_t
        last_t = t
        last_dur = float(frame.duration * tb) if frame.duration else None
        if len(times) == chunk_frames:
            n += len(times)
            yield VideoChunk(buf, np.asarray(times, dtype=np.float64))
            buf, times = None, []
    if times:
        n += len(times)
        yield VideoChunk(buf[: len(times)].copy(), np.asarray(times, dtype=np.float64))
        buf = None
    if n == 0:
        return 0, (lo, lo)
    if reached_end:
        span_hi = hi
    else:
        step = last_dur or (1.0 / rate if rate else 0.0)
        span_hi = min(hi, last_t + step)
        nominal_end = _stream_end(stream, origin)
        # frames stop more than ~2 frames before where the stream says it runs: truncated file
        if nominal_end is not None and span_hi < min(hi, nominal_end) - max(2 * step, 0.1):
            raise DecodeError(
                "decode-video",
                f"truncated or corrupt: frames stop at {span_hi:.3f} s but the video stream runs to {nominal_end:.3f} s",
            )
    stream_t0 = float((stream.start_time or 0) * tb) - origin if stream.start_time is not None else first_t
    return n, (max(lo, stream_t0), span_hi)


def _target_size(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    if max_side is None or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


