"""One retrieval run (``scav-retrieve`` without the CLI): encode -> search -> report.

- :func:`encode`: load the checkpoint (:func:`scav.model.checkpoint.load_trained`), check it
  against the cache, build its :class:`~scav.sequence.spec.DistanceSpec`, and embed the split
  (or reuse an export).
- :func:`search_split`: agg / seq / hybrid ranks in both directions (:mod:`.search`).
- :func:`report`: R@1/5/10, MedR, MeanR and timings as one JSON-ready dict.

Ranks: 1 + candidates scoring strictly better + tied candidates with a smaller index.
hybrid: agg top-k re-ranked by seq; a partner outside the top-k keeps its agg rank.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch
from scav.core.cache import FeatureCache
from scav.core.cli import write_json
from scav.core.device import resolve_device
from scav.core.schema import CacheError, CacheMeta
from scav.model import embed
from scav.model.checkpoint import load_trained
from scav.model.config import ObjectiveConfig
from scav.sequence.metrics import summarize_ranks
from scav.sequence.spec import DistanceSpec

from . import search
from .blocks import BlockConfig
from .config import DEFAULT_K, RetrieveConfig

__all__ = ["RetrieveConfig", "Encoded", "encode", "search_split", "report", "run"]

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """A split encoded by a trained model, ready to search."""

    latents: embed.SplitLatents
    objective: ObjectiveConfig
    ckpt_meta: dict  # from scav.model.checkpoint.load_model
    cache_meta: CacheMeta
    distance: DistanceSpec
    device: torch.device
    skipped: int  # clips left out (no video or no audio steps)
    seconds: float


def _hybrid_k(cfg: RetrieveConfig, n: int) -> int:
    if "hybrid" in cfg.methods and cfg.k is not None and cfg.k > n:
        raise ValueError(f"k={cfg.k} is larger than split {cfg.split!r} ({n} clips); use --k {n} or less")
    return min(DEFAULT_K, n) if cfg.k is None else cfg.k


def encode(cfg: RetrieveConfig, cache: FeatureCache, progress=None) -> Encoded:
    """The split's usable clips encoded with the checkpoint (RAM, or an export reused/written)."""
    clips, skipped = embed.usable_clips(cache.require_split(cfg.split), cfg.audio_track)
    if skipped:
        log.warning("%d clips of %s lack video steps or audio track %r and are left out, e.g. %s",
                    len(skipped), cfg.split, cfg.audio_track, skipped[0].clip_id)
    if not clips:
        raise CacheError(f"split {cfg.split!r} has no clip with both video steps and audio track {cfg.audio_track!r}")
    _hybrid_k(cfg, len(clips))  # a bad k fails before the (long) encoding
    device = resolve_device(cfg.device)
    model, objective, meta, spec = load_trained(cfg.checkpoint, cache.meta, device, cfg.dtw_gamma)

    t0 = time.perf_counter()
    kw = dict(batch_size=cfg.batch_size, device=device, progress=progress, track=cfg.audio_track)
    if cfg.export:
        folder = embed.export_folder(cfg.export_root, cfg.split, embed.checkpoint_hash(cfg.checkpoint), cfg.audio_track)
        lat = embed.load_export(folder, [c.clip_id for c in clips]) if folder.exists() else None
        if lat is None:
            export_meta = {
                "checkpoint": str(cfg.checkpoint), "step": meta["step"], "split": cfg.split,
                "cache": str(cfg.cache), "cache_fingerprint": cache.meta.fingerprint(),
                "encoders": {m: e.to_dict() for m, e in meta["encoders"].items()},
                "objective": dataclasses.asdict(objective), "clips": len(clips), "audio_track": cfg.audio_track,
            }
            lat = embed.embed_and_export(model, cfg.cache, cache.meta, cfg.split, clips, folder, export_meta, **kw)
        else:
            log.info("reusing the latents exported in %s", folder)
    else:
        lat = embed.embed_split(model, cfg.cache, cache.meta, cfg.split, clips, **kw)
    return Encoded(lat, objective, meta, cache.meta, spec, device, len(skipped), time.perf_counter() - t0)


def search_split(cfg: RetrieveConfig, enc: Encoded) -> dict[str, search.DirectionResult]:
    """Ranks of every requested method in both directions ({direction: DirectionResult})."""
    k = _hybrid_k(cfg, len(enc.latents.video))
    scfg = BlockConfig(query_block=cfg.query_block, candidate_chunk=cfg.candidate_chunk,
                       device=str(enc.device), precision=cfg.precision)
    return search.retrieve(enc.latents.video, enc.latents.audio, cfg.methods, k, enc.distance, scfg)


def report(cfg: RetrieveConfig, enc: Encoded, results: dict[str, search.DirectionResult]) -> dict:
    """The result dict (README): per method R@1/5/10 (%), MedR, MeanR per direction, timings."""
    n = len(enc.latents.video)
    per_method = {
        m: {
            "seconds": sum(results[d].seconds[m] for d in search.DIRECTIONS),
            **{d: summarize_ranks(results[d].ranks[m]) for d in search.DIRECTIONS},
        }
        for m in cfg.methods
    }
    objective = enc.objective
    out = {
        "split": cfg.split,
        "method": cfg.method,
        "k": _hybrid_k(cfg, n) if "hybrid" in cfg.methods else None,
        "checkpoint": str(cfg.checkpoint),
        "step": enc.ckpt_meta["step"],
        "encoders": {"video": enc.cache_meta.video.label, "audio": enc.cache_meta.audio.label},
        "stand_in_encoders": bool(enc.cache_meta.video.stand_in or enc.cache_meta.audio.stand_in),
        "objective": {"kind": objective.kind, "distance": objective.distance,
                      "interp": objective.interp, "resample": objective.resample},
        "seq_distance": enc.distance.label,
        "num_queries": n,
        "num_candidates": n,
        "skipped_clips": enc.skipped,
        "device": str(enc.device),
        "embed_seconds": enc.seconds,
        "export": str(enc.latents.folder) if enc.latents.folder else None,
        "results": per_method,
    }
    if len(cfg.methods) == 1:
        m = cfg.methods[0]
        out.update(seconds=per_method[m]["seconds"], a2v=per_method[m]["a2v"], v2a=per_method[m]["v2a"])
    else:
        out["seconds"] = sum(v["seconds"] for v in per_method.values())
    return out


def run(cfg: RetrieveConfig, progress=None) -> dict:
    """Encode the split, search, report; also write the report to ``cfg.json_path``.

    Raises CacheError / CheckpointError / ValueError with a readable message on bad input.
    """
    cfg.validate()
    enc = encode(cfg, FeatureCache.open(cfg.cache), progress)
    out = report(cfg, enc, search_split(cfg, enc))
    write_json(cfg.json_path, out)
    return out
