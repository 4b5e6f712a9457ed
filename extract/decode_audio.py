"""Audio streams of a container cut by sample time and resampled to 16 kHz mono, in pieces
(the audio rules of :mod:`scav.extract.decode`)."""

from __future__ import annotations

import logging
import math

import numpy as np

from .decode_events import AudioPiece, DecodedAudio, DecodeError, TrackEnd, TrackStart, _seek, _stream_end

log = logging.getLogger(__name__)


def _decode_audio(container, k: int, origin: float, lo: float, hi: float, rate: int) -> DecodedAudio:
    """Audio stream ``k`` in [lo, hi), resampled to ``rate`` Hz mono: (N,) float32 (all in memory)."""
    pieces, head = [], None
    for ev in _audio_events(container, k, origin, lo, hi, rate, 1 << 20):
        if isinstance(ev, TrackStart):
            head = ev
        elif isinstance(ev, AudioPiece):
            pieces.append(ev.samples)
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return DecodedAudio(samples=samples, index=k, language=head.language, sample_rate=rate)


_FROM_STREAM = object()


class _Pieces:
    """Output samples 0..n_out of a track, cut from the decoded stream, handed out ``piece`` at a time."""

    def __init__(self, n_out: int, piece: int):
        self.n_out, self.piece = n_out, max(1, int(piece))
        self.pos = 0  # output samples accepted so far
        self.skip = 0  # decoded samples still to drop before output sample 0
        self.pending: list[np.ndarray] = []
        self.held = 0

    def push(self, x: np.ndarray):
        if self.skip:
            drop = min(self.skip, len(x))
            x, self.skip = x[drop:], self.skip - drop
        x = x[: self.n_out - self.pos]
        if len(x):
            self.pending.append(x)
            self.held += len(x)
            self.pos += len(x)
        if self.held >= self.piece:
            yield from self._flush(final=False)

    def zeros(self, n: int):
        yield from self.push(np.zeros(max(0, min(n, self.n_out - self.pos)), np.float32))

    def _flush(self, final: bool):
        if not self.pending:
            return
        buf = np.concatenate(self.pending).astype(np.float32, copy=False)
        self.pending, self.held = [], 0
        cut = len(buf) if final else (len(buf) // self.piece) * self.piece
        for i in range(0, cut, self.piece):
            yield AudioPiece(np.clip(buf[i : i + self.piece], -1.0, 1.0))
        if cut < len(buf):
            self.pending, self.held = [buf[cut:]], len(buf) - cut

    def finish(self):
        yield from self.zeros(self.n_out - self.pos)
        yield from self._flush(final=True)


def _audio_events(container, k: int, origin: float, lo: float, hi: float, rate: int, piece: int, *,
                  index: int | None = None, language=_FROM_STREAM, original: bool = False, what: str | None = None):
    """TrackStart, AudioPieces, TrackEnd of audio stream ``k`` over [lo, hi) at ``rate`` Hz mono.

    The samples are exactly the whole-range rule of the module docstring, handed
    out in pieces of ``piece`` samples while decoding (at most about two pieces held).
    """
    import av

    stream = container.streams.audio[k]
    if language is _FROM_STREAM:
        language = stream.metadata.get("language")
        language = None if language in (None, "", "und") else language
    stream_end = _stream_end(stream, origin)
    a_hi = hi if stream_end is None else min(hi, stream_end)
    n_out = max(0, int(round((a_hi - lo) * rate)))
    label = f"audio stream {k}"  # a file track's ``what`` is prefixed by open_container
    if what is not None and n_out == 0:
        raise DecodeError("range", f"{what}: the file ends before the clip's range [{lo:g}, {hi:g}) s")
    index = k if index is None else index
    yield TrackStart(index, language, bool(original), n_out, rate)

    # decode from a bit before lo: resampler warm-up, and packets straddling lo
    _seek(container, stream, lo - 0.5, origin)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    out = _Pieces(n_out, piece)
    t0 = None
    first = 0
    n_decoded = 0
    frames = container.decode(stream)
    stopped = False
    while not stopped:
        try:  # FFmpeg's errors only, never the consumer's
            frame = next(frames, None)
            if frame is None:
                outs, stopped = resampler.resample(None), True
            else:
                if t0 is None:
                    if frame.pts is None:
                        raise DecodeError("decode-audio", f"{label}: a frame has no timestamp")
                    frame = _align_to_grid(frame, stream, rate)
                    if frame is None:
                        continue
                outs = resampler.resample(frame)
        except DecodeError:
            raise
        except Exception as e:
            if n_decoded == 0:
                raise DecodeError("decode-audio", f"{label}: {type(e).__name__}: {e}") from None
            log.warning("%s decoding stopped early: %s", label, e)
            break
        if t0 is None and frame is not None:
            t0 = float(frame.pts * frame.time_base) - origin
            # sample i of the decoded stream is at t0 + i / rate; output sample j is decoded sample first + j
            first = int(round((lo - t0) * rate))
            out.skip = max(first, 0)
            yield from out.zeros(-first)  # a stream starting after lo: zeros before it
        for o in outs:
            x = o.to_ndarray().reshape(-1)
            n_decoded += len(x)
            yield from out.push(x)
        if t0 is not None and t0 + n_decoded / rate > a_hi + 1.0:
            break
    if t0 is None:
        raise DecodeError("decode-audio", f"{label} has no decodable frames")
    tail_missing = n_out - max(0, n_decoded - first)
    if tail_missing > rate // 4:  # decoded AAC is longer than nominal; far shorter = truncated
        raise DecodeError(
            "decode-audio",
            f"{label} truncated or corrupt: {tail_missing / rate:.3f} s missing before {a_hi:.3f} s",
        )
    copied = max(0, min(first + n_out, n_decoded) - max(first, 0))
    if n_out - copied > rate // 100:
        log.debug("%s: %d of %d samples missing, zero-filled", label, n_out - copied, n_out)
    yield from out.finish()
    yield TrackEnd(index)


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
