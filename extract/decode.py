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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

AUDIO_RATE = 16000
_EPS = 1e-6  # seconds; pts resolution is >= 1/90000 s, far coarser
# FFmpeg's AV_DISPOSITION_* bits (stable ABI; av.stream.Disposition from PyAV 13 has the same values)
_DISPOSITION_DUB = 0x2
_DISPOSITION_ORIGINAL = 0x4


class DecodeError(Exception):
    """A clip that cannot be decoded; ``stage`` says where, ``reason`` why."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass
class DecodedAudio:
    """One audio track of the clip: ``samples`` (N,) float32 mono in [-1, 1]."""

    samples: np.ndarray
    index: int  # position among the clip's audio tracks (container streams first, then extra files)
    language: str | None = None
    sample_rate: int = AUDIO_RATE
    original: bool = False  # the original-language track (rule in the module docstring)


@dataclass(frozen=True)
class TrackSource:
    """An audio track in a file of its own: its first audio stream, tagged ``language``."""

    path: str
    language: str | None = None
    original: bool = False


@dataclass
class DecodedClip:
    """Frames (T, H, W, 3) uint8 RGB with their times (T,) in seconds, and all audio tracks."""

    frames: np.ndarray
    frame_times: np.ndarray
    fps: float
    duration: float  # seconds of the range actually decoded (end - start after clipping)
    start: float = 0.0  # the range actually decoded, seconds from the container start
    end: float = 0.0
    audio: list[DecodedAudio] = field(default_factory=list)


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
) -> DecodedClip:
    """Decode video frames with pts in [start, end) and every audio stream of that range.

    max_side: if set, frames whose longer side exceeds it are area-downscaled on
    decode (keeps aspect ratio) to save memory; the encoders resize anyway.
    threads: FFmpeg video decoding threads (None: FFmpeg's default, one per core).
    A decode pool sets it to the cores each worker really has, so N workers do
    not each start one thread per core (PITFALLS: oversubscription).
    alloc_frames: ``(shape, dtype) -> array`` giving the (T, H, W, 3) array the
    frames are stacked into (e.g. a view of shared memory, saving one copy of
    the largest array); default a new numpy array.
    extra_audio: tracks in separate files, appended after the container's streams.
    """

    path = Path(path)
    if not path.is_file():
        raise DecodeError("open", f"file not found: {path}")
    if path.stat().st_size == 0:
        raise DecodeError("open", f"empty file (0 bytes): {path}")
    for src in extra_audio:  # before decoding anything: a missing dub costs no video decode
        if not Path(src.path).is_file():
            raise DecodeError("open", f"{_describe(src)}: file not found")
    with open_container(path, "decode-video") as container:
        clip = _decode_open(container, start, end, audio_rate, max_side, threads, alloc_frames)
    n_own = len(clip.audio)
    for src in extra_audio:
        clip.audio.append(_decode_track_file(src, len(clip.audio), clip.start, clip.end, audio_rate))
    if any(src.original for src in extra_audio):  # the manifest's mark overrides the container's flags
        for a in clip.audio[:n_own]:
            a.original = False
    return clip


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


def _decode_track_file(src: TrackSource, index: int, lo: float, hi: float, rate: int) -> DecodedAudio:
    """The first audio stream of ``src`` over [lo, hi) s (the clip's decoded range), as track ``index``."""

    what = _describe(src)
    path = Path(src.path)
    if not path.is_file():
        raise DecodeError("open", f"{what}: file not found")
    with open_container(path, "decode-audio", what=what) as container:
        if not container.streams.audio:
            raise DecodeError("decode-audio", f"{what}: no audio stream")
        origin = (container.start_time or 0) / 1e6
        track = _decode_audio(container, 0, origin, lo, hi, rate)
    if len(track.samples) == 0:
        raise DecodeError("range", f"{what}: the file ends before the clip's range [{lo:g}, {hi:g}) s")
    return DecodedAudio(track.samples, index, src.language, rate, src.original)


def _decode_open(container, start, end, audio_rate, max_side, threads=None, alloc_frames=None) -> DecodedClip:
    if not container.streams.video:
        raise DecodeError("decode-video", "no video stream")
    if not container.streams.audio:
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

    frames, times, (span_lo, span_hi) = _decode_video(container, origin, lo, hi, max_side, threads)
    if not frames:
        raise DecodeError("range", f"no video frame in [{lo:g}, {hi:g}) s")
    if not math.isfinite(hi):  # the file states no duration: the video's last frame ends it
        hi = span_hi
    vstream = container.streams.video[0]
    span = span_hi - span_lo
    fps = len(frames) / span if span > 0 else float(vstream.average_rate or 0.0)

    tracks = [
        _decode_audio(container, k, origin, lo, hi, audio_rate)
        for k in range(len(container.streams.audio))
    ]
    for track, original in zip(tracks, original_flags(_dispositions(container))):
        track.original = original
    shape = (len(frames), *frames[0].shape)
    stacked = np.stack(frames, out=alloc_frames(shape, np.uint8)) if alloc_frames else np.stack(frames)
    del frames
    return DecodedClip(
        frames=stacked,
        frame_times=np.asarray(times, dtype=np.float64),
        fps=float(fps),
        duration=hi - lo,
        start=lo,
        end=hi,
        audio=tracks,
    )


def _container_end(container, origin: float) -> float | None:
    """End of the container in seconds from its start; None if the file does not say."""
    if container.duration is not None and container.duration > 0:
        return container.duration / 1e6
    ends = [_stream_end(s, origin) for s in container.streams if s.type in ("video", "audio")]
    ends = [e for e in ends if e is not None]
    return max(ends) if ends else None


def _stream_end(stream, origin: float) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    s0 = stream.start_time or 0
    return float((s0 + stream.duration) * stream.time_base) - origin


def _seek(container, stream, t: float, origin: float) -> None:
    """Seek ``stream`` to the keyframe at or before container time ``t`` (seconds; <= 0: its start)."""
    target = int(math.floor((max(t, 0.0) + origin) / stream.time_base))
    if stream.start_time is not None:
        target = max(target, stream.start_time) if t > 0 else min(target, stream.start_time)
    container.seek(target, stream=stream, backward=True, any_frame=False)


def _decode_video(container, origin, lo, hi, max_side, threads=None):
    """Frames with pts in [lo, hi): (list of (H, W, 3) uint8, list of seconds, (first, end) covered)."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if threads is not None:
        stream.codec_context.thread_count = max(1, int(threads))
    tb = stream.time_base
    rate = float(stream.average_rate) if stream.average_rate else None
    if lo > 0:
        _seek(container, stream, lo, origin)
    size = None
    frames, times = [], []
    last_t = last_dur = None
    first_stream_t = None
    reached_end = False
    try:
        for frame in container.decode(stream):
            if frame.pts is None:
                raise DecodeError("decode-video", "a decoded frame has no timestamp (pts)")
            t = float(frame.pts * tb) - origin
            if first_stream_t is None:
                first_stream_t = t
            if t >= hi - _EPS:
                reached_end = True
                break
            if t < lo - _EPS:
                continue
            if size is None:
                size = _target_size(frame.width, frame.height, max_side)
            if size == (frame.width, frame.height):
                rgb = frame.to_ndarray(format="rgb24")
            else:
                rgb = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA").to_ndarray()
            frames.append(rgb)
            times.append(t)
            last_t = t
            last_dur = float(frame.duration * tb) if frame.duration else None
    except DecodeError:
        raise
    except Exception as e:  # FFmpeg errors mid-stream (corrupt / truncated data)
        if not frames:
            raise DecodeError("decode-video", f"{type(e).__name__}: {e}") from None
        # keep what decoded: a truncated tail loses frames, which the counts will show
        log.warning("video decoding stopped early at %.3f s: %s", last_t, e)
    if not frames:
        return frames, times, (lo, lo)
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
    stream_t0 = float((stream.start_time or 0) * tb) - origin if stream.start_time is not None else times[0]
    return frames, times, (max(lo, stream_t0), span_hi)


def _target_size(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    if max_side is None or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _decode_audio(container, k: int, origin: float, lo: float, hi: float, rate: int) -> DecodedAudio:
    """Audio stream ``k`` in [lo, hi), resampled to ``rate`` Hz mono: (N,) float32."""
    import av

    stream = container.streams.audio[k]
    lang = stream.metadata.get("language")
    lang = None if lang in (None, "", "und") else lang
    stream_end = _stream_end(stream, origin)
    a_hi = hi if stream_end is None else min(hi, stream_end)
    n_out = max(0, int(round((a_hi - lo) * rate)))

    # decode from a bit before lo: resampler warm-up, and packets straddling lo
    _seek(container, stream, lo - 0.5, origin)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks: list[np.ndarray] = []
    t0 = None
    try:
        for frame in container.decode(stream):
            if t0 is None:
                if frame.pts is None:
                    raise DecodeError("decode-audio", f"audio stream {k}: a frame has no timestamp")
                frame = _align_to_grid(frame, stream, rate)
                if frame is None:
                    continue
                t0 = float(frame.pts * frame.time_base) - origin
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
            decoded_until = t0 + sum(len(c) for c in chunks) / rate
            if decoded_until > a_hi + 1.0:
                break
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    except DecodeError:
        raise
    except Exception as e:
        if not chunks:
            raise DecodeError("decode-audio", f"audio stream {k}: {type(e).__name__}: {e}") from None
        log.warning("audio stream %d decoding stopped early: %s", k, e)
    if t0 is None:
        raise DecodeError("decode-audio", f"audio stream {k} has no decodable frames")
    decoded = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)

    # sample i of `decoded` is at time t0 + i / rate; copy the range into a zero-filled array
    out = np.zeros(n_out, dtype=np.float32)
    first = int(round((lo - t0) * rate))
    src_lo, src_hi = max(first, 0), min(first + n_out, len(decoded))
    if src_hi > src_lo:
        out[src_lo - first : src_hi - first] = decoded[src_lo:src_hi]
    tail_missing = n_out - max(0, len(decoded) - first)
    if tail_missing > rate // 4:  # decoded AAC is longer than nominal; far shorter = truncated
        raise DecodeError(
            "decode-audio",
            f"audio stream {k} truncated or corrupt: {tail_missing / rate:.3f} s missing before {a_hi:.3f} s",
        )
    missing = n_out - max(0, src_hi - src_lo)
    if missing > rate // 100:  # a stream starting after the range start: zeros before it
        log.debug("audio stream %d: %d of %d samples missing, zero-filled", k, missing, n_out)
    np.clip(out, -1.0, 1.0, out=out)
    return DecodedAudio(samples=out, index=k, language=lang, sample_rate=rate)


def _align_to_grid(frame, stream, rate: int):
    """Drop the first samples of ``frame`` so it starts on a common grid of input and output samples.

    After a seek, decoding starts at some packet; its time need not fall on the
    16 kHz sample grid of the stream start, which would shift the output by up
    to half a sample depending on where the seek landed. Starting on a multiple
    of 1 / gcd(rate_in, rate) s from the stream start makes a cut of a range
    give the same samples as decoding the whole stream (up to resampler warm-up,
    which the 0.5 s decoded before the range absorbs). Returns None if the
    whole frame is dropped.
    """
    import av

    sr = frame.sample_rate
    period = sr // math.gcd(sr, rate)  # input samples per grid step
    s0 = (frame.pts - (stream.start_time or 0)) * frame.time_base * sr  # samples since stream start
    if s0.denominator != 1:  # pts not on the input sample grid: leave as is
        return frame
    skip = (-s0.numerator) % period
    if skip == 0:
        return frame
    if skip >= frame.samples:
        return None
    arr = frame.to_ndarray()
    arr = arr[:, skip:] if frame.format.is_planar else arr[:, skip * len(frame.layout.channels) :]
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=frame.format.name, layout=frame.layout.name)
    out.sample_rate = sr
    out.time_base = frame.time_base
    out.pts = frame.pts + int(round(skip / (sr * frame.time_base)))
    return out
