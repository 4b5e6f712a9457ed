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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from scav.model.latents import Latents
from scav.sequence.euclidean import PRECISIONS
from scav.sequence.metrics import count_ahead
from scav.sequence.spec import DistanceSpec

log = logging.getLogger(__name__)

METHODS = ("agg", "seq", "hybrid")
DIRECTIONS = ("a2v", "v2a")
RERANK_MODES = ("auto", "sampled", "union", "gather")


# ----------------------------------------------------------------------------- streaming ranks


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


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
    grid = _chunks(n_candidates, candidate_chunk)
    for qa, qb in _chunks(n_queries, query_block):
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


def rank_keys(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """int64 keys that order (score desc, index asc) as plain integers, larger = ahead.

    The float32 score's bits made monotone (flip the magnitude bits of negatives) in the
    high 32 bits, the complement of the candidate index in the low 32: one ``topk`` over
    the keys is then the stable ranking order, ties included, with no sort.
    """
    bits = (scores.float() + 0.0).view(torch.int32).to(torch.int64)  # + 0.0: -0.0 ties +0.0
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # monotone in the float value
    return (ordered << 32) | (0xFFFFFFFF - index)


def key_index(keys: torch.Tensor) -> torch.Tensor:
    """The candidate index back from :func:`rank_keys`."""
    return 0xFFFFFFFF - (keys & 0xFFFFFFFF)


class RunningTopK:
    """Per-query top-k candidate indices under the ranking order (score desc, index asc).

    Blocks may arrive in any order; ties are always broken by the smaller index, so the
    result equals a stable sort of the full row (what :mod:`metrics` ranks by).
    """

    def __init__(self, n_queries: int, k: int):
        if n_queries and k >= 1 << 31:
            raise ValueError("k too large")
        self.k = k
        self.keys = torch.full((n_queries, 0), torch.iinfo(torch.int64).min, dtype=torch.int64)

    @property
    def index(self) -> torch.Tensor:
        """(Q, k') int64 indices in ranking order (k' = min(k, candidates seen))."""
        return key_index(self.keys)

    def update(self, qa: int, qb: int, ca: int, cb: int, s: torch.Tensor) -> None:
        if cb > 1 << 32:
            raise ValueError("more than 2**32 candidates")
        s = s.float().cpu() + 0.0
        kk = min(self.k, s.shape[1])
        # the block's own top kk by a plain topk; exact unless the kk-th score is tied with
        # a score left out (then topk's pick among the ties is arbitrary): those rows are
        # redone from the keys of the whole row
        vals, pos = torch.topk(s, kk, dim=1)
        keys = rank_keys(vals, ca + pos)
        tied = ((s >= vals[:, -1:]).sum(1) > kk).nonzero(as_tuple=True)[0]
        if len(tied):
            full = rank_keys(s[tied], torch.arange(ca, cb).expand(len(tied), -1))
            keys[tied] = torch.topk(full, kk, dim=1).values
        both = torch.cat([self.keys[qa:qb], keys], dim=1)
        top = torch.topk(both, min(self.k, both.shape[1]), dim=1, sorted=True).values
        width = top.shape[1]
        if self.keys.shape[1] < width:
            pad = torch.full((len(self.keys), width - self.keys.shape[1]), torch.iinfo(torch.int64).min)
            self.keys = torch.cat([self.keys, pad], dim=1)
        self.keys[qa:qb, :width] = top


# ----------------------------------------------------------------------------- the three methods


AUTO = "auto"


@dataclass(frozen=True)
class SearchConfig:
    """Block sizes, precision and device of a search (results do not depend on the block sizes).

    query_block / candidate_chunk: a number, or 'auto' = sized per search from the device's
    free memory (:func:`plan_blocks`, :func:`free_memory_bytes`). precision: of seq's cross
    term, 'fp32' (exact, as always) or 'bf16' (interpolated Euclidean only; hybrid's
    re-ranking stays fp32).
    """

    query_block: int | str = AUTO
    candidate_chunk: int | str = AUTO
    rerank_budget_mb: int = 256  # gathered candidates held at once while re-ranking
    rerank: str = "auto"  # 'auto' | 'sampled' | 'union' | 'gather' (see hybrid_rerank)
    device: str = "cpu"
    precision: str = "fp32"

    def validate(self) -> None:
        for name in ("query_block", "candidate_chunk"):
            v = getattr(self, name)
            if v != AUTO and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be 'auto' or an integer >= 1, got {v!r}")
        if self.rerank_budget_mb < 1:
            raise ValueError("rerank_budget_mb must be >= 1")
        if self.rerank not in RERANK_MODES:
            raise ValueError(f"rerank must be one of {RERANK_MODES}, got {self.rerank!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def blocks(self, n_queries: int, n_candidates: int, query_row: int, candidate_row: int,
               cell: int, host_row: int = 0) -> tuple[int, int]:
        """(query_block, candidate_chunk) for one search: explicit numbers as given, 'auto'
        from the free memory of ``self.device`` (row/cell bytes: see :func:`plan_blocks`;
        host_row: bytes of one candidate's host copy, bounding a GPU's chunk by host RAM)."""
        qb, cb = self.query_block, self.candidate_chunk
        if qb != AUTO and cb != AUTO:
            return int(qb), int(cb)
        dev = torch.device(self.device)
        auto_q, auto_c = plan_blocks(
            free_memory_bytes(dev), n_queries, n_candidates, query_row, candidate_row, cell,
            fraction=_FRACTION[dev.type == "cuda"], max_block=_MAX_BLOCK[dev.type == "cuda"],
            fixed_query_block=None if qb == AUTO else int(qb),
            fixed_candidate_chunk=None if cb == AUTO else int(cb),
        )
        if dev.type == "cuda" and cb == AUTO and host_row:
            # the candidate chunk is also copied out of the store in host RAM first
            host_cap = int(_FRACTION[False] * free_memory_bytes(torch.device("cpu"))) // host_row
            auto_c = max(1, min(auto_c, host_cap))
        log.info("blocks on %s: %d queries x %d candidates", dev, auto_q, auto_c)
        return auto_q, auto_c


# ----------------------------------------------------------------------------- block sizing

# share of the free memory a search may take: the CPU's also holds the latents (memmap pages),
# the caller's arrays and other processes; a GPU's is ours but the allocator fragments
_FRACTION = {False: 0.25, True: 0.5}
# largest block side: on a CPU larger blocks gain nothing once the matmul is big (1024 was
# measured at 80-87 % of the matmul rate) and the rank counting passes fall out of cache;
# a GPU needs big blocks to fill it (1024 x 1024 blocks ran at 2 % of an H200's rate)
_MAX_BLOCK = {False: 4096, True: 1 << 17}
_MIB = 1 << 20


def free_memory_bytes(device: torch.device) -> int:
    """Bytes free on ``device`` now: CUDA ``mem_get_info``; CPU ``MemAvailable`` of
    /proc/meminfo (free + reclaimable cache), else free pages from ``os.sysconf``."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 30  # unknown: assume 1 GiB


def seq_row_bytes(steps: int, other_steps: int, dim: int, elem_bytes: int = 4) -> int:
    """Device bytes one clip of a block takes in seq scoring: its padded (steps, dim) copy
    plus up to 4 interpolation temporaries at the longer length (gather x0, x1, the lerp)."""
    return (steps + 4 * max(steps, other_steps)) * dim * elem_bytes


# bytes per (query, candidate) score cell: the distance, its clamp / scale / permutation /
# negation (4 B each) and count_ahead's comparisons (bool and int64 temporaries)
SEQ_CELL_BYTES = 40
AGG_CELL_BYTES = 40  # float64 product, its float32 copy, count_ahead / top-k temporaries


def plan_blocks(
    free_bytes: int,
    n_queries: int,
    n_candidates: int,
    query_row: int,
    candidate_row: int,
    cell: int,
    fraction: float = 0.25,
    max_block: int = 4096,
    fixed_query_block: int | None = None,
    fixed_candidate_chunk: int | None = None,
) -> tuple[int, int]:
    """(query_block, candidate_chunk) whose working set fits ``fraction * free_bytes``.

    Pure. The working set of a (qb, cb) block is
    ``qb * query_row + cb * candidate_row + qb * cb * cell`` plus the score blocks
    :func:`_stream_ranks` holds while it reads the positives off
    (``4 * qb * (qb + 2 cb)`` bytes). Query blocks come first: every query block reads all
    candidates once more (host copies, transfers), so the largest query block (at most
    ``max_block`` and Q) is taken whose best candidate chunk is at least as large as it
    (or all N); then the largest candidate chunk that fits. At least (1, 1), even when
    nothing fits (the floor of what a search can do). Either side may be fixed.
    """
    budget = max(0.0, fraction * free_bytes)
    top_q = fixed_query_block or max(1, min(n_queries, max_block))
    top_c = fixed_candidate_chunk or max(1, min(n_candidates, max_block))

    def best_chunk(qb: int) -> int:
        # largest cb with qb*qrow + 4*qb^2 + cb*(crow + qb*(cell + 8)) <= budget
        rest = budget - qb * query_row - 4.0 * qb * qb
        per = candidate_row + qb * (cell + 8.0)
        return int(max(0.0, rest) // per)

    qb = top_q
    if fixed_query_block is None:
        while qb > 1 and best_chunk(qb) < min(qb, top_c):
            qb = max(1, qb // 2)
    cb = fixed_candidate_chunk or max(1, min(top_c, best_chunk(qb)))
    return qb, cb


def _sides(video: Latents, audio: Latents, direction: str) -> tuple[Latents, Latents]:
    if direction == "a2v":
        return audio, video
    if direction == "v2a":
        return video, audio
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def agg_search(
    queries: Latents, candidates: Latents, cfg: SearchConfig, k: int | None = None
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


def seq_blocks(queries: Latents, candidates: Latents, cfg: SearchConfig) -> tuple[int, int]:
    """(query_block, candidate_chunk) of seq / hybrid's dense re-ranking over these latents."""
    lq, lc = int(queries.lengths.max()), int(candidates.lengths.max())
    return cfg.blocks(
        len(queries), len(candidates), seq_row_bytes(lq, lc, queries.dim), seq_row_bytes(lc, lq, candidates.dim),
        SEQ_CELL_BYTES, host_row=lc * candidates.dim * 4,
    )


def seq_search(
    queries: Latents, candidates: Latents, direction: str, distance: DistanceSpec, cfg: SearchConfig
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
            if direction == "v2a":  # queries are videos: rows already video
                d = distance.matrix(q, qm, c, cm, video_lengths=q_len, audio_lengths=c_len, precision=cfg.precision)
            else:
                d = distance.matrix(c, cm, q, qm, video_lengths=c_len, audio_lengths=q_len, precision=cfg.precision).T
        return -d  # higher = better

    qb, cb = seq_blocks(queries, candidates, cfg)
    return _stream_ranks(len(queries), len(candidates), qb, cb, score)


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
    cfg: SearchConfig,
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
                   topk: torch.Tensor, cfg: SearchConfig):
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
    for qa, qb in _chunks(n_q, q_block):
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
        return distance.rerank(q.to(dev), qm.to(dev), c.to(dev), cm.to(dev), query_is_video=direction == "v2a")


def _rerank_over_union(queries, candidates, direction, distance, qa, qb, idx, union, cfg, mode, chunk) -> torch.Tensor:
    """(n, k) distances, streamed over the sorted union of the block's candidates in
    chunks of ``chunk``: dense blocks (mode 'union') or sampled pairs."""
    dev = torch.device(cfg.device)
    q, qm = queries.range(qa, qb)
    q, qm = q.to(dev), qm.to(dev)
    where = torch.searchsorted(union, idx)  # (n, k) position of each candidate in the union
    out = torch.empty(idx.shape, dtype=torch.float32)
    for ua, ub in _chunks(len(union), chunk):
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
                d = distance.sampled(q, qm, c, cm, rows.to(dev), local.to(dev), query_is_video=direction == "v2a")
            else:
                q_len = queries.lengths[qa:qb]
                block = (distance.matrix(q, qm, c, cm, video_lengths=q_len, audio_lengths=c_len) if direction == "v2a"
                         else distance.matrix(c, cm, q, qm, video_lengths=c_len, audio_lengths=q_len).T)
                d = block[rows.to(dev), local.to(dev)]
        out[rows, cols] = d.float().cpu()
    return out


def rerank_distances(
    queries: Latents,
    candidates: Latents,
    direction: str,
    distance: DistanceSpec,
    topk: torch.Tensor,
    cfg: SearchConfig,
) -> torch.Tensor:
    """Sequence distances (Q, k) float32 of each query to its own k candidates ``topk`` (Q, k)
    (any queries: no query <-> candidate pairing), by the machinery of :func:`hybrid_rerank`
    (same block sizes, same mode choice, hence the same values): only the candidates named
    are read from the store."""
    out = torch.empty(tuple(topk.shape), dtype=torch.float32)
    for qa, qb, d in _rerank_blocks(queries, candidates, direction, distance, topk, cfg):
        out[qa:qb] = d.float().cpu()
    return out



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
    cfg: SearchConfig = SearchConfig(),
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
