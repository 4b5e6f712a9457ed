"""Audio-visual retrieval over latent sequences: agg, seq and hybrid (paper §III-D).

Within one split, query ``i``'s positive is candidate ``i`` (the search functions also
accept fewer queries than candidates: the first Q clips as queries, as in the paper's
timing of 1K queries against 10K candidates). Directions:
``a2v`` = audio queries, video candidates; ``v2a`` = video queries, audio candidates.

- **agg**: mean-pooled embeddings, cosine similarity.
- **seq**: the sequence distance the model was trained with (:class:`SeqDistance`),
  exact over all candidates. Distances come from ``scav.train.objective.sequence_distance``
  on (query block x candidate chunk) blocks; for the interpolated Euclidean that is one
  interpolation and one matrix product (``|q|^2 + |c|^2 - 2 q.c`` over the flattened
  ``L * c`` axis) per distinct target length, never a loop over pairs.
- **hybrid**: the top ``k`` candidates of each query by agg, re-ranked by seq.
  A positive outside its query's top ``k`` keeps its agg rank (which is > k): that is
  where a user would find it, below the ``k`` re-ranked ones. So hybrid with k = N is
  seq and hybrid with k = 1 is agg.

Memory is bounded by the block sizes, not by the split: candidates are read chunk by
chunk from a :class:`Latents` store (RAM or ``np.memmap``), and per query only the rank
of its positive (and, for hybrid, a running top-k) is kept, never the (Q, N) matrix.

Ranks follow the tie rule of :mod:`scav.retrieve.metrics` (stable by candidate index).
Each score is computed exactly once, by the same code path, so the positive's own score
is compared with bitwise-identical values: the chunks holding a query block's positives
are scored first, their positives' scores read off, then all chunks are counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import count_ahead

log = logging.getLogger(__name__)

METHODS = ("agg", "seq", "hybrid")
DIRECTIONS = ("a2v", "v2a")


# ----------------------------------------------------------------------------- latent store


@dataclass
class Latents:
    """Latent sequences of one modality of a split (flat ragged layout) + pooled embeddings.

    seq (sum L_i, c) float32 (ndarray or np.memmap); offsets (N + 1,) int64, clip i is
    ``seq[offsets[i]:offsets[i+1]]``; emb (N, c) float32, the mean over valid steps.
    """

    seq: np.ndarray
    offsets: np.ndarray
    emb: np.ndarray

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        n = len(self.offsets) - 1
        if self.emb.shape[0] != n or int(self.offsets[-1]) != self.seq.shape[0]:
            raise ValueError(
                f"inconsistent latents: {n} offsets rows, emb {self.emb.shape}, seq {self.seq.shape}"
            )
        self.lengths = np.diff(self.offsets)
        if n and int(self.lengths.min()) < 1:
            raise ValueError("every clip needs at least one latent step")
        self.uniform = n > 0 and bool((self.lengths == self.lengths[0]).all())

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return int(self.seq.shape[1])

    @classmethod
    def from_padded(cls, seq: torch.Tensor, mask: torch.Tensor) -> "Latents":
        """From padded (N, L, c) + mask (N, L) (prefix masks); emb = masked mean."""
        lengths = mask.sum(1).cpu().numpy().astype(np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = seq[mask].float().cpu().numpy()
        m = mask.unsqueeze(-1).float()
        emb = ((seq.float() * m).sum(1) / m.sum(1).clamp(min=1.0)).cpu().numpy()
        return cls(np.ascontiguousarray(flat), offsets, emb)

    @classmethod
    def load(cls, folder: str | Path, modality: str, mmap: bool = True) -> "Latents":
        """Read ``<modality>_seq.npy``, ``_offsets.npy``, ``_emb.npy`` (see embed.save_latents)."""
        folder = Path(folder)
        mode = "c" if mmap else None  # copy-on-write: torch can wrap it; the file is never changed
        return cls(
            np.load(folder / f"{modality}_seq.npy", mmap_mode=mode),
            np.load(folder / f"{modality}_offsets.npy"),
            np.load(folder / f"{modality}_emb.npy", mmap_mode=mode),
        )

    def head(self, n: int) -> "Latents":
        """The first ``n`` clips (a view, no copy)."""
        return Latents(self.seq[: self.offsets[n]], self.offsets[: n + 1], self.emb[:n])

    def embeddings(self, a: int, b: int) -> torch.Tensor:
        """(b - a, c) float32 embeddings of clips [a, b)."""
        return torch.from_numpy(np.ascontiguousarray(self.emb[a:b], dtype=np.float32))

    def range(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips [a, b) padded: (x (n, Lmax, c) float32, mask (n, Lmax) bool)."""
        if self.uniform:
            length = int(self.lengths[0])
            rows = np.ascontiguousarray(self.seq[self.offsets[a] : self.offsets[b]], dtype=np.float32)
            x = torch.from_numpy(rows).view(b - a, length, self.dim)
            return x, torch.ones((b - a, length), dtype=torch.bool)
        return self.take(np.arange(a, b))

    def take(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips ``idx`` (n,) padded: (x (n, Lmax, c) float32, mask (n, Lmax) bool)."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.uniform:  # whole clips are contiguous rows of (N, L, c): one block copy each
            length = int(self.lengths[0])
            x = np.asarray(self.seq.reshape(len(self), length, self.dim)[idx], dtype=np.float32)
            return torch.from_numpy(x), torch.ones((len(idx), length), dtype=torch.bool)
        lengths = self.lengths[idx]
        lmax = int(lengths.max()) if len(idx) else 1
        steps = np.arange(lmax)
        valid = steps[None, :] < lengths[:, None]  # (n, Lmax)
        rows = np.where(valid, self.offsets[idx][:, None] + steps[None, :], 0)
        x = np.asarray(self.seq[rows.reshape(-1)], dtype=np.float32).reshape(len(idx), lmax, self.dim)
        x[~valid] = 0.0
        return torch.from_numpy(x), torch.from_numpy(valid)


# ----------------------------------------------------------------------------- distances


@dataclass(frozen=True)
class SeqDistance:
    """The sequence distance used by seq / hybrid retrieval.

    name: 'euclidean' (interpolated, ``direction`` v2a = video resampled to the audio
    length, a2v the reverse), 'soft_dtw' (``gamma``) or 'wasserstein' (``eps``). Built
    from a model's objective with :meth:`from_objective` (CAV models: euclidean v2a).
    """

    name: str = "euclidean"
    direction: str = "v2a"
    gamma: float = 0.1
    eps: float = 0.1

    @classmethod
    def from_objective(cls, obj_cfg) -> "SeqDistance":
        if not obj_cfg.uses_scav:
            return cls("euclidean", "v2a")
        return cls(obj_cfg.distance, obj_cfg.direction, obj_cfg.gamma, obj_cfg.eps)

    @property
    def label(self) -> str:
        return f"{self.name} {self.direction}" if self.name == "euclidean" else self.name

    def _objective(self):
        from scav.train.config import ObjectiveConfig

        # interp only matters to the encoder; the distance itself is the same for pre/post
        return ObjectiveConfig(
            kind="scav", distance=self.name, interp="post", direction=self.direction, gamma=self.gamma, eps=self.eps
        )

    def matrix(self, video, video_mask, audio, audio_mask) -> torch.Tensor:
        """All pairs: video (Bv, T, c) x audio (Ba, S, c) -> (Bv, Ba), the training function."""
        from scav.train.objective import sequence_distance

        if self.name == "euclidean":
            fast = _equal_length_euclidean(video, video_mask, audio, audio_mask)
            if fast is not None:
                return fast
        return sequence_distance(self._objective(), video, video_mask, audio, audio_mask)

    def paired(self, video, video_mask, audio, audio_mask) -> torch.Tensor:
        """Matched pairs: video (P, T, c) x audio (P, S, c) -> (P,), d(video_p, audio_p).

        Interpolated Euclidean vectorised over pairs (each pair resampled to its own
        target length); the other distances fall back to one matrix call per pair.
        """
        if self.name != "euclidean":
            return torch.stack(
                [self.matrix(video[p : p + 1], video_mask[p : p + 1], audio[p : p + 1], audio_mask[p : p + 1])[0, 0]
                 for p in range(video.shape[0])]
            ) if video.shape[0] else video.new_zeros(0)
        from scav.train.distances import interpolate_to_lengths, valid_lengths

        if self.direction == "v2a":
            src, src_mask, tgt, tgt_mask = video, video_mask, audio, audio_mask
        else:
            src, src_mask, tgt, tgt_mask = audio, audio_mask, video, video_mask
        tgt_len = valid_lengths(tgt_mask)
        if src.shape[1] == tgt.shape[1] and torch.equal(src_mask, tgt_mask):
            res = src  # same valid lengths: linear interpolation is the identity
        else:
            res, _ = interpolate_to_lengths(src, src_mask, tgt_len)
            tgt = tgt[:, : res.shape[1]]
        diff = (res - tgt).square().sum(-1)  # (P, L); padded steps are zero on both sides
        return diff.sum(1) / tgt_len.to(diff.dtype)


    def rerank(self, q, q_mask, c, c_mask, query_is_video: bool) -> torch.Tensor:
        """Each query against its own candidates: q (n, Lq, C), q_mask (n, Lq),
        c (n, k, Lc, C), c_mask (n, k, Lc) -> (n, k) distances.

        Interpolated Euclidean: where one target length serves a query's whole row (the
        target side is the query, or all its candidates share one length) the row is one
        batched matrix product, |s|^2 + |t|^2 - 2 s.t, as in :meth:`matrix`; otherwise
        per pair (:meth:`paired`).
        """
        n, k = c.shape[:2]
        if self.name == "euclidean":
            from scav.train.distances import interpolate_to_length, valid_lengths

            query_is_target = query_is_video != (self.direction == "v2a")
            out = torch.empty(n, k, dtype=q.dtype, device=q.device)
            if query_is_target:
                q_len = valid_lengths(q_mask)
                groups = [(int(length), (q_len == length).nonzero(as_tuple=True)[0]) for length in torch.unique(q_len)]
            else:
                c_len = valid_lengths(c_mask.reshape(n * k, -1)).view(n, k)
                if not bool((c_len == c_len[:, :1]).all()):
                    groups = None
                else:
                    row_len = c_len[:, 0]
                    groups = [(int(length), (row_len == length).nonzero(as_tuple=True)[0])
                              for length in torch.unique(row_len)]
            if groups is not None:
                for length, rows in groups:
                    g = len(rows)
                    if g == n:  # one group (the usual case): no gather copy
                        qs, qms, cs, cms = q, q_mask, c, c_mask
                    else:
                        qs, qms, cs, cms = q[rows], q_mask[rows], c[rows], c_mask[rows]
                    cs, cms = cs.reshape(g * k, *c.shape[2:]), cms.reshape(g * k, -1)
                    if query_is_target:  # candidates resampled to the query's length
                        t = qs[:, :length].reshape(g, 1, -1)
                        src = _resampled(cs, cms, length, interpolate_to_length).reshape(g, k, -1)
                    else:  # the query resampled to its candidates' common length
                        t = _resampled(qs, qms, length, interpolate_to_length).reshape(g, 1, -1)
                        src = cs[:, :length].reshape(g, k, -1)
                    cross = torch.bmm(src, t.transpose(1, 2)).squeeze(2)  # (g, k)
                    sq = torch.linalg.vector_norm(src, dim=-1).square()  # a reduction: no (g, k, L*C) temporary
                    d = sq + (t * t).sum(-1) - 2.0 * cross
                    out[rows] = d.clamp_min(0.0) / length
                return out
        # per pair: repeat each query k times
        qr = q.repeat_interleave(k, dim=0)
        qmr = q_mask.repeat_interleave(k, dim=0)
        cf, cmf = c.reshape(n * k, *c.shape[2:]), c_mask.reshape(n * k, -1)
        if query_is_video:
            return self.paired(qr, qmr, cf, cmf).view(n, k)
        return self.paired(cf, cmf, qr, qmr).view(n, k)


def _equal_length_euclidean(video, video_mask, audio, audio_mask) -> torch.Tensor | None:
    """The interpolated Euclidean when every sequence of both blocks has the same valid
    length L (pre-interpolated models, fixed-length clips): the interpolation is then the
    identity in either direction (``interpolate_to_lengths`` at equal lengths returns its
    input exactly), so skip it. Same formula as ``interp_euclidean_matrix``; None otherwise.
    """
    length = video.shape[1]
    if audio.shape[1] != length or not bool(video_mask.all()) or not bool(audio_mask.all()):
        return None
    p, q = video.flatten(1), audio.flatten(1)
    d = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2.0 * (p @ q.T)
    return d.clamp_min(0.0) / length


def _resampled(x: torch.Tensor, mask: torch.Tensor, length: int, interpolate) -> torch.Tensor:
    """x's valid parts resampled to ``length`` steps; a no-op (no copy) when they already are."""
    if x.shape[1] >= length and bool(mask[:, :length].all()) and (x.shape[1] == length or not bool(mask[:, length:].any())):
        return x[:, :length]
    return interpolate(x, mask, length)


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


class RunningTopK:
    """Per-query top-k candidate indices under the ranking order (score desc, index asc).

    Blocks may arrive in any order; ties are always broken by the smaller index, so the
    result equals a stable sort of the full row (what :mod:`metrics` ranks by).
    """

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.scores = torch.full((n_queries, 0), float("-inf"))
        self.index = torch.zeros((n_queries, 0), dtype=torch.int64)

    def update(self, qa: int, qb: int, ca: int, cb: int, s: torch.Tensor) -> None:
        s = s.float().cpu()
        idx = torch.arange(ca, cb).expand(qb - qa, -1)
        old_s, old_i = self._rows(qa, qb)
        all_s = torch.cat([old_s, s], dim=1)
        all_i = torch.cat([old_i, idx], dim=1)
        # lexicographic (score desc, index asc): stable sort by index, then stable by score
        o = torch.sort(all_i, dim=1, stable=True).indices
        all_s, all_i = all_s.gather(1, o), all_i.gather(1, o)
        o = torch.sort(all_s, dim=1, descending=True, stable=True).indices[:, : self.k]
        self._store(qa, qb, all_s.gather(1, o), all_i.gather(1, o))

    def _rows(self, qa, qb):
        return self.scores[qa:qb], self.index[qa:qb]

    def _store(self, qa, qb, s, i):
        width = s.shape[1]
        if self.scores.shape[1] < width:
            pad = width - self.scores.shape[1]
            self.scores = torch.cat([self.scores, torch.full((len(self.scores), pad), float("-inf"))], dim=1)
            self.index = torch.cat([self.index, torch.full((len(self.index), pad), -1, dtype=torch.int64)], dim=1)
        self.scores[qa:qb, :width] = s
        self.index[qa:qb, :width] = i


# ----------------------------------------------------------------------------- the three methods


@dataclass(frozen=True)
class SearchConfig:
    """Block sizes and device of a search (results do not depend on the block sizes)."""

    query_block: int = 1024
    candidate_chunk: int = 1024
    rerank_budget_mb: int = 256  # gathered candidates held at once while re-ranking
    rerank: str = "auto"  # 'gather' | 'union' | 'auto' (see hybrid_rerank)
    device: str = "cpu"

    def validate(self) -> None:
        if self.query_block < 1 or self.candidate_chunk < 1 or self.rerank_budget_mb < 1:
            raise ValueError("query_block, candidate_chunk and rerank_budget_mb must be >= 1")
        if self.rerank not in ("auto", "gather", "union"):
            raise ValueError(f"rerank must be 'auto', 'gather' or 'union', got {self.rerank!r}")


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

    ranks = _stream_ranks(
        len(queries), len(candidates), cfg.query_block, cfg.candidate_chunk, score,
        topk.update if topk else None,
    )
    return ranks, (topk.index if topk else None)


def seq_search(
    queries: Latents, candidates: Latents, direction: str, distance: SeqDistance, cfg: SearchConfig
) -> torch.Tensor:
    """Exact sequence-distance ranks over all candidates; (Q,) int64."""
    dev = torch.device(cfg.device)
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
        with torch.no_grad():
            if direction == "v2a":  # queries are videos: rows already video
                d = distance.matrix(q, qm, c, cm)
            else:
                d = distance.matrix(c, cm, q, qm).T
        return -d  # higher = better

    return _stream_ranks(len(queries), len(candidates), cfg.query_block, cfg.candidate_chunk, score)


# per candidate row: a gathered copy costs about as much as this many dot products
# computed inside a matrix product (CPU: memory ~10 GB/s vs matmul ~100 GFLOP/s)
_DOTS_PER_ROW_COPY = 32


def hybrid_rerank(
    queries: Latents,
    candidates: Latents,
    direction: str,
    distance: SeqDistance,
    agg_ranks: torch.Tensor,
    agg_topk: torch.Tensor,
    cfg: SearchConfig,
) -> torch.Tensor:
    """Re-rank each query's agg top-k (Q, k) by the sequence distance; (Q,) ranks.

    A positive inside its top-k: 1 + #(top-k candidates with a smaller distance) +
    #(equal distance and smaller index). Outside: its agg rank (> k).

    Two ways to get the n x k distances of a block of n queries, chosen per block
    (``cfg.rerank='auto'``) by a cost estimate:
    - gather: copy each query's k candidates and score them with a batched product
      (n * k candidate rows copied; best for small k);
    - union: score the block against the union U of its candidates with the same
      (n x chunk) matrix products as seq, streamed over U in chunks, and pick the
      needed entries (|U| rows copied, n * |U| dot products; best when the top-k
      lists overlap, e.g. k = 1000 of 10 000).
    Every query is re-ranked (a real search does not know its positive).
    """
    n_q, k = agg_topk.shape
    ranks = agg_ranks.clone()
    row_bytes = max(int(candidates.lengths.max()), int(queries.lengths.max())) * candidates.dim * 4
    gather_sub = max(1, (cfg.rerank_budget_mb << 20) // max(1, row_bytes * k * 3))
    for qa in range(0, n_q, cfg.query_block):
        qb = min(qa + cfg.query_block, n_q)
        idx = agg_topk[qa:qb]  # (n, k)
        union = torch.unique(idx)  # sorted
        n = qb - qa
        cost_union = len(union) * (1 + n / _DOTS_PER_ROW_COPY)
        cost_gather = 2 * n * k
        use_union = cfg.rerank == "union" or (cfg.rerank == "auto" and cost_union < cost_gather)
        if use_union and distance.name == "euclidean":
            d = _rerank_union(queries, candidates, direction, distance, qa, qb, idx, union, cfg)
        else:
            d = torch.cat([
                _rerank_gather(queries, candidates, direction, distance, sa, min(sa + gather_sub, qb), agg_topk, cfg)
                for sa in range(qa, qb, gather_sub)
            ])
        s = -d.cpu()
        positives = torch.arange(qa, qb)
        hit = idx == positives[:, None]  # (n, k)
        keep = hit.any(1).nonzero(as_tuple=True)[0]  # queries whose positive is in their top-k
        pos_s = s[keep][hit[keep]]  # exactly one hit per kept row
        ranks[qa + keep] = 1 + count_ahead(s[keep], pos_s, idx[keep], positives[keep])
    return ranks


def _rerank_gather(queries, candidates, direction, distance, qa, qb, agg_topk, cfg) -> torch.Tensor:
    """(qb - qa, k) distances of queries [qa, qb) to their own gathered candidates."""
    dev = torch.device(cfg.device)
    idx = agg_topk[qa:qb]
    n2, k = idx.shape
    q, qm = queries.take(np.arange(qa, qb))
    c, cm = candidates.take(idx.reshape(-1).numpy())
    c = c.view(n2, k, *c.shape[1:])
    cm = cm.view(n2, k, -1)
    with torch.no_grad():
        return distance.rerank(q.to(dev), qm.to(dev), c.to(dev), cm.to(dev), query_is_video=direction == "v2a")


def _rerank_union(queries, candidates, direction, distance, qa, qb, idx, union, cfg) -> torch.Tensor:
    """(n, k) distances via (n x chunk) blocks over the sorted union of the block's candidates."""
    dev = torch.device(cfg.device)
    q, qm = queries.take(np.arange(qa, qb))
    q, qm = q.to(dev), qm.to(dev)
    where = torch.searchsorted(union, idx)  # (n, k) position of each candidate in the union
    out = torch.empty(idx.shape, dtype=torch.float32)
    step = cfg.candidate_chunk
    for ua in range(0, len(union), step):
        ub = min(ua + step, len(union))
        c, cm = candidates.take(union[ua:ub].numpy())
        c, cm = c.to(dev), cm.to(dev)
        with torch.no_grad():
            if direction == "v2a":
                block = distance.matrix(q, qm, c, cm)
            else:
                block = distance.matrix(c, cm, q, qm).T
        sel = (where >= ua) & (where < ub)
        rows, cols = sel.nonzero(as_tuple=True)
        out[rows, cols] = block[rows.to(dev), (where[rows, cols] - ua).to(dev)].float().cpu()
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
    distance: SeqDistance = SeqDistance(),
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


def iter_method_rows(results: dict[str, DirectionResult]) -> Iterator[tuple[str, str, torch.Tensor]]:
    for direction, res in results.items():
        for method, ranks in res.ranks.items():
            yield direction, method, ranks
