"""What decoding hands over: one clip as a stream of events (video chunks, audio pieces), the
whole-clip results built from them, the one error type (``DecodeError``), and the container
time helpers the video and audio sides share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

AUDIO_RATE = 16000
_EPS = 1e-6  # seconds; pts resolution is >= 1/90000 s, far coarser


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


@dataclass
class VideoChunk:
    """Consecutive frames of the clip, already preprocessed: ``frames`` (n, ...) and ``times`` (n,) s."""

    frames: np.ndarray
    times: np.ndarray


@dataclass
class VideoEnd:
    """After the last video chunk: the range actually decoded and the frame rate over it."""

    n_frames: int
    fps: float
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class TrackStart:
    """An audio track begins; its samples follow as ``AudioPiece``s, then ``TrackEnd``."""

    index: int
    language: str | None
    original: bool
    n_samples: int
    sample_rate: int = AUDIO_RATE


@dataclass
class AudioPiece:
    samples: np.ndarray  # (n,) float32


@dataclass
class TrackEnd:
    index: int



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
