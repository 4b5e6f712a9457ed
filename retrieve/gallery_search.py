"""Any queries against a gallery: each query's top results by agg, seq or hybrid.

The evaluation (:mod:`.search`) ranks each clip's own partner within a split; here the queries
are arbitrary (clips, media files) and the output is a ranked list per query.

- agg: the first stage (:mod:`.first_stage`: torch or FAISS, exact or approximate) over the
  gallery's L2-normalised pooled embeddings.
- hybrid: the first stage's top k, re-ranked by the sequence distance through
  :func:`.rerank.rerank_distances` (the evaluation's re-ranking code): only those k
  candidates' sequences are read from the (memory-mapped) store.
- seq: the exact sequence distance to every gallery clip, block by block (as the
  evaluation's seq), keeping a running top list.

Ties follow the evaluation's rule (smaller gallery index first), so an exact search's list
is the order the evaluation ranks by. Scores: cosine for agg, -distance for seq and hybrid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scav.model.latents import Latents
from scav.sequence.spec import DistanceSpec

from .blocks import BlockConfig, seq_blocks
from .first_stage import FirstStageConfig, agg_topk
from .rerank import query_distances, rerank_distances
from .search_config import DIRECTIONS, sides  # noqa: F401 (sides: importable from here)
from .topk import key_index, key_scores, merge_block, rank_keys

METHODS = ("agg", "seq", "hybrid")


@dataclass
class Ranked:
    """Per query the top gallery rows: index (Q, n) int64 (-1 = none), scores (Q, n) float32,
    higher = closer; first_stage: which path chose the candidates (None for seq)."""

    index: np.ndarray
    scores: np.ndarray
    first_stage: str | None
    seconds: dict[str, float] = field(default_factory=dict)


def _order(scores: torch.Tensor, index: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (scores, gallery index) put in ranking order (score desc, index asc), first n;
    entries with index < 0 (none) go last and stay -1."""
    keys = rank_keys(scores, index.clamp(min=0))
    keys = torch.where(index < 0, torch.iinfo(torch.int64).min, keys)
    top = torch.topk(keys, n, dim=1).values
    idx = key_index(top)
    missing = top == torch.iinfo(torch.int64).min
    idx[missing] = -1
    return key_scores(top).numpy(), idx.numpy()


class ReusingStore(Latents):
    """A candidate store whose ``take`` / ``range`` copy into one buffer reused from call to call.

    The re-rank reads its candidates chunk by chunk and drops each chunk before reading the
    next (:func:`.rerank.rerank_distances`); a fresh array per chunk costs more in page faults
    than the copy itself (bench VM: ~1 s to first-touch 520 MB, 0.05 s to copy it again). Only
    for consumers that never hold two results at once. Wraps a plain :class:`Latents`, or any
    store with ``take_into(idx, out) -> mask``.
    """

    def __init__(self, inner: Latents):  # shares the inner store's arrays; no dataclass checks
        self.inner = inner
        self.seq, self.offsets, self.emb = inner.seq, inner.offsets, inner.emb
        self.lengths, self.uniform = inner.lengths, inner.uniform
        self._buf = np.empty(0, dtype=np.float32)

    @staticmethod
    def wraps(store: Latents) -> bool:
        return type(store) is Latents or hasattr(store, "take_into")

    def take(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        lmax = int(self.lengths[idx].max()) if len(idx) else 1
        size = len(idx) * lmax * self.dim
        if self._buf.size < size:
            self._buf = np.empty(size, dtype=np.float32)
        out = self._buf[:size].reshape(len(idx), lmax, self.dim)
        if hasattr(self.inner, "take_into"):
            mask = self.inner.take_into(idx, out)
        elif self.uniform:
            # mode='wrap' (indices are valid): np.take with out= and mode='raise' buffers the copy
            np.take(self.seq.reshape(len(self), lmax, self.dim), idx, axis=0, out=out, mode="wrap")
            mask = np.ones((len(idx), lmax), dtype=bool)
        else:
            steps = np.arange(lmax)
            mask = steps[None, :] < self.lengths[idx][:, None]
            rows = np.where(mask, self.offsets[idx][:, None] + steps[None, :], 0)
            np.take(self.seq, rows.reshape(-1), axis=0, out=out.reshape(-1, self.dim), mode="wrap")
            out[~mask] = 0.0
        return torch.from_numpy(out), torch.from_numpy(np.asarray(mask, dtype=bool))

    def range(self, a, b):
        return self.take(np.arange(a, b))


def hybrid_topk(queries: Latents, candidates: Latents, direction: str, distance: DistanceSpec,
                first: np.ndarray, topk: int, cfg: BlockConfig) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank each query's first-stage candidates ``first`` (Q, k) (-1 = none) by the sequence
    distance; (scores = -distance (Q, topk), index (Q, topk)) in ranking order."""
    idx = torch.from_numpy(np.ascontiguousarray(first, dtype=np.int64))
    missing = idx < 0
    if ReusingStore.wraps(candidates):
        candidates = ReusingStore(candidates)
    d = rerank_distances(queries, candidates, direction, distance, idx.clamp(min=0), cfg)
    d[missing] = float("inf")
    return _order(-d, idx.masked_fill(missing, -1), min(topk, idx.shape[1]))


def seq_topk(queries: Latents, candidates: Latents, direction: str, distance: DistanceSpec, topk: int,
             cfg: BlockConfig) -> tuple[np.ndarray, np.ndarray]:
    """Exact sequence-distance top ``topk`` over all candidates; (scores = -distance, index)."""
    dev = torch.device(cfg.device)
    q_block, c_chunk = seq_blocks(queries, candidates, cfg)
    keys_out = torch.empty((len(queries), topk), dtype=torch.int64)
    for qa in range(0, len(queries), q_block):
        qb = min(qa + q_block, len(queries))
        q, qm = (t.to(dev) for t in queries.range(qa, qb))
        q_len = queries.lengths[qa:qb]
        keys = torch.empty((qb - qa, 0), dtype=torch.int64)
        for ca in range(0, len(candidates), c_chunk):
            cb = min(ca + c_chunk, len(candidates))
            c, cm = (t.to(dev) for t in candidates.range(ca, cb))
            c_len = candidates.lengths[ca:cb]
            with torch.no_grad():
                d = query_distances(distance, direction, q, qm, c, cm, q_len, c_len, cfg.precision)
            keys = merge_block(keys, (-d).float().cpu(), ca, topk)
        keys_out[qa:qb] = keys
    return key_scores(keys_out).numpy(), key_index(keys_out).numpy()


def rank(
    queries: Latents,
    query_normed: np.ndarray,
    candidates: Latents,
    candidate_normed: np.ndarray,
    direction: str,
    method: str,
    topk: int,
    k: int | None = None,
    distance: DistanceSpec = DistanceSpec(),
    first_stage: FirstStageConfig = FirstStageConfig(),
    block_cfg: BlockConfig = BlockConfig(),
    ann_index=None,
) -> Ranked:
    """Each query's top ``topk`` gallery rows by ``method``.

    queries / candidates: the query side's and the gallery side's latents of ``direction``
    (a2v: audio queries, video candidates); *_normed: their L2-normalised pooled embeddings.
    k: hybrid's first-stage candidates (topk <= k <= gallery size).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    sides(direction)
    n = len(candidates)
    if not 1 <= topk <= n:
        raise ValueError(f"topk must be between 1 and the gallery size ({n}), got {topk}")
    if len(query_normed) != len(queries) or len(candidate_normed) != n:
        raise ValueError("latents and normalised embeddings differ in clip count")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if method == "seq":
        scores, index = seq_topk(queries, candidates, direction, distance, topk, block_cfg)
        seconds["seq"] = time.perf_counter() - t0
        return Ranked(index, scores, None, seconds)
    width = topk if method == "agg" else k
    if method == "hybrid" and (width is None or not topk <= width <= n):
        raise ValueError(f"hybrid needs topk <= k <= gallery size ({n}); got topk={topk}, k={k}")
    first = agg_topk(query_normed, candidate_normed, width, first_stage, ann_index)
    seconds["first_stage"] = time.perf_counter() - t0
    if method == "agg":
        return Ranked(first.index, first.scores, first.method, seconds)
    t1 = time.perf_counter()
    scores, index = hybrid_topk(queries, candidates, direction, distance, first.index, topk, block_cfg)
    seconds["rerank"] = time.perf_counter() - t1
    return Ranked(index, scores, first.method, seconds)
