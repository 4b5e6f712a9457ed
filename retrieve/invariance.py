"""Track invariance of the audio space (dubs paper): are a clip's dubs where its original is?

A clip's audio tracks share everything but the speech. A model whose audio space ignores
the language puts them together; one that listens to the words keeps them apart. The
yardstick is the distance between *different clips of the same source* (same film, same
voices, same room): the hardest negatives there are.

For clips i with the original track o and a dub t, and a distance D between audio
representations (two are reported: ``agg`` = 1 - cosine of pooled, L2-normalised
embeddings; ``seq`` = the sequence distance the model retrieves with, between latent
sequences):

- ``own_distance``: mean over clips of D(t_i, o_i);
- ``source_distance``: mean over clips of the mean of D(o_i, o_j) over the other clips j of
  i's source;
- ``invariance`` = 1 - own_distance / source_distance: 1 = the tracks coincide, 0 = a dub is
  as far from its original as another clip of the same source is, < 0 farther (for
  distances >= 0: Euclidean, Wasserstein, 1 - cosine);
- ``track_R@1`` (%): the dub's nearest original among its source's clips is its own clip's
  (strictly nearer than every other; a tie counts as a miss).

Clips without another clip of their source count in ``own_distance`` only.
:func:`invariance_from_distances` is the pure computation (:func:`invariance_scores` its
pooled-cosine case); :func:`run` encodes a split with a checkpoint for every track and adds
cross-modal retrieval with each track as the query.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

log = logging.getLogger(__name__)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def invariance_from_distances(d_dub_orig: np.ndarray, d_orig_orig: np.ndarray, sources: list[str]) -> dict:
    """Scores of one dub track (module docstring) from two (N, N) distance matrices.

    d_dub_orig[i, j] = D(dub of clip i, original of clip j); d_orig_orig[i, j] = D(original
    of i, original of j); sources: (N,) source of each clip.
    """
    d_to, d_oo = np.asarray(d_dub_orig, dtype=np.float64), np.asarray(d_orig_orig, dtype=np.float64)
    n = len(sources)
    if d_to.shape != (n, n) or d_oo.shape != (n, n):
        raise ValueError(f"shapes differ: dub-original {d_to.shape}, original-original {d_oo.shape}, "
                         f"{n} sources")
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sources):
        by_source[s].append(i)
    own = np.diag(d_to)
    src_dist, hits = [], []
    for members in by_source.values():
        if len(members) < 2:
            continue
        idx = np.asarray(members)
        m = len(idx)
        others = ~np.eye(m, dtype=bool)
        src_dist.extend(np.where(others, d_oo[np.ix_(idx, idx)], 0.0).sum(1) / (m - 1))
        block = d_to[np.ix_(idx, idx)]  # dub i against the originals of its source
        hits.extend(np.diag(block) < np.where(others, block, np.inf).min(1))
    own_mean = float(own.mean())
    out = {"clips": n, "own_distance": own_mean}
    if src_dist:
        source_mean = float(np.mean(src_dist))
        out.update(source_distance=source_mean, invariance=1.0 - own_mean / source_mean,
                   **{"track_R@1": 100.0 * float(np.mean(hits))}, clips_with_source_peers=len(hits))
    return out


def invariance_scores(original: np.ndarray, dub: np.ndarray, sources: list[str]) -> dict[str, float]:
    """:func:`invariance_from_distances` with D = 1 - cosine of pooled embeddings (N, c) (any
    scale: they are L2-normalised here)."""
    o, d = _normalised(original), _normalised(dub)
    if o.shape != d.shape:
        raise ValueError(f"shapes differ: original {o.shape}, dub {d.shape}")
    return invariance_from_distances(1.0 - d @ o.T, 1.0 - o @ o.T, sources)


def sequence_distances(spec, a, b) -> np.ndarray:
    """(N, N) ``spec`` distances between the latent sequences of two Latents (row i of a vs
    clip j of b), on the CPU in float64 output."""
    import torch

    xa, ma = a.take(np.arange(len(a)))
    xb, mb = b.take(np.arange(len(b)))
    with torch.no_grad():
        return spec.matrix(xa, ma, xb, mb).double().numpy()


def run(cfg, tracks: list | None = None, progress=None) -> dict:
    """Encode ``cfg.split`` with ``cfg.checkpoint`` once per audio track and score it.

    cfg: a :class:`~scav.retrieve.config.RetrieveConfig` (its audio_track is the original, the
    reference); tracks: the dubs to compare (language tags or indices; default: every track
    that all clips of the split carry besides the reference). Only clips that carry every
    compared track are used. -> {"reference", "tracks": {tag: {"agg": scores, "seq": scores,
    "retrieval": {method: {"a2v": ..., "v2a": ...}}}}, "retrieval_reference": ...}.
    """
    import dataclasses

    from scav.core.cache import FeatureCache
    from scav.core.schema import CacheError

    from . import evaluate
    from .query import take_latents

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
    ref = ref_enc.latents.audio
    ref_emb = ref.emb[ref_rows]
    clip_sources = [sources[c] for c in keep]
    ref_seq = take_latents(ref, ref_rows)
    d_oo_seq = sequence_distances(ref_enc.distance, ref_seq, ref_seq)
    out = {"split": cfg.split, "reference": cfg.audio_track, "clips": len(keep),
           "checkpoint": str(cfg.checkpoint), "step": ref_enc.ckpt_meta["step"],
           "stand_in_encoders": bool(ref_enc.cache_meta.video.stand_in or ref_enc.cache_meta.audio.stand_in),
           "retrieval_reference": _retrieval(cfg, ref_enc), "tracks": {}}
    for t in tracks:
        enc, rows = encoded(t)
        dub = enc.latents.audio
        seq = invariance_from_distances(sequence_distances(enc.distance, take_latents(dub, rows), ref_seq), d_oo_seq,
                                        clip_sources)
        out["tracks"][str(t)] = {"agg": invariance_scores(ref_emb, dub.emb[rows], clip_sources), "seq": seq,
                                 "retrieval": _retrieval(cfg, enc)}
    out["seq_distance"] = ref_enc.distance.label
    return out


def _retrieval(cfg, enc) -> dict:
    """R@1/5/10, MedR, MeanR per method and direction of the encoded split (evaluate.report)."""
    from . import evaluate

    rep = evaluate.report(cfg, enc, evaluate.search_split(cfg, enc))
    return {m: {d: r[d] for d in ("a2v", "v2a")} for m, r in rep["results"].items()}
