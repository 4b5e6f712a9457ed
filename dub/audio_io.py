"""Audio in and out of scav-dub: every track of a container as scav's decoder reads it, WAV files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def read_audio(path: str | os.PathLike, sample_rate: int):
    """Every audio stream of a container over the whole file, as scav's decoder reads them
    (:func:`scav.extract.decode.read_audio_tracks`: samples mono at ``sample_rate``,
    language, original flag; tests check it equals ``decode_clip``'s audio)."""
    from ..extract import decode

    return decode.read_audio_tracks(path, sample_rate)


def original_index(tracks) -> int:
    """Position of the original track (flagged by the decoder's rule), else 0."""
    return next((k for k, t in enumerate(tracks) if t.original), 0)


def write_wav(path: Path, x: np.ndarray, sr: int) -> None:
    """16-bit PCM mono WAV, atomically."""
    import wave

    from ..core.files import atomic_path

    pcm = np.round(np.clip(np.asarray(x, np.float64), -1.0, 1.0) * 32767.0).astype("<i2")
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sr)
            w.writeframes(pcm.tobytes())
