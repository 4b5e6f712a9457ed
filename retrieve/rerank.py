"""Hybrid's second stage: each query's agg top-k re-ranked by the sequence distance
(:func:`hybrid_rerank` for the evaluation, :func:`rerank_distances` for any queries), block
by block in the mode :func:`hybrid_rerank` describes.
"""

from __future__ import annotations

import torch
from scav.model.latents import Latents
from scav.sequence.metrics import count_ahead
from scav.sequence.spec import DistanceSpec

from .blocks import BlockConfig, chunks, seq_blocks
from .search_config import query_is_video


def query_distances(distance: DistanceSpec, direction: str, q, qm, c, cm, q_len, c_len,
                    precision: str = "fp32") -> torch.Tensor:
    """(n_q, n_c) sequence distances of queries q (n_q, L, c) to candidates c (n_c, L', c),
    whichever of them is the video side (``direction``); *_len: host valid lengths."""
    if query_is_video(direction):
        return distance.matrix(q, qm, c, cm, video_lengths=q_len, audio_lengths=c_len, precision=precision)
    return distance.matrix(c, cm, q, qm, video_lengths=c_len, audio_lengths=q_len, precision=precision).T

# a dot product of the sampled path costs about as much as this many dot products inside a
# dense matrix product (measured by bench/bench_retrieval.py on CPU: 0.51 s for 1K x 100
# sampled pairs vs 4.1 s for 1K x 10K dense ones at 62 x 512)
_SAMPLED_DOT_COST = 12


def hybrid_rerank(
    queries: Latents,
    candidates: Latents,
    direction: str,
    distance: DistanceSpec,
    agg_ranks: torch.Tensor,
    agg_topk: torch.Tensor,
    cfg: BlockConfig,
) -> torch.Tensor:
    """Re-rank each query's agg top-k (Q, k) by the sequence distance; (Q,) ranks.

    A positive inside its top-k: 1 + #(top-k candidates with a smaller distance) +
    #(equal distance and smaller index). Outside: its agg rank (> k).

    The n x k distances of a block of n queries come from one of (``cfg.rerank``; 'auto'
    picks per block by a cost estimate):
    - sampled (interpolated Euclidean): only the n * k needed dot products, by a sampled
      matrix product over the sorted union U of the block's candidates (best for small k);
    - union: the same dense (n x chunk) products as seq over U, then the needed entries
      picked (n * |U| dot products; best when the lists cover most of U, e.g. k = N, which
      is therefore bit-for-bit seq);
    - gather: each query's k candidates copied and scored pair by pair (any distance:
      the one way for soft-DTW and Wasserstein, whose pairs share no matrix product).
    Every query is re-ranked (a real search does not know its positive).
    """
    ranks = agg_ranks.clone()
    for qa, qb, d in _rerank_blocks(queries, candidates, direction, distance, agg_topk, cfg):
        idx = agg_topk[qa:qb]  # (n, k)
        s = -d.cpu()
        positives = torch.arange(qa, qb)
        hit = idx == positives[:, None]  # (n, k)
        keep = hit.any(1).nonzero(as_tuple=True)[0]  # queries whose positive is in their top-k
        pos_s = s[keep][hit[keep]]  # exactly one hit per kept row
        ranks[qa + keep] = 1 + count_ahead(s[keep], pos_s, idx[keep], positives[keep])
    return ranks


def _rerank_blocks(queries: Latents, candidates: Latents, direction: str, distance: DistanceSpec,
                   topk: torch.Tensor, cfg: BlockConfig):
    """Yield (qa, qb, distances (qb - qa, k)) of each block of queries to its own candidates
    ``topk[qa:qb]``, in the mode :func:`hybrid_rerank` describes."""
    n_q, k = topk.shape
    euclidean = distance.name == "euclidean"
    if cfg.rerank == "sampled" and not euclidean:
        raise ValueError(f"rerank='sampled' needs the interpolated Euclidean, not {distance.name}")
    if n_q == 0 or k == 0:
        return
    row_bytes = max(int(candidates.lengths.max()), int(queries.lengths.max())) * candidates.dim * 4
    gather_sub = max(1, (cfg.rerank_budget_mb << 20) // max(1, row_bytes * k * 3))
    q_block, c_chunk = seq_blocks(queries, candidates, cfg)
    for qa, qb in chunks(n_q, q_block):
        idx = topk[qa:qb]  # (n, k)
        union = torch.unique(idx)  # sorted
        mode = cfg.rerank
        if mode == "auto":
            dense_wins = (qb - qa) * len(union) < _SAMPLED_DOT_COST * idx.numel()
            mode = ("union" if dense_wins else "sampled") if euclidean else "gather"
        if mode == "gather":
            d = torch.cat([
                _rerank_gather(queries, candidates, direction, distance, sa, min(sa + gather_sub, qb), topk, cfg)
                for sa in range(qa, qb, gather_sub)
            ])
        else:
            d = _rerank_over_union(queries, candidates, direction, distance, qa, qb, idx, union, cfg, mode, c_chunk)
        yield qa, qb, d


def _rerank_gather(queries, candidates, direction, distance, qa, qb, agg_topk, cfg) -> torch.Tensor:
    """(qb - qa, k) distances of queries [qa, qb) to their own gathered candidates."""
    dev = torch.device(cfg.device)
    idx = agg_topk[qa:qb]
    n2, k = idx.shape
    q, qm = queries.range(qa, qb)
    c, cm = candidates.take(idx.reshape(-1).numpy())
    c = c.view(n2, k, *c.shape[1:])
    cm = cm.view(n2, k, -1)
    with torch.no_grad():
        return distance.rerank(q.to(dev), qm.to(dev), c.to(dev), cm.to(dev), query_is_video=query_is_video(direction))


def _rerank_over_union(queries, candidates, direction, distance, qa, qb, idx, union, cfg, mode, chunk) -> torch.Tensor:
    """(n, k) distances, streamed over the sorted union of the block's candidates in
    chunks of ``chunk``: dense blocks (mode 'union') or sampled pairs."""
    dev = torch.device(cfg.device)
    q, qm = queries.range(qa, qb)
    q, qm = q.to(dev), qm.to(dev)
    where = torch.searchsorted(union, idx)  # (n, k) position of each candidate in the union
    out = torch.empty(idx.shape, dtype=torch.float32)
    for ua, ub in chunks(len(union), chunk):
        lo, hi = int(union[ua]), int(union[ub - 1]) + 1
        if hi - lo <= 2 * (ub - ua):  # dense enough: read the whole span in place, no gather
            c, cm = candidates.range(lo, hi)
            c_len = candidates.lengths[lo:hi]
            local_of = union[ua:ub] - lo
        else:
            c, cm = candidates.take(union[ua:ub].numpy())
            c_len = candidates.lengths[union[ua:ub].numpy()]
            local_of = torch.arange(ub - ua)
        c, cm = c.to(dev), cm.to(dev)
        sel = (where >= ua) & (where < ub)
        rows, cols = sel.nonzero(as_tuple=True)
        local = local_of[where[rows, cols] - ua]
        with torch.no_grad():
            if mode == "sampled":
                d = distance.sampled(q, qm, c, cm, rows.to(dev), local.to(dev), query_is_video=query_is_video(direction))
            else:
                q_len = queries.lengths[qa:qb]
                d = query_distances(distance, direction, q, qm, c, cm, q_len, c_len)[rows.to(dev), local.to(dev)]
        out[rows, cols] = d.float().cpu()
    return out


def rerank_distances(
    queries: Latents,
    candidates: Latents,
    direction: str,
    distance: DistanceSpec,
    topk: torch.Tensor,
    cfg: BlockConfig,
) -> torch.Tensor:
    """Sequence distances (Q, k) float32 of each query to its own k candidates ``topk`` (Q, k)
    (any queries: no query <-> candidate pairing), by the machinery of :func:`hybrid_rerank`
    (same block sizes, same mode choice, hence the same values): only the candidates named
    are read from the store."""
    out = torch.empty(tuple(topk.shape), dtype=torch.float32)
    for qa, qb, d in _rerank_blocks(queries, candidates, direction, distance, topk, cfg):
        out[qa:qb] = d.float().cpu()
    return out

