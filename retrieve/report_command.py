"""``scav-retrieve report`` without the CLI: a sample of a split's queries searched within the
split, the split's R@K, and hybrid's recall and time against k, handed to the HTML report
(:func:`scav.retrieve.report_html.write_report`).

The split is encoded once (:func:`scav.retrieve.evaluate.encode`); the sampled queries and
the gallery (the whole split, so each query's partner is there) are rows of those latents,
ranked by :func:`scav.retrieve.gallery_search.rank` as ``search`` ranks. The k curve runs the
evaluation's own hybrid (:func:`scav.retrieve.search.retrieve`) at each k.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .search_command import build_records, record_context, write_jsonl
from .search_config import ReportRequest


def run_report(req: ReportRequest, status=None) -> dict:
    """Encode the split, search the sampled queries, measure the k curve, write the page.
    Returns {"report": index.html path, "records": [...], "summary": {...}}."""
    from scav.core.cache import FeatureCache
    from scav.model import embed
    from scav.sequence.metrics import summarize_ranks

    from . import gallery_index, search
    from .blocks import BlockConfig
    from .config import RetrieveConfig
    from .evaluate import encode
    from .first_stage import normalize_rows
    from .gallery_search import rank, sides
    from .query import clip_items, take_latents
    from .report_html import write_report

    say = status or (lambda text: None)
    req.validate()
    cache = FeatureCache.open(req.cache)
    say(f"encoding split {req.split}")
    enc = encode(RetrieveConfig(checkpoint=req.checkpoint, split=req.split, cache=req.cache, method=req.method,
                                k=req.k, dtw_gamma=req.dtw_gamma, audio_track=req.audio_track,
                                batch_size=req.batch_size, device=req.device), cache)
    clips, _ = embed.usable_clips(cache.require_split(req.split), req.audio_track)
    n = len(clips)
    gallery = gallery_index.in_memory(clips, enc.latents, {})
    topk = min(req.topk, n)
    k = None
    if req.method == "hybrid":
        k = req.k if req.k is not None else max(topk, min(100, n))
        if k > n:
            raise ValueError(f"k={k} is larger than split {req.split!r} ({n} clips)")
    rng = np.random.default_rng(req.seed)
    picked = np.sort(rng.choice(n, min(req.max_queries, n), replace=False))

    say(f"searching {len(picked)} queries")
    q_mod, g_mod = sides(req.direction)
    q_lat = take_latents(getattr(enc.latents, q_mod), picked)
    candidates, cand_normed = gallery.side(g_mod)
    scfg = BlockConfig(device=str(enc.device))
    ranked = rank(q_lat, normalize_rows(q_lat.emb), candidates, cand_normed, req.direction, req.method, topk, k,
                  enc.distance, block_cfg=scfg)
    context = record_context(req.checkpoint, enc.ckpt_meta, enc.cache_meta, enc.distance)
    records = build_records(clip_items([clips[i] for i in picked]), ranked, gallery.clips, q_mod, req.audio_track,
                            req.direction, req.method, k, context)

    say("evaluating the split and hybrid's k curve")
    video, audio = enc.latents.video, enc.latents.audio
    full = search.retrieve(video, audio, (req.method,), k or 1, enc.distance, scfg, directions=(req.direction,))
    curve = []
    for kk in sorted({min(kk, n) for kk in req.ks}):
        t0 = time.perf_counter()
        res = search.retrieve(video, audio, ("hybrid",), kk, enc.distance, scfg, directions=(req.direction,))
        seconds = time.perf_counter() - t0
        r = summarize_ranks(res[req.direction].ranks["hybrid"])
        curve.append({"k": kk, "R@1": r["R@1"], "R@5": r["R@5"], "R@10": r["R@10"], "seconds": seconds})
    label = f"{req.method} k={k}" if k else req.method
    summary = {"split": req.split, "title": f"SCAV search report: {req.split} ({label})",
               "R@K": {req.direction: summarize_ranks(full[req.direction].ranks[req.method])}, "k_curve": curve}
    say("writing the report")
    stats: dict = {}
    page = write_report(records, Path(req.out), cache_path=req.cache, summary=summary, media_root=req.media_root,
                        progress=False, stats=stats)
    write_jsonl(req.json_path, records)
    return {"report": str(page), "records": records, "summary": summary, "media": stats}
