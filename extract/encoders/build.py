"""Encoders by name (the names the cache records)."""

from __future__ import annotations

import logging

from .base import AUDIO_ENCODERS, VIDEO_ENCODERS, AudioEncoder, VideoEncoder
from .beats import BeatsEncoder
from .clip import ClipVisionEncoder
from .fbank import FbankEncoder
from .pixels import PixelsEncoder

log = logging.getLogger(__name__)



def build_video_encoder(
    name: str,
    weights=None,
    device: str = "cpu",
    batch_size: int = 64,
    preprocess: str = "pil",
    frame_batch: int = 1024,
    pack: bool | None = None,
) -> VideoEncoder:
    """``pixels`` (parameter-free) or ``clip-vit-b32`` (weights: a local folder, a Hugging Face repository id
    loaded as transformers does (downloaded into the HF cache with internet, from it when HF_HUB_OFFLINE is set),
    or None for openai/clip-vit-base-patch32 the same way).

    CLIP options (ignored by ``pixels``): ``preprocess`` ``"pil"`` | ``"tensor"`` (part of the cache
    identity), ``frame_batch`` frames per batch in ``encode_many``, ``pack`` frames across clips
    (default: on CUDA only); see :class:`ClipVisionEncoder`."""
    if name == "pixels":
        return PixelsEncoder()
    if name == "clip-vit-b32":
        return ClipVisionEncoder(
            weights=weights, device=device, batch_size=batch_size, preprocess=preprocess,
            frame_batch=frame_batch, pack=pack,
        )
    raise ValueError(f"unknown video encoder {name!r}; choose one of {VIDEO_ENCODERS}")


def build_audio_encoder(
    name: str,
    weights=None,
    device: str = "cpu",
    expected_sha256: str | None = None,
    clip_batch: int = 32,
    window_steps: int | None = None,
) -> AudioEncoder:
    """``fbank`` (parameter-free) or ``beats-iter3-as2m`` (weights: an official iter3+ AS2M .pt checkpoint,
    the paper's being BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt). ``clip_batch``: most equal-length
    clips per BEATs call in ``encode_many``; ``window_steps``: BEATs' window W in 160 ms steps (None: 64 =
    10.24 s; part of the encoder identity when not the default). Both are ignored by ``fbank``, whose
    features do not depend on how a clip is cut."""
    if name == "fbank":
        return FbankEncoder()
    if name == "beats-iter3-as2m":
        return BeatsEncoder(
            weights=weights, device=device, expected_sha256=expected_sha256, clip_batch=clip_batch,
            window_steps=window_steps,
        )
    raise ValueError(f"unknown audio encoder {name!r}; choose one of {AUDIO_ENCODERS}")
