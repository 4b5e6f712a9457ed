"""Track invariance of the audio space (dubs paper): are a clip's dubs where its original is?

A clip's audio tracks share everything but the speech. A model whose audio space ignores
the language puts them together; one that listens to the words keeps them apart. The
yardstick is the distance between *different clips of the same source* (same film, same
voices, same room): the hardest negatives there are.

For each clip i with the original track o and a dub t (pooled, L2-normalised audio
embeddings e_o, e_t):

- ``own_distance``: mean over clips of 1 - cos(e_o[i], e_t[i]);
- ``source_distance``: mean over clips of the mean of 1 - cos(e_o[i], e_o[j]) over the other
  clips j of i's source;
- ``invariance`` = 1 - own_distance / source_distance: 1 = the tracks coincide, 0 = a dub is
  as far from its original as another clip of the same source is, < 0 farther;
- ``track_R@1`` (%): the dub's nearest original-track embedding among its source's clips is
  its own clip's.

Clips without another clip of their source count in ``own_distance`` only.
:func:`invariance_scores` is the pure computation; :func:`run` encodes a split with a
checkpoint for every track and adds cross-modal retrieval with each track as the query.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

log = logging.getLogger(__name__)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def invariance_scores(original: np.ndarray, dub: np.ndarray, sources: list[str]) -> dict[str, float]:
    """Scores of one dub track against the original (module docstring).

    original, dub: (N, c) pooled audio embeddings of the same N clips (row i = clip i, any
    scale: they are L2-normalised here); sources: (N,) source of each clip.
    """
    o, d = _normalised(original), _normalised(dub)
    if o.shape != d.shape or len(sources) != len(o):
        raise ValueError(f"shapes differ: original {o.shape}, dub {d.shape}, {len(sources)} sources")
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sources):
        by_source[s].append(i)
    own = 1.0 - np.einsum("ic,ic->i", o, d)
    src_dist, hits = [], []
    for members in by_source.values():
        if len(members) < 2:
            continue
        idx = np.asarray(members)
        cos_oo = o[idx] @ o[idx].T  # (m, m)
        m = len(idx)
        src_dist.extend((m - 1 - cos_oo.sum(1) + np.diag(cos_oo)) / (m - 1))  # mean of 1 - cos over j != i
        cos_do = d[idx] @ o[idx].T  # dub i against the originals of its source
        # a tie counts against the clip (strictly better than every other clip of the source)
        own_cos = np.diag(cos_do)
        others = cos_do - np.eye(m) * 1e9
        hits.extend(own_cos > others.max(1))
    own_mean = float(own.mean())
    out = {"clips": int(len(o)), "own_distance": own_mean}
    if src_dist:
        source_mean = float(np.mean(src_dist))
        out.update(source_distance=source_mean, invariance=1.0 - own_mean / source_mean,
                   **{"track_R@1": 100.0 * float(np.mean(hits))}, clips_with_source_peers=len(hits))
    return out


def run(cfg, tracks: list | None = None, progress=None) -> dict:
    """Encode ``cfg.split`` with ``cfg.checkpoint`` once per audio track and score it.

    cfg: a :class:`~scav.retrieve.config.RetrieveConfig` (its audio_track is the original, the
    reference); tracks: the dubs to compare (language tags or indices; default: every track
    that all clips of the split carry besides the reference). Only clips that carry every
    compared track are used. -> {"reference", "tracks": {tag: {invariance scores...,
    "retrieval": {method: {"a2v": ..., "v2a": ...}}}}, "retrieval_reference": ...}.
    """
    import dataclasses

    from scav.core.cache import FeatureCache
    from scav.core.schema import CacheError

    from . import evaluate

    cfg.validate()
    cache = FeatureCache.open(cfg.cache)
    clips = cache.require_split(cfg.split)
    if tracks is None:
        tags = [{(t.language or str(j)) for j, t in enumerate(c.tracks)} for c in clips]
        common = set.intersection(*tags) if tags else set()
        ref = clips[0].tracks[clips[0].track_index(cfg.audio_track)] if clips else None
        ref_tag = (ref.language or str(ref.index)) if ref is not None else None
        tracks = sorted(common - {ref_tag, str(cfg.audio_track)})
    if not tracks:
        raise CacheError(f"split {cfg.split!r} has no audio track besides {cfg.audio_track!r} on every clip: "
                         "nothing to compare (track invariance needs dubbed clips)")
    keep = [c.clip_id for c in clips if c.find_track(cfg.audio_track) is not None
            and all(c.find_track(t) is not None for t in tracks)]
    if len(keep) < 2:
        raise CacheError(f"fewer than 2 clips of {cfg.split!r} carry tracks {[cfg.audio_track, *tracks]}")
    sources = {c.clip_id: c.source for c in clips}

    def encoded(track):
        enc = evaluate.encode(dataclasses.replace(cfg, audio_track=track), cache, progress)
        row = {cid: i for i, cid in enumerate(enc.latents.clip_ids)}
        order = np.asarray([row[c] for c in keep])
        return enc, order

    ref_enc, ref_rows = encoded(cfg.audio_track)
    ref_audio = ref_enc.latents.audio.emb[ref_rows]
    out = {"split": cfg.split, "reference": cfg.audio_track, "clips": len(keep),
           "checkpoint": str(cfg.checkpoint), "step": ref_enc.ckpt_meta["step"],
           "stand_in_encoders": bool(ref_enc.cache_meta.video.stand_in or ref_enc.cache_meta.audio.stand_in),
           "retrieval_reference": _retrieval(cfg, ref_enc), "tracks": {}}
    for t in tracks:
        enc, rows = encoded(t)
        scores = invariance_scores(ref_audio, enc.latents.audio.emb[rows], [sources[c] for c in keep])
        out["tracks"][str(t)] = {**scores, "retrieval": _retrieval(cfg, enc)}
    return out


def _retrieval(cfg, enc) -> dict:
    """R@1/5/10, MedR, MeanR per method and direction of the encoded split (evaluate.report)."""
    from . import evaluate

    rep = evaluate.report(cfg, enc, evaluate.search_split(cfg, enc))
    return {m: {d: r[d] for d in ("a2v", "v2a")} for m, r in rep["results"].items()}
