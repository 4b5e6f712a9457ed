"""Pooled clip embeddings of labelled splits for a trained checkpoint (the probe's inputs).

The encoding is retrieval's: :func:`scav.model.checkpoint.load_trained` loads and checks
the checkpoint, :func:`scav.model.embed.embed_split` runs the model and mean-pools each
clip's valid latent steps (the model's own pooling). Here we only choose the clips (both
modalities present, as the model encodes both; a label) and the modality:
'video', 'audio' (the selected track) or 'both' = [video, audio] concatenated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from scav.core.cache import FeatureCache
from scav.core.schema import CacheError, ClipInfo, TrackSelector
from scav.model import embed
from scav.model.checkpoint import load_trained

from .config import MODALITIES

log = logging.getLogger(__name__)


@dataclass
class LabelledClips:
    """A split's clips usable by the probe, and how many were left out (and why)."""

    split: str
    clips: list[ClipInfo]
    unusable: int  # no video steps or no steps in the selected audio track
    unlabelled: int


@dataclass
class SplitEmbeddings:
    split: str
    clip_ids: list[str]
    labels: list[str]
    x: np.ndarray  # (N, D) float32: D = c, or 2c for 'both'
    unusable: int
    unlabelled: int


def labelled_clips(cache: FeatureCache, split: str, track: TrackSelector = 0) -> LabelledClips:
    """The split's clips with both modalities and a label (cache order), with warnings for the
    others; CacheError for a split that does not exist or has no such clip."""
    usable, bad = embed.usable_clips(cache.require_split(split), track)
    if bad:
        log.warning("%d clips of %s lack video steps or audio track %r and are left out, e.g. %s",
                    len(bad), split, track, bad[0].clip_id)
    labelled = [c for c in usable if c.label.strip()]
    unlabelled = len(usable) - len(labelled)
    if not labelled:
        raise CacheError(f"split {split!r} has no labelled clip with video and audio track {track!r} "
                         f"({len(usable)} usable clips, none with a label): a probe needs class labels")
    if unlabelled:
        example = next(c.clip_id for c in usable if not c.label.strip())
        log.warning("%d clips of %s have no label and are left out, e.g. %s", unlabelled, split, example)
    return LabelledClips(split, labelled, len(bad), unlabelled)


def pooled(lat: embed.SplitLatents, modality: str) -> np.ndarray:
    """(N, c) video or audio embeddings, or (N, 2c) [video, audio] for 'both'."""
    if modality == "video":
        return np.asarray(lat.video.emb, dtype=np.float32)
    if modality == "audio":
        return np.asarray(lat.audio.emb, dtype=np.float32)
    if modality == "both":
        return np.concatenate([lat.video.emb, lat.audio.emb], axis=1).astype(np.float32)
    raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")


@dataclass
class Embedded:
    splits: dict[str, SplitEmbeddings]  # by split name
    ckpt_meta: dict  # from scav.model.checkpoint.load_model
    seconds: float


def embed_labelled(cache: FeatureCache, checkpoint: str, selections: list[LabelledClips], modality: str,
                   device: torch.device, track: TrackSelector = 0, batch_size: int = 64) -> Embedded:
    """Encode each selection with the checkpoint (loaded once) and pool it to ``modality``.

    Raises CheckpointError / CacheError / ValueError (from ``load_trained``) on a checkpoint
    that does not fit the cache."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    model, _, meta, _ = load_trained(checkpoint, cache.meta, device)
    t0 = time.perf_counter()
    out = {}
    for sel in selections:
        lat = embed.embed_split(model, cache.path, cache.meta, sel.split, sel.clips,
                                batch_size=batch_size, device=device, track=track)
        out[sel.split] = SplitEmbeddings(sel.split, lat.clip_ids, [c.label.strip() for c in sel.clips],
                                         pooled(lat, modality), sel.unusable, sel.unlabelled)
    return Embedded(out, meta, time.perf_counter() - t0)
