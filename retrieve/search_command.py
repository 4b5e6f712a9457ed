"""``scav-retrieve search`` and ``scav-retrieve index`` without the CLI: configs, runs, records.

- :class:`SearchRequest` / :func:`run_search`: queries (cache clips, a split, media files)
  against a gallery (cache splits encoded now, or a saved index) -> one record per query.
- :class:`IndexRequest` / :func:`run_index`: encode a gallery once and save it.

A search checks everything it can before it encodes or writes anything: query ids, media
decoding, weights, the index against the checkpoint and the cache, k and topk. Records
(one JSON object per query, the schema in :func:`make_record`) are written only when all
queries are ranked, atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scav.core.files import atomic_path
from scav.core.schema import CacheError, CacheMeta

from .config import DEFAULT_K
from .search_config import DEFAULT_CACHE, FirstStageConfig, IndexRequest, SearchRequest

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    records: list[dict]
    gallery_size: int
    first_stage: str | None
    seconds: dict[str, float]
    index: str | None  # the saved index searched, if any


# ----------------------------------------------------------------------------- records


def make_record(query, modality: str, track, direction: str, method: str, k: int | None, rows: list[dict],
                context: dict) -> dict:
    """One query's record: the schema ``search --json`` writes and the HTML report reads."""
    q = {"clip_id": query.clip_id, "media": query.media, "split": query.split, "label": query.label,
         "source": query.source, "path": query.path, "start": query.start, "end": query.end,
         "modality": modality, "track": track}
    return {"query": q, "direction": direction, "method": method, "k": k, "results": rows, **context}


def record_context(checkpoint: str, ckpt_meta: dict, cache_meta: CacheMeta, spec) -> dict:
    """The fields every record of one search shares."""
    return {
        "checkpoint": str(checkpoint), "step": int(ckpt_meta["step"]),
        "encoders": {"video": cache_meta.video.label, "audio": cache_meta.audio.label},
        "stand_in_encoders": bool(cache_meta.video.stand_in or cache_meta.audio.stand_in),
        "seq_distance": spec.label,
    }


def build_records(items: list, ranked, clips, modality: str, track, direction: str, method: str, k: int | None,
                  context: dict) -> list[dict]:
    """One record per query ``items[i]`` from row i of ``ranked`` (gallery rows of ``clips``)."""
    return [
        make_record(item, modality, track, direction, method, k,
                    result_rows(clips, ranked.index[i], ranked.scores[i], item.clip_id), context)
        for i, item in enumerate(items)
    ]


def result_rows(clips, index: np.ndarray, scores: np.ndarray, query_clip_id: str | None) -> list[dict]:
    rows = []
    for rank, (i, s) in enumerate(((int(i), float(s)) for i, s in zip(index, scores) if i >= 0), start=1):
        c = clips.row(i)
        rows.append({"rank": rank, "clip_id": c["clip_id"], "score": s, "label": c["label"], "source": c["source"],
                     "split": c["split"], "path": c["path"], "start": c["start"], "end": c["end"],
                     "is_partner": query_clip_id is not None and c["clip_id"] == query_clip_id})
    return rows


def write_jsonl(path: str | None, records: list[dict]) -> None:
    """One JSON object per line to ``path`` (atomically) or stdout for '-'; nothing for None."""
    if path is None:
        return
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path == "-":
        import sys

        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ----------------------------------------------------------------------------- the search


def _open_cache(path: str | None, needed: bool):
    from scav.core.cache import FeatureCache

    if path is None or not Path(path).exists():
        if needed:
            raise CacheError(f"no cache at {path}" if path else "no cache given (--cache)")
        return None
    return FeatureCache.open(path)


def _resolve_queries(req: SearchRequest, cache, track):
    """(clip infos, decoded media): everything checked before the model loads."""
    from . import query as Q

    infos = []
    ids = list(req.query_clips) + (Q.read_ids_file(req.query_ids_file) if req.query_ids_file else [])
    if ids:
        infos += Q.resolve_clips(cache, ids, track)
    if req.query_split:
        from scav.model import embed

        ok, bad = embed.usable_clips(cache.require_split(req.query_split), track)
        if bad:
            log.warning("%d clips of %s lack video steps or audio track %r and are not queried, e.g. %s",
                        len(bad), req.query_split, track, bad[0].clip_id)
        if not ok:
            raise Q.QueryError(f"split {req.query_split!r} has no clip usable as a query")
        infos += ok
    media = (Q.decode_media(list(req.query_media), track, need_audio=req.direction == "a2v")
             if req.query_media else [])
    return infos, media


def _index_cache_meta(gallery) -> CacheMeta:
    """The cache metadata an index recorded (its cache is not there)."""
    try:
        return CacheMeta.from_dict(gallery.meta["cache_meta"])
    except Exception as e:  # noqa: BLE001 - any malformed record: one line naming the file
        raise CacheError(f"{gallery.folder / 'meta.json'}: unreadable cache record ({type(e).__name__}: {e})") from None


def _first_stage_index(req: SearchRequest, gallery, modality: str):
    """A saved approximate index to use, or None (then the first stage builds one if asked)."""
    if req.ann == "exact" or gallery.folder is None:
        return None
    saved = (gallery.meta.get("ann") or {}).get(modality) or {}
    if req.ann == "ivf" and req.nlist is not None and saved.get("nlist") not in (None, req.nlist):
        log.warning("the index's IVF has nlist=%s, not %s: building one now", saved.get("nlist"), req.nlist)
        return None
    index = gallery.ann_index(modality, req.ann)
    if index is None:
        log.warning("%s holds no %s index: building one now (scav-retrieve index --ann %s saves it)",
                    gallery.folder, req.ann, req.ann)
    return index


def _sizes(req: SearchRequest, n: int) -> tuple[int | None, int]:
    """(hybrid's k or None, results per query) for a gallery of n clips."""
    topk = min(req.topk, n)
    if req.method != "hybrid":
        return None, topk
    if req.k is not None and req.k > n:
        raise ValueError(f"k={req.k} is larger than the gallery ({n} clips); use --k {n} or less")
    return (req.k if req.k is not None else max(topk, min(DEFAULT_K, n))), topk


def _encode_queries(req: SearchRequest, model, cache, cache_meta, infos, media, encoders, device) -> dict:
    """{modality: Latents} of the clip queries then the media queries, in that order."""
    from . import query

    parts: dict[str, list] = {"video": [], "audio": []}
    if infos:
        v, a = query.encode_clips(model, cache, infos, batch_size=req.batch_size, device=device, track=req.audio_track)
        parts["video"].append(v), parts["audio"].append(a)
    if media:
        v, a = query.encode_media(model, cache_meta, media, *encoders, device=device)
        parts["video"].append(v), parts["audio"].append(a)
    return {m: query.concat_latents(p, int(model.cfg.c)) for m, p in parts.items()}


def run_search(req: SearchRequest, status=None) -> SearchResult:
    """Resolve queries, open or encode the gallery, rank, write ``req.json_path``.

    status: optional callable(str) told what runs now. Raises QueryError, GalleryIndexError,
    CacheError, CheckpointError or ValueError (each with a readable message) before writing.
    """
    from scav.core.device import resolve_device
    from scav.model import embed

    from . import gallery_index, query
    from scav.model.checkpoint import load_trained
    from .first_stage import normalize_rows
    from .gallery_search import rank, sides

    say = status or (lambda text: None)
    req.validate()
    track = req.audio_track
    gallery = gallery_index.load_index(req.index) if req.index else None
    cache_path = req.cache or (gallery.meta.get("cache") if gallery else None) or DEFAULT_CACHE
    cache = _open_cache(cache_path, gallery is None or bool(req.query_clips or req.query_ids_file or req.query_split))
    cache_meta = cache.meta if cache is not None else _index_cache_meta(gallery)
    infos, media = _resolve_queries(req, cache, track)
    if gallery is None:
        clips, skipped = gallery_index.gallery_clips(cache.clips(), req.gallery_splits or None, track)
        if skipped:
            log.warning("%d gallery clips lack video steps or audio track %r and are left out", len(skipped), track)
    k, topk = _sizes(req, len(gallery) if gallery is not None else len(clips))

    device = resolve_device(req.device)
    say("loading the checkpoint")
    model, _, ckpt_meta, spec = load_trained(req.checkpoint, cache_meta, device, req.dtw_gamma)
    encoders = query.build_encoders(cache_meta, req.clip_weights, req.beats_ckpt, str(device)) if media else None
    t0 = time.perf_counter()
    if gallery is not None:
        gallery_index.check_index(gallery.meta, gallery.folder, embed.checkpoint_hash(req.checkpoint), cache_meta, track,
                                  dim=int(model.cfg.c))
        if cache is not None and infos:
            gallery_index.check_query_clips(gallery, cache, infos, track)
    else:
        say(f"encoding the gallery ({len(clips)} clips; `scav-retrieve index` saves it for later searches)")
        lat = embed.embed_split(model, cache.path, cache.meta, None, clips, batch_size=req.batch_size,
                                device=device, track=track)
        gallery = gallery_index.in_memory(clips, lat, {})
    seconds = {"gallery": time.perf_counter() - t0}

    say(f"encoding {len(infos) + len(media)} queries")
    t0 = time.perf_counter()
    q_lat = _encode_queries(req, model, cache, cache_meta, infos, media, encoders, device)
    seconds["queries"] = time.perf_counter() - t0

    say(f"searching {len(gallery)} gallery clips")
    q_mod, g_mod = sides(req.direction)
    candidates, cand_normed = gallery.side(g_mod)
    ranked = rank(q_lat[q_mod], normalize_rows(q_lat[q_mod].emb), candidates, cand_normed, req.direction,
                  req.method, topk, k, spec, req.first_stage(str(device)), req.block_config(str(device)),
                  _first_stage_index(req, gallery, g_mod))
    seconds.update(ranked.seconds)

    context = record_context(req.checkpoint, ckpt_meta, cache_meta, spec)
    items = query.clip_items(infos) + query.media_items(media)
    records = build_records(items, ranked, gallery.clips, q_mod, track, req.direction, req.method, k, context)
    write_jsonl(req.json_path, records)
    return SearchResult(records, len(gallery), ranked.first_stage, seconds,
                        str(gallery.folder) if gallery.folder else None)


# ----------------------------------------------------------------------------- the index


def run_index(req: IndexRequest, status=None) -> dict[str, Any]:
    """Encode the gallery and save it (or report the up-to-date index already there)."""
    from scav.core.cache import FeatureCache
    from scav.core.device import resolve_device
    from scav.model import embed

    from . import gallery_index
    from scav.model.checkpoint import load_trained

    say = status or (lambda text: None)
    req.validate()
    cache = FeatureCache.open(req.cache)
    clips, skipped = gallery_index.gallery_clips(cache.clips(), req.gallery_splits or None, req.audio_track)
    device = resolve_device(req.device)
    model, objective, ckpt_meta, _ = load_trained(req.checkpoint, cache.meta, device)
    ckpt_hash = embed.checkpoint_hash(req.checkpoint)
    folder = Path(req.out) if req.out else gallery_index.default_folder(
        req.cache, ckpt_hash, cache.meta.fingerprint(), req.gallery_splits or None, req.audio_track)
    ids = [c.clip_id for c in clips]
    reused = False
    if folder.exists() and not req.rebuild:
        try:
            old = gallery_index.load_index(folder)
            gallery_index.check_index(old.meta, folder, ckpt_hash, cache.meta, req.audio_track)
            ann_ok = req.ann == "exact" or all((old.meta.get("ann") or {}).get(m, {}).get("kind") == req.ann
                                               for m in gallery_index.MODALITIES)
            reused = old.clips.ids == ids and ann_ok
        except gallery_index.GalleryIndexError as e:
            log.info("rebuilding %s: %s", folder, e)
    t0 = time.perf_counter()
    if not reused:
        meta = {
            "checkpoint": str(req.checkpoint), "checkpoint_sha256_12": ckpt_hash, "step": int(ckpt_meta["step"]),
            "cache": str(req.cache), "cache_fingerprint": cache.meta.fingerprint(), "cache_meta": cache.meta.to_dict(),
            "encoders": {"video": cache.meta.video.label, "audio": cache.meta.audio.label},
            "objective": dataclasses.asdict(objective), "gallery_splits": list(req.gallery_splits) or None,
            "audio_track": req.audio_track, "dim": int(model.cfg.c),
        }
        ann = FirstStageConfig(ann=req.ann, nlist=req.nlist, hnsw_m=req.hnsw_m, ef_construction=req.ef_construction)
        say(f"encoding {len(clips)} gallery clips into {folder}")
        gallery_index.build_index(model, req.cache, cache.meta, clips, folder, meta, ann,
                                  batch_size=req.batch_size, device=device, track=req.audio_track)
    out = {"index": str(folder), "clips": len(clips), "skipped_clips": len(skipped), "reused": reused,
           "checkpoint": str(req.checkpoint), "gallery_splits": list(req.gallery_splits) or None,
           "ann": req.ann, "seconds": round(time.perf_counter() - t0, 3)}
    from scav.core.cli import write_json

    write_json(req.json_path, out)
    return out
