"""Running top-K under the ranking order (score desc, index asc), with one merger.

:func:`rank_keys` packs a float32 score and a candidate index into one int64 key that
orders as (score desc, index asc): one ``topk`` over keys is the stable ranking order,
ties included. :func:`merge_block` merges a block of scores into a running (n, k) list of
keys; :class:`RunningTopK` keeps those lists for the blocks of a streamed search; the
first stage (:mod:`.first_stage`) and the gallery's seq search use :func:`merge_block`
directly.
"""

from __future__ import annotations

import torch

_INT64_MIN = torch.iinfo(torch.int64).min


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


def key_scores(keys: torch.Tensor) -> torch.Tensor:
    """The float32 scores back from :func:`~scav.retrieve.search.rank_keys` (NaN for empty slots)."""
    ordered = keys >> 32  # arithmetic shift: the monotone int32 image of the score
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered).to(torch.int32)
    out = bits.view(torch.float32).clone()
    out[keys == _INT64_MIN] = float("nan")
    return out


def _hits(s: torch.Tensor, thr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of s (n, C) strictly above thr (n,), row-major; rows without any are
    skipped by a max first (for clustered data most rows of a chunk have none)."""
    hot = (s.amax(1) > thr).nonzero(as_tuple=True)[0]
    if len(hot) == 0:
        return hot, hot
    if 2 * len(hot) > len(s):  # most rows: one pass over the block, no copy of its hot rows
        return (s > thr[:, None]).nonzero(as_tuple=True)
    r, c = (s[hot] > thr[hot, None]).nonzero(as_tuple=True)
    return hot[r], c


def _merge_hits(keys: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor, scores: torch.Tensor,
                k: int) -> torch.Tensor:
    """keys (n, k) of the best so far, plus hits (rows ascending, their candidate indices and
    scores) -> (n, k) keys in ranking order."""
    if len(rows) == 0:
        return keys
    n = len(keys)
    counts = torch.bincount(rows, minlength=n)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(rows), device=rows.device) - first[rows]
    touched = counts.nonzero(as_tuple=True)[0]
    where = torch.full((n,), -1, dtype=torch.int64, device=rows.device)
    where[touched] = torch.arange(len(touched), device=rows.device)
    extra = torch.full((len(touched), int(counts.max())), _INT64_MIN, dtype=torch.int64, device=rows.device)
    extra[where[rows], slot] = rank_keys(scores, cand)
    keys = keys.clone()
    keys[touched] = torch.topk(torch.cat([keys[touched], extra], dim=1), k, dim=1).values
    return keys


def merge_block(keys: torch.Tensor, s: torch.Tensor, ca: int, k: int, in_order: bool = True) -> torch.Tensor:
    """keys (n, k') of the best so far merged with the exact score block s (n, C) of candidates
    ca..; returns (n, min(k, k' + C)) keys in ranking order. in_order: every candidate held has
    an index below ``ca`` (blocks arrive in index order), so a tie with the k-th stays out."""
    if keys.shape[1] < k or not in_order:  # every candidate may enter
        idx = torch.arange(ca, ca + s.shape[1], device=s.device).expand_as(s)
        both = torch.cat([keys, rank_keys(s, idx)], dim=1)
        return torch.topk(both, min(k, both.shape[1]), dim=1).values
    # only scores strictly above a row's k-th can enter (a tie comes later in index order)
    rows, cols = _hits(s, key_scores(keys[:, -1]))
    return _merge_hits(keys, rows, ca + cols, s[rows, cols], k)




class RunningTopK:
    """Per-query top-k candidate indices under the ranking order (score desc, index asc),
    fed score blocks of (query block, candidate chunk) by a streamed search.

    Blocks may arrive in any order (a block before the highest candidate seen is merged in
    full); ties are always broken by the smaller index, so the result equals a stable sort of
    the full row (what :mod:`scav.sequence.metrics` ranks by).
    """

    def __init__(self, n_queries: int, k: int):
        if n_queries and k >= 1 << 31:
            raise ValueError("k too large")
        self.k, self.n = k, n_queries
        self._lists: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}  # (qa, qb) -> (keys, candidates up to)

    @property
    def keys(self) -> torch.Tensor:
        """(Q, k') int64 keys in ranking order (k' = min(k, candidates seen); empty = INT64 min)."""
        width = max((keys.shape[1] for keys, _ in self._lists.values()), default=0)
        out = torch.full((self.n, width), _INT64_MIN, dtype=torch.int64)
        for (qa, qb), (keys, _) in self._lists.items():
            out[qa:qb, : keys.shape[1]] = keys
        return out

    @property
    def index(self) -> torch.Tensor:
        """(Q, k') int64 indices in ranking order (k' = min(k, candidates seen))."""
        return key_index(self.keys)

    def update(self, qa: int, qb: int, ca: int, cb: int, s: torch.Tensor) -> None:
        if cb > 1 << 32:
            raise ValueError("more than 2**32 candidates")
        keys, upto = self._lists.get((qa, qb), (torch.empty((qb - qa, 0), dtype=torch.int64), 0))
        keys = merge_block(keys, s.float().cpu(), ca, self.k, in_order=ca >= upto)
        self._lists[(qa, qb)] = (keys, max(upto, cb))
