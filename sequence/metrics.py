"""Retrieval metrics: the rank of each query's positive, and R@K / MedR / MeanR.

Pure functions of tensors. Scores are "higher is better" everywhere (a distance
enters as its negation). Query ``i``'s positive is candidate ``positives[i]``
(``i`` itself when retrieving within one split).

Tie rule (as open_clip: a stable order by candidate index)::

    rank(i) = 1 + #{j : s[i, j] > s[i, p]} + #{j : s[i, j] == s[i, p] and j < p},  p = positives[i]

so a positive tied with earlier candidates is ranked after them, and one tied
only with later candidates is ranked before them. Ranks are 1-based.

MedR follows the cav-mae / open_clip scripts: ``floor(median(rank - 1)) + 1``
(with an even number of queries the lower of the two middle ranks, never a
half). MeanR is the plain mean of the 1-based ranks. R@K is a percentage, as
in the paper's tables.
"""

from __future__ import annotations

import math

import torch

DEFAULT_KS = (1, 5, 10)


def count_ahead(
    scores: torch.Tensor,
    positive_scores: torch.Tensor,
    candidate_index: torch.Tensor,
    positives: torch.Tensor,
) -> torch.Tensor:
    """How many candidates of one block rank ahead of each query's positive.

    scores (Q, C): a block of scores (rows = queries, columns = candidates).
    positive_scores (Q,): each query's positive score, computed by the same
    code path as the blocks (so that equal means equal).
    candidate_index (C,) or (Q, C): global index of each column (per row when the
    candidates differ per query, as in hybrid re-ranking); positives (Q,): global
    index of each query's positive. Returns (Q,) int64 counts; the positive
    itself never counts. Summing this over the blocks of a partition of the
    candidates and adding 1 gives the rank (see the module's tie rule).
    """
    pos = positive_scores.unsqueeze(1)  # (Q, 1)
    better = scores > pos
    cand = candidate_index if candidate_index.dim() == 2 else candidate_index.unsqueeze(0)
    tied_before = (scores == pos) & (cand < positives.unsqueeze(1))
    return (better | tied_before).sum(dim=1, dtype=torch.int64)


def ranks_from_scores(scores: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """Rank (1-based) of each query's positive in a full score matrix.

    scores (Q, N), higher is better; positives (Q,) int64, default ``arange(Q)``.
    Returns (Q,) int64.
    """
    q, n = scores.shape
    if positives is None:
        positives = torch.arange(q, device=scores.device)
    positives = positives.to(device=scores.device, dtype=torch.int64)
    pos_scores = scores.gather(1, positives.unsqueeze(1)).squeeze(1)
    cand = torch.arange(n, device=scores.device)
    return 1 + count_ahead(scores, pos_scores, cand, positives)


def recall_at(ranks: torch.Tensor, k: int) -> float:
    """Percentage of queries whose positive is within the first ``k``."""
    if ranks.numel() == 0:
        return math.nan
    return 100.0 * (ranks <= k).double().mean().item()


def median_rank(ranks: torch.Tensor) -> float:
    """floor(median of 0-based ranks) + 1 (cav-mae / open_clip convention)."""
    if ranks.numel() == 0:
        return math.nan
    zero_based = (ranks - 1).double().sort().values
    n = zero_based.numel()
    mid = (zero_based[(n - 1) // 2] + zero_based[n // 2]) / 2  # the usual median
    return float(math.floor(mid.item()) + 1)


def mean_rank(ranks: torch.Tensor) -> float:
    if ranks.numel() == 0:
        return math.nan
    return ranks.double().mean().item()


def summarize_ranks(ranks: torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """{"R@1", "R@5", "R@10" (percent), "MedR", "MeanR"} from (Q,) 1-based ranks."""
    out = {f"R@{k}": recall_at(ranks, k) for k in ks}
    out["MedR"] = median_rank(ranks)
    out["MeanR"] = mean_rank(ranks)
    return out
