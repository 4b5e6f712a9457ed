"""``fbank``: the parameter-free audio stand-in (BEATs' 128-bin Kaldi filterbank, 16 frames
stacked per 160 ms step), and the filterbank BEATs itself reads."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scav.core.schema import EncoderInfo

from .base import (
    AUDIO_RATE,
    AUDIO_STEPS_PER_SECOND,
    BEATS_FBANK_MEAN,
    BEATS_FBANK_STD,
    FBANK_BINS,
    FRAMES_PER_STEP,
    _check_audio,
    _EachAlone,
)

log = logging.getLogger(__name__)



def fbank_features(samples: np.ndarray) -> "torch.Tensor":  # noqa: F821
    """BEATs' fbank: (N,) float32 in [-1, 1] -> (n_fbank, 128) normalised, as BEATs computes it."""
    import torch
    import torchaudio.compliance.kaldi as kaldi

    wav = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None] * 2**15
    fb = kaldi.fbank(
        wav, num_mel_bins=FBANK_BINS, sample_frequency=AUDIO_RATE, frame_length=25, frame_shift=10
    )
    return (fb - BEATS_FBANK_MEAN) / (2 * BEATS_FBANK_STD)

FBANK_PREPROCESSING: dict[str, Any] = {
    "sample_rate": AUDIO_RATE,
    "fbank": "torchaudio.compliance.kaldi.fbank",
    "num_mel_bins": FBANK_BINS,
    "frame_length_ms": 25,
    "frame_shift_ms": 10,
    "snip_edges": True,
    "dither": 0.0,
    "waveform_scale": 2**15,
    "normalise": "(fbank - 15.41663) / (2 * 6.55582)",
    "frames_per_step": FRAMES_PER_STEP,
    "steps_rule": "n_fbank = 1 + (N - 400) // 160; steps = n_fbank // 16 (tail dropped)",
}



class FbankEncoder(_EachAlone):
    """Parameter-free audio stand-in: BEATs' fbank, 16 frames per step stacked time-major -> 2048-d.

    Stacking (not averaging) keeps where an onset falls inside a 160 ms step.
    """

    def __init__(self) -> None:
        self.info = EncoderInfo(
            name="fbank",
            dim=FRAMES_PER_STEP * FBANK_BINS,
            checksum=None,
            stand_in=True,
            steps_per_second=AUDIO_STEPS_PER_SECOND,
            preprocessing={**FBANK_PREPROCESSING, "stacking": "step s = fbank frames 16s..16s+15, (16, 128) flattened time-major"},
        )

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """(N,) float32 16 kHz -> (S, 2048) float32, S = (1 + (N - 400) // 160) // 16."""
        x = _check_audio(samples)
        fb = fbank_features(x)  # (n_fbank, 128)
        s = fb.shape[0] // FRAMES_PER_STEP
        return fb[: s * FRAMES_PER_STEP].reshape(s, FRAMES_PER_STEP * FBANK_BINS).numpy().astype(np.float32)
