"""Audio-visual retrieval over latent sequences: agg, seq and hybrid (paper §III-D).

Within one split, query ``i``'s positive is candidate ``i`` (the search functions also
accept fewer queries than candidates: the first Q clips as queries, as in the paper's
timing of 1K queries against 10K candidates). Directions:
``a2v`` = audio queries, video candidates; ``v2a`` = video queries, audio candidates.

- **agg**: mean-pooled embeddings, cosine similarity.
- **seq**: the sequence distance the model was trained with (a
  :class:`~scav.sequence.spec.DistanceSpec`, the training distance), exact over all
  candidates, on (query block x candidate chunk) blocks; for the interpolated Euclidean that is one
  interpolation and one matrix product (``|q|^2 + |c|^2 - 2 q.c`` over the flattened
  ``L * c`` axis) per distinct target length, never a loop over pairs.
- **hybrid**: the top ``k`` candidates of each query by agg, re-ranked by seq.
  A positive outside its query's top ``k`` keeps its agg rank (which is > k): that is
  where a user would find it, below the ``k`` re-ranked ones. So hybrid with k = N is
  seq and hybrid with k = 1 is agg. Re-ranking computes only the k distances a query
  needs (a sampled matrix product, :meth:`DistanceSpec.sampled`), or, when the top-k
  lists cover most candidates, dense blocks as seq does (see :func:`hybrid_rerank`).

Memory is bounded by the block sizes, not by the split: candidates are read chunk by
chunk from a :class:`Latents` store (RAM or ``np.memmap``), and per query only the rank
of its positive (and, for hybrid, a running top-k) is kept, never the (Q, N) matrix.
By default ('auto') the block sizes come from the device's free memory at search time
(:func:`plan_blocks`): a GPU gets blocks large enough to keep it busy, a CPU cache-sized
ones; explicit sizes are still accepted. seq passes the clips' valid lengths from the
store (host) to the distance, so the interpolated Euclidean never waits on the device to
learn them; ``precision='bf16'`` rounds seq's cross term (see :mod:`scav.sequence.euclidean`).

Ranks follow the tie rule of :mod:`scav.sequence.metrics` (stable by candidate index).
Each score is computed exactly once, by the same code path, so the positive's own score
is compared with bitwise-identical values: the chunks holding a query block's positives
are scored first, their positives' scores read off, then all chunks are counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from scav.model.latents import Latents  # noqa: F401  (importable from here, as before)
from scav.sequence.metrics import count_ahead
from scav.sequence.spec import DistanceSpec

from .blocks import (  # noqa: F401  (the public names of a search, importable from here)
    AGG_CELL_BYTES,
    AUTO,
    RERANK_MODES,
    SEQ_CELL_BYTES,
    BlockConfig,
    chunks,
    free_memory_bytes,
    plan_blocks,
    seq_blocks,
    seq_row_bytes,
)
from .rerank import hybrid_rerank, query_distances, rerank_distances  # noqa: F401
from .search_config import DIRECTIONS, sides
from .topk import RunningTopK, key_index, rank_keys  # noqa: F401

log = logging.getLogger(__name__)

METHODS = ("agg", "seq", "hybrid")


# ----------------------------------------------------------------------------- streaming ranks


def _stream_ranks(
    n_queries: int,
    n_candidates: int,
    query_block: int,
    candidate_chunk: int,
    score_block: Callable[[int, int, int, int], torch.Tensor],
    on_block: Callable[[int, int, int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Rank of each query's positive (query i <-> candidate i, Q <= N) with bounded memory.

    score_block(qa, qb, ca, cb) -> (qb - qa, cb - ca) scores, higher = better, each
    block computed once. on_block sees every block (for a running top-k).
    Returns (Q,) int64 1-based ranks.
    """
    if n_queries > n_candidates:
        raise ValueError(f"query i's positive is candidate i: need Q <= N, got {n_queries} > {n_candidates}")
    ranks = torch.empty(n_queries, dtype=torch.int64)
    grid = chunks(n_candidates, candidate_chunk)
    for qa, qb in chunks(n_queries, query_block):
        positives = torch.arange(qa, qb)
        # 1. the chunks holding this block's positives: score them first, read the positives off
        first = [(ca, cb) for ca, cb in grid if ca < qb and cb > qa]
        held = {}
        pos_scores = None
        for ca, cb in first:
            s = score_block(qa, qb, ca, cb)
            held[(ca, cb)] = s
            inside = (positives >= ca) & (positives < cb)
            if pos_scores is None:
                pos_scores = torch.empty(qb - qa, dtype=s.dtype, device=s.device)
            rows = inside.nonzero(as_tuple=True)[0]
            pos_scores[rows.to(s.device)] = s[rows.to(s.device), (positives[rows] - ca).to(s.device)]
        # 2. count candidates ahead of each positive, over every chunk
        ahead = torch.zeros(qb - qa, dtype=torch.int64, device=pos_scores.device)
        pos_dev = positives.to(pos_scores.device)
        for ca, cb in grid:
            s = held.pop((ca, cb), None)
            if s is None:
                s = score_block(qa, qb, ca, cb)
            cand = torch.arange(ca, cb, device=s.device)
            ahead += count_ahead(s, pos_scores, cand, pos_dev)
            if on_block is not None:
                on_block(qa, qb, ca, cb, s)
        ranks[qa:qb] = 1 + ahead.cpu()
    return ranks


# ----------------------------------------------------------------------------- the three methods


def _sides(video: Latents, audio: Latents, direction: str) -> tuple[Latents, Latents]:
    """(query latents, candidate latents) of ``direction``."""
    q, c = sides(direction)
    return {"video": video, "audio": audio}[q], {"video": video, "audio": audio}[c]


def agg_search(
    queries: Latents, candidates: Latents, cfg: BlockConfig, k: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cosine similarity of mean-pooled embeddings.

    Returns ranks (Q,) and, when ``k`` is given, the top-k candidate indices (Q, k)
    in ranking order (ties by smaller index).
    """
    dev = torch.device(cfg.device)
    topk = RunningTopK(len(queries), k) if k else None
    cache: dict[tuple[int, int], torch.Tensor] = {}

    def q_emb(qa, qb):
        if (qa, qb) not in cache:
            cache.clear()
            cache[(qa, qb)] = F.normalize(queries.embeddings(qa, qb).to(dev, torch.float64), dim=-1)
        return cache[(qa, qb)]

    def score(qa, qb, ca, cb):
        # float64 then rounded to float32: a matmul's last bits depend on where a row sits
        # in the block, so identical embeddings could otherwise score differently and
        # exact duplicates would not tie (the tie rule would become arbitrary)
        c = F.normalize(candidates.embeddings(ca, cb).to(dev, torch.float64), dim=-1)
        return (q_emb(qa, qb) @ c.T).float()

    qb, cb = cfg.blocks(len(queries), len(candidates), 16 * queries.dim, 16 * candidates.dim, AGG_CELL_BYTES)
    ranks = _stream_ranks(len(queries), len(candidates), qb, cb, score, topk.update if topk else None)
    return ranks, (topk.index if topk else None)


def seq_search(
    queries: Latents, candidates: Latents, direction: str, distance: DistanceSpec, cfg: BlockConfig
) -> torch.Tensor:
    """Exact sequence-distance ranks over all candidates; (Q,) int64.

    The valid lengths go to the distance from the host (the stores hold them), so the
    interpolated Euclidean makes no device->host sync per block.
    """
    dev = torch.device(cfg.device)
    if cfg.precision != "fp32" and distance.name != "euclidean":
        raise ValueError(f"precision {cfg.precision!r} is for the interpolated Euclidean, not {distance.name}")
    held: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def q_seq(qa, qb):
        if (qa, qb) not in held:
            held.clear()
            x, m = queries.range(qa, qb)
            held[(qa, qb)] = (x.to(dev), m.to(dev))
        return held[(qa, qb)]

    def score(qa, qb, ca, cb):
        q, qm = q_seq(qa, qb)
        c, cm = candidates.range(ca, cb)
        c, cm = c.to(dev), cm.to(dev)
        q_len, c_len = queries.lengths[qa:qb], candidates.lengths[ca:cb]
        with torch.no_grad():
            d = query_distances(distance, direction, q, qm, c, cm, q_len, c_len, cfg.precision)
        return -d  # higher = better

    qb, cb = seq_blocks(queries, candidates, cfg)
    return _stream_ranks(len(queries), len(candidates), qb, cb, score)


@dataclass
class DirectionResult:
    ranks: dict[str, torch.Tensor] = field(default_factory=dict)  # method -> (Q,) ranks
    seconds: dict[str, float] = field(default_factory=dict)  # method -> wall time


def retrieve(
    video: Latents,
    audio: Latents,
    methods: tuple[str, ...] = METHODS,
    k: int = 100,
    distance: DistanceSpec = DistanceSpec(),
    cfg: BlockConfig = BlockConfig(),
    directions: tuple[str, ...] = DIRECTIONS,
) -> dict[str, DirectionResult]:
    """Run the requested methods in both directions; {direction: DirectionResult}.

    hybrid's seconds include its own agg pre-selection (what a user would wait for), so
    with --method all the agg pass runs twice: once plain (timed as agg), once keeping
    the top-k.
    """
    cfg.validate()
    bad = set(methods) - set(METHODS)
    if bad:
        raise ValueError(f"unknown methods {sorted(bad)}; choose from {METHODS}")
    n = len(video)
    if len(audio) != n:
        raise ValueError(f"video and audio latents differ in clip count ({n} != {len(audio)})")
    if "hybrid" in methods and not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of candidates ({n}), got {k}")
    out: dict[str, DirectionResult] = {}
    for direction in directions:
        queries, candidates = _sides(video, audio, direction)
        res = DirectionResult()
        if "agg" in methods:
            t0 = time.perf_counter()
            res.ranks["agg"], _ = agg_search(queries, candidates, cfg)
            res.seconds["agg"] = time.perf_counter() - t0
        if "hybrid" in methods:
            t0 = time.perf_counter()
            h_agg, topk = agg_search(queries, candidates, cfg, k=k)
            res.ranks["hybrid"] = hybrid_rerank(queries, candidates, direction, distance, h_agg, topk, cfg)
            res.seconds["hybrid"] = time.perf_counter() - t0
        if "seq" in methods:
            t0 = time.perf_counter()
            res.ranks["seq"] = seq_search(queries, candidates, direction, distance, cfg)
            res.seconds["seq"] = time.perf_counter() - t0
        for m in res.ranks:
            log.info("%s %s: %.2f s", direction, m, res.seconds[m])
        out[direction] = res
    return out
