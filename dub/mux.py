"""Mux new audio tracks into a copy of a media file (PyAV): nothing original is re-encoded.

The output container (mp4) gets, in this order:

- every video, audio and subtitle stream of the input, **stream-copied**: the same packets
  byte for byte (only their timestamps are rescaled to the output stream's time base), with
  the input's language tag and disposition flags;
- one AAC stream per :class:`NewTrack`, tagged with its language and the ``dub`` disposition.

mp4 keeps ``dub`` and ``default`` but drops ``original`` (data_manifests/media.py, measured
with PyAV 18.1); extract/decode.py's rule then still finds the original track: the first
audio stream not flagged ``dub``, which is the input's original because every added stream
is a dub. Data and attachment streams (timecode tracks, fonts) are not copied; the result
lists them.

New audio packets are interleaved with the copied ones by time, as a player reads them. The
first sample of a new track is placed at the container's start, i.e. sample i of a new track
plays at the same instant as sample i of an original track decoded by extract/decode.py.
The output is written through :func:`scav.core.files.atomic_path`: a kill leaves no half file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .languages import is_stored_tag

log = logging.getLogger(__name__)

AAC_FRAME = 1024  # samples per AAC frame: the encoder's (and the duration check's) granularity
_LAYOUTS = {1: "mono", 2: "stereo"}
_BLOCK = 1024 * 16  # samples per frame handed to the encoder


class MuxError(Exception):
    """The output could not be written (``reason`` says why; it becomes a failure row)."""


@dataclass(frozen=True)
class NewTrack:
    """An audio track to add: ``samples`` (n,) mono or (channels, n) float32 in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int
    language: str  # ISO 639-2 tag, e.g. 'spa'
    bit_rate: int = 96_000

    def planar(self) -> np.ndarray:
        """(channels, n) float32, C-contiguous."""
        x = np.asarray(self.samples, dtype=np.float32)
        return np.ascontiguousarray(x[None, :] if x.ndim == 1 else x)


@dataclass
class MuxResult:
    path: Path
    copied: list[int] = field(default_factory=list)  # input stream indices copied
    skipped: list[str] = field(default_factory=list)  # input streams not copied ("2 (data)")
    added: list[int] = field(default_factory=list)  # output stream indices of the new tracks

    def to_dict(self) -> dict:
        return {"path": str(self.path), "copied": self.copied, "skipped": self.skipped, "added": self.added}


def check_track(track: NewTrack) -> None:
    """ValueError naming what is wrong with a track before anything is written."""
    if not is_stored_tag(track.language):
        raise ValueError(f"language tag {track.language!r}: mp4 stores only three-letter ISO 639-2 codes "
                         "(e.g. 'spa', 'fra')")
    x = track.planar()
    if x.ndim != 2 or x.shape[0] not in _LAYOUTS or x.shape[1] == 0:
        raise ValueError(f"track {track.language}: samples must be (n,) or (1|2, n) with n > 0, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"track {track.language}: samples are not all finite")
    if track.sample_rate < 8000:
        raise ValueError(f"track {track.language}: sample rate {track.sample_rate} Hz is below 8 kHz")


def mux_tracks(src: str | os.PathLike, dst: str | os.PathLike, tracks: Sequence[NewTrack],
               drop_audio: Sequence[int] = ()) -> MuxResult:
    """Write ``dst`` (mp4): ``src``'s streams copied, plus ``tracks`` as AAC dubs.

    ``drop_audio``: positions among ``src``'s audio streams (0 = its first audio stream) not to
    copy (an earlier dub being made again). ``src`` may be ``dst`` itself: it is read whole before
    the new file replaces it.

    Raises MuxError (input unreadable, a stream mp4 cannot hold, an encoder error) and
    ValueError (a bad track); ``dst`` is then left as it was.
    """
    import av

    from scav.core.files import atomic_path
    from scav.extract.decode import DecodeError, open_container

    for t in tracks:
        check_track(t)
    dst = Path(dst)
    try:
        with open_container(src, "mux") as inp, atomic_path(dst) as tmp:
            out = av.open(str(tmp), mode="w", format="mp4")
            try:
                result = _mux(inp, out, tracks, set(drop_audio))
            except av.FFmpegError as e:
                raise MuxError(f"{type(e).__name__}: {e}") from None
            finally:
                out.close()
    except DecodeError as e:  # the input could not be opened (or read)
        raise MuxError(f"{src}: {e.reason}") from None
    result.path = dst
    return result


def _mux(inp, out, tracks: Sequence[NewTrack], drop_audio: set[int]) -> MuxResult:
    from av.stream import Disposition

    result = MuxResult(path=Path())
    mapping = {}
    audio_pos = {s.index: k for k, s in enumerate(inp.streams.audio)}
    for s in inp.streams:
        if s.type not in ("video", "audio", "subtitle"):
            result.skipped.append(f"{s.index} ({s.type})")
            continue
        if audio_pos.get(s.index) in drop_audio:
            result.skipped.append(f"{s.index} (audio, replaced)")
            continue
        o = out.add_stream_from_template(s)
        lang = s.metadata.get("language")
        if lang:
            o.metadata["language"] = lang
        o.disposition = s.disposition
        mapping[s.index] = o
        result.copied.append(s.index)
    origin = (inp.start_time or 0) / 1e6  # seconds: where the decoder's time 0 is
    encoders = []
    for t in tracks:
        x = t.planar()
        o = out.add_stream("aac", rate=t.sample_rate)
        o.layout = _LAYOUTS[x.shape[0]]
        o.bit_rate = t.bit_rate
        o.metadata["language"] = t.language
        o.disposition = Disposition.dub
        result.added.append(o.index)
        encoders.append(_Peek(_encode(o, x, t.sample_rate, int(round(origin * t.sample_rate)))))

    for packet in inp.demux([inp.streams[i] for i in mapping]):
        if packet.dts is None and packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        when = _seconds(packet)
        for enc in encoders if when is not None else ():  # new audio up to this instant first: interleaved
            while enc.peek() is not None and (_seconds(enc.peek()) or 0.0) <= when:
                out.mux(enc.next())
        packet.stream = mapping[packet.stream_index]
        out.mux(packet)
    for enc in encoders:
        while enc.peek() is not None:
            out.mux(enc.next())
    return result


def _seconds(packet) -> float | None:
    t = packet.dts if packet.dts is not None else packet.pts
    return None if t is None or packet.time_base is None else float(t * packet.time_base)


def _encode(stream, x: np.ndarray, rate: int, pts0: int) -> Iterator:
    """AAC packets of ``x`` (channels, n), first sample at ``pts0`` (in 1/rate s)."""
    import av

    for i in range(0, x.shape[1], _BLOCK):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i: i + _BLOCK]), format="fltp",
                                           layout=stream.layout.name)
        frame.sample_rate = rate
        frame.pts = pts0 + i
        frame.time_base = Fraction(1, rate)
        yield from stream.encode(frame)
    yield from stream.encode(None)


class _Peek:
    """An iterator whose next item can be looked at without taking it."""

    _END = object()

    def __init__(self, it: Iterator):
        self._it, self._next = it, None
        self._advance()

    def _advance(self) -> None:
        self._next = next(self._it, self._END)

    def peek(self):
        return None if self._next is self._END else self._next

    def next(self):
        item = self._next
        self._advance()
        return item
