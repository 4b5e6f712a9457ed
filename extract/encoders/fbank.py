"""``fbank``: the parameter-free audio stand-in (BEATs' 128-bin Kaldi filterbank, 16 frames
stacked per 160 ms step), and the filterbank BEATs itself reads."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from scav.core.schema import EncoderInfo

from .base import (
    AUDIO_RATE,
    AUDIO_STEPS_PER_SECOND,
    BEATS_FBANK_MEAN,
    BEATS_FBANK_STD,
    FBANK_BINS,
    FBANK_HOP,
    FBANK_WIN,
    FRAMES_PER_STEP,
    _EachAlone,
    audio_steps,
    check_piece,
    too_short,
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

STEP_SAMPLES = FRAMES_PER_STEP * FBANK_HOP  # 2560: samples between the starts of two steps
FBANK_BLOCK_STEPS = 256  # steps per fbank call over a long track (41 s: ~10 MB of framed samples)


def step_span(k: int) -> int:
    """Samples that make exactly ``k`` steps (16k fbank frames): 2560 (k - 1) + 2800."""
    return STEP_SAMPLES * (k - 1) + FBANK_WIN + (FRAMES_PER_STEP - 1) * FBANK_HOP


class SampleBuffer:
    """Samples received and not consumed yet, kept as the pieces they came in.

    ``head(n)`` copies only the first n samples (a view when one piece holds them),
    so a long piece is never copied whole; ``drop(n)`` forgets the first n.
    """

    def __init__(self) -> None:
        self._parts: deque[np.ndarray] = deque()
        self.n = 0

    def push(self, x: np.ndarray) -> None:
        if len(x):
            self._parts.append(x)
            self.n += len(x)

    def head(self, n: int) -> np.ndarray:
        """The first ``n`` samples (n <= self.n), (n,) float32."""
        if self._parts and len(self._parts[0]) >= n:
            return self._parts[0][:n]
        out, got = [], 0
        for part in self._parts:
            out.append(part[: n - got])
            got += len(out[-1])
            if got >= n:
                break
        return np.concatenate(out)

    def drop(self, n: int) -> None:
        self.n -= n
        while n and self._parts:
            first = self._parts[0]
            if len(first) <= n:
                n -= len(first)
                self._parts.popleft()
            else:
                self._parts[0] = first[n:]
                n = 0


def fbank_step_blocks(chunks: Iterable[np.ndarray], block_steps: int = FBANK_BLOCK_STEPS) -> Iterator[torch.Tensor]:  # noqa: F821
    """BEATs' normalised fbank of one clip given in pieces -> blocks (16 k_i, 128), k_i <= ``block_steps``
    whole steps each; together the first 16 S frames of :func:`fbank_features` over the whole clip,
    S = audio_steps(N) (the tail short of a step is dropped, as there).

    Kaldi frames are independent of each other (25 ms windows every 10 ms, snip_edges; per frame
    DC removal, pre-emphasis, window, FFT, mel; dither 0), so a block computed from its own
    samples ``[2560 s0, 2560 s0 + step_span(k))`` has exactly the whole track's values for those
    frames (tested bit for bit: the per-row matmul and FFT do not depend on the row count here).
    Memory: at most ``block_steps`` steps of samples and frames at a time, plus the piece in hand.
    Raises EncodeError if the clip is too short for one step.
    """
    buf, total = SampleBuffer(), 0
    for piece in chunks:
        x = check_piece(piece)
        total += len(x)
        buf.push(x)
        while audio_steps(buf.n) >= block_steps:  # full blocks while the clip streams in
            yield fbank_features(buf.head(step_span(block_steps)))
            buf.drop(STEP_SAMPLES * block_steps)
    if audio_steps(total) == 0:
        raise too_short(total)
    while (k := min(audio_steps(buf.n), block_steps)) > 0:
        yield fbank_features(buf.head(step_span(k)))
        buf.drop(STEP_SAMPLES * k)


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

    def encode_chunks(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Consecutive pieces of one clip's (n_i,) float32 16 kHz samples, any sizes -> (S_i, 2048) float32
        blocks whose concatenation is exactly ``encode`` of the whole clip; memory does not grow with
        the clip's duration (see :func:`fbank_step_blocks`)."""
        for fb in fbank_step_blocks(chunks):  # (16 k, 128)
            yield fb.reshape(-1, FRAMES_PER_STEP * FBANK_BINS).numpy().astype(np.float32)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """(N,) float32 16 kHz -> (S, 2048) float32, S = (1 + (N - 400) // 160) // 16."""
        return np.concatenate(list(self.encode_chunks([samples])))
