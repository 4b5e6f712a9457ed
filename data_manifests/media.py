"""Write real media files (H.264 video + AAC audio in mp4) with PyAV.

Used by the synthetic benchmark and by the tests, which need files with mixed
frame rates, variable frame rate, several audio streams, odd sample rates and
channel layouts. PyAV's wheels carry FFmpeg, so no system FFmpeg is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


@dataclass
class AudioSpec:
    """One audio stream to write: ``samples`` is (channels, n) float32 in [-1, 1].

    ``original`` / ``dub`` set the stream's FFmpeg disposition (original-language
    track / dubbed track); unset, the stream gets none (what files had before).
    mp4 keeps only ``dub`` (and ``default``, written with ``original``) of these;
    Matroska keeps both (measured with PyAV 18.1), hence the reading rule in
    extract/decode.py.
    """

    samples: np.ndarray
    sample_rate: int
    language: str | None = None
    original: bool | None = None
    dub: bool = False

    def disposition(self):
        """The ``av.stream.Disposition`` flags to write (0 = none)."""
        from av.stream import Disposition

        if self.original and self.dub:
            raise ValueError("an audio stream cannot be both the original and a dub")
        if self.original:
            return Disposition.original | Disposition.default
        return Disposition.dub if self.dub else Disposition(0)


def write_media(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray] | np.ndarray | None,
    fps: float = 25.0,
    audio: list[AudioSpec] | None = None,
    frame_times: list[float] | None = None,
    crf: int = 23,
) -> Path:
    """Write an mp4 with an H.264 video stream and zero or more AAC streams.

    frames: (T, H, W, 3) uint8 RGB (or an iterable of (H, W, 3) frames); None for
    audio-only files. ``frame_times`` (seconds, increasing) gives each frame an
    explicit timestamp, which makes a variable-frame-rate file.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = audio or []
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    container = av.open(str(tmp), mode="w")
    try:
        vstream = None
        frame_iter = iter(frames) if frames is not None else iter(())
        first = next(frame_iter, None)
        if first is not None:
            h, w = first.shape[:2]
            rate = Fraction(fps).limit_denominator(1001)
            vstream = container.add_stream("libx264", rate=rate)
            vstream.width, vstream.height = w - w % 2, h - h % 2
            vstream.pix_fmt = "yuv420p"
            # One encoder thread: x264's output depends on its thread count, and the
            # synthetic benchmark must be byte-identical for a seed on any machine.
            # Measured (PyAV 18.1): 32x32 frames still give other bytes now and then in a
            # process that decoded video before (8 concurrent runs: later sources differ;
            # 64x64: 16/16 identical), so tests compare what goes in, not the mp4 bytes.
            vstream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
            if frame_times is not None:
                vstream.codec_context.time_base = Fraction(1, 90000)
        astreams = []
        for spec in audio:
            channels = spec.samples.shape[0]
            s = container.add_stream("aac", rate=spec.sample_rate)
            s.layout = _LAYOUTS[channels]
            if spec.language:
                s.metadata["language"] = spec.language
            flags = spec.disposition()
            if flags:
                s.disposition = flags
            astreams.append(s)

        if vstream is not None:
            for i, frame in enumerate(_chain(first, frame_iter)):
                vf = av.VideoFrame.from_ndarray(
                    np.ascontiguousarray(frame[: vstream.height, : vstream.width]), format="rgb24"
                )
                if frame_times is not None:
                    vf.pts = int(round(frame_times[i] * 90000))
                    vf.time_base = Fraction(1, 90000)
                for packet in vstream.encode(vf):
                    container.mux(packet)
            for packet in vstream.encode():
                container.mux(packet)

        for spec, s in zip(audio, astreams):
            samples = np.ascontiguousarray(spec.samples, dtype=np.float32)
            block = 1024 * 16
            for i in range(0, samples.shape[1], block):
                af = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, i : i + block]), format="fltp", layout=s.layout.name
                )
                af.sample_rate = spec.sample_rate
                af.pts = i
                af.time_base = Fraction(1, spec.sample_rate)
                for packet in s.encode(af):
                    container.mux(packet)
            for packet in s.encode():
                container.mux(packet)
    finally:
        container.close()
    os.replace(tmp, path)
    return path


def _chain(first, rest):
    yield first
    yield from rest
