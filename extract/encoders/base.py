"""What every encoder shares: the audio framing constants, the encoder protocols, input checks
and the per-clip fallback (``encode_each_alone``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np
from scav.core.schema import EncoderInfo

log = logging.getLogger(__name__)



AUDIO_RATE = 16000
FBANK_WIN = 400  # 25 ms at 16 kHz
FBANK_HOP = 160  # 10 ms at 16 kHz
FBANK_BINS = 128
FRAMES_PER_STEP = 16  # BEATs patch height: 16 fbank frames = 160 ms
AUDIO_STEPS_PER_SECOND = AUDIO_RATE / FBANK_HOP / FRAMES_PER_STEP  # 6.25
BEATS_FBANK_MEAN = 15.41663
BEATS_FBANK_STD = 6.55582
PIXELS_SIDE = 16
CLIP_REPO = "openai/clip-vit-base-patch32"
# the checkpoint the paper used ("iter3+ (AS2M) (cpt2)", classifier head discarded)
BEATS_PAPER_CKPT = "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"
BEATS_PRETRAINED_CKPT = "BEATs_iter3_plus_AS2M.pt"  # self-supervised only, no head: accepted, not the paper's
BEATS_VARIANTS = {"finetuned": BEATS_PAPER_CKPT, "pretrained": BEATS_PRETRAINED_CKPT}

VIDEO_ENCODERS = ("pixels", "clip-vit-b32")
AUDIO_ENCODERS = ("fbank", "beats-iter3-as2m")


class EncodeError(Exception):
    """Input an encoder cannot turn into features (e.g. audio shorter than one step)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


class VideoEncoder(Protocol):
    """``frame_prep()`` (optional): the per-frame preprocessing decode workers run (``frame_prep.py``),
    and ``encode_prepped(frames)`` takes a chunk of its outputs; ``encode`` takes raw frames."""

    info: EncoderInfo

    def encode(self, frames: np.ndarray) -> np.ndarray:  # (T, H, W, 3) uint8 -> (T, D) float32
        ...

    def frame_prep(self):  # a picklable (H, W, 3) uint8 -> array callable, or None
        ...

    def encode_prepped(self, frames: np.ndarray) -> np.ndarray:  # (T, *prep_out) -> (T, D) float32
        ...

    def encode_many(self, clips: Sequence[np.ndarray]) -> list[np.ndarray | EncodeError]:
        ...


class AudioEncoder(Protocol):
    info: EncoderInfo

    def encode(self, samples: np.ndarray) -> np.ndarray:  # (N,) float32 -> (S, D) float32
        ...

    def encode_chunks(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """(S_i, D) float32 blocks whose concatenation is ``encode(np.concatenate(chunks))``."""
        ...

    def encode_many(self, clips: Sequence[np.ndarray]) -> list[np.ndarray | EncodeError]:
        ...


def _checked(clips, check) -> tuple[list, dict[int, np.ndarray]]:
    """(outputs with each invalid clip's EncodeError in place, {index: checked array} of the rest)."""
    out: list[np.ndarray | EncodeError | None] = [None] * len(clips)
    valid: dict[int, np.ndarray] = {}
    for i, c in enumerate(clips):
        try:
            valid[i] = check(c)
        except EncodeError as e:
            out[i] = e
    return out, valid


def encode_each_alone(enc, clips: Sequence[np.ndarray], catch: type[BaseException] = EncodeError) -> list:
    """One output per clip, in order: ``enc.encode(clip)``, or the ``catch`` exception it raised
    (so an error lands on its own clip and the others still run)."""
    out: list = []
    for x in clips:
        try:
            out.append(enc.encode(x))
        except catch as e:
            out.append(e)
    return out


class _EachAlone:
    """``encode_many`` for encoders that gain nothing from batching clips: each clip alone."""

    def encode_many(self, clips: Sequence[np.ndarray]) -> list[np.ndarray | EncodeError]:
        """One output per clip, in order: ``encode(clip)``, or the ``EncodeError`` it raised."""
        return encode_each_alone(self, clips)




def encode_chunks(enc, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """``enc.encode_chunks(chunks)`` where the encoder streams; otherwise the default: concatenate the
    pieces, then ``encode`` once (memory then grows with the clip's duration)."""
    own = getattr(enc, "encode_chunks", None)
    if own is not None:
        yield from own(chunks)
        return
    pieces = [np.asarray(c, dtype=np.float32) for c in chunks]
    yield enc.encode(np.concatenate(pieces) if pieces else np.zeros(0, np.float32))


def audio_steps(n_samples: int) -> int:
    """Steps an audio encoder gives for ``n_samples`` at 16 kHz (0 if under one fbank frame)."""
    if n_samples < FBANK_WIN:
        return 0
    return (1 + (n_samples - FBANK_WIN) // FBANK_HOP) // FRAMES_PER_STEP


def check_piece(samples: np.ndarray) -> np.ndarray:
    """Samples of a clip, or one piece of them: (n,) finite -> float32 (EncodeError otherwise)."""
    x = np.asarray(samples)
    if x.ndim != 1:
        raise EncodeError("encode", f"audio must be (N,) mono samples, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise EncodeError("encode", "audio has NaN or infinite samples")
    return x.astype(np.float32, copy=False)


def too_short(n_samples: int) -> EncodeError:
    """The error for a clip of ``n_samples`` that makes no step."""
    need = FBANK_WIN + (FRAMES_PER_STEP - 1) * FBANK_HOP
    return EncodeError(
        "encode",
        f"audio too short for one step: {n_samples} samples ({n_samples / AUDIO_RATE:.3f} s), "
        f"need >= {need} ({need / AUDIO_RATE:.3f} s)",
    )


def _check_audio(samples: np.ndarray) -> np.ndarray:
    x = check_piece(samples)
    if audio_steps(len(x)) == 0:
        raise too_short(len(x))
    return x


def _check_frames(frames: np.ndarray) -> np.ndarray:
    x = np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise EncodeError("encode", f"frames must be (T, H, W, 3) uint8, got {x.shape} {x.dtype}")
    if x.shape[0] == 0:
        raise EncodeError("encode", "no frames to encode")
    return x




