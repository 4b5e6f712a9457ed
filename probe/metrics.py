"""Probe metrics as pure functions of tensors: top-1 accuracy and (mean) average precision.

Labels are class indices; -1 marks a clip whose class the probe never saw in training
(it has no score column), so it is always a top-1 error and a negative for every class.
"""

from __future__ import annotations

import torch


def top1(scores: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose highest score is their label: scores (N, K), y (N,) int (-1 = unseen).

    Ties between classes go to the lowest index (``argmax``)."""
    if len(y) == 0:
        raise ValueError("top-1 of an empty set")
    return (scores.argmax(1) == y).double().mean().item()


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """AP of one ranking: scores (N,), positive (N,) bool, at least one positive.

    sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds, highest first: tied scores
    enter the ranking together (as in sklearn's ``average_precision_score``), so the result
    does not depend on the order of tied rows.
    """
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise ValueError("average precision needs at least one positive")
    s, order = torch.sort(scores.double(), descending=True)
    tp = torch.cumsum(positive[order].double(), 0)
    # the last row of each run of tied scores: where that threshold's counts are complete
    last = torch.nonzero(torch.cat([s[1:] != s[:-1], s.new_ones(1, dtype=torch.bool)])).squeeze(1)
    tp = tp[last]
    precision = tp / (last + 1).double()
    recall = tp / n_pos
    return torch.sum(torch.diff(recall, prepend=recall.new_zeros(1)) * precision).item()


def mean_average_precision(scores: torch.Tensor, y: torch.Tensor) -> float | None:
    """Mean over the classes present in ``y`` (index >= 0) of one-vs-rest AP of their score
    column: scores (N, K), y (N,) int. None when no row has a known class."""
    present = torch.unique(y[y >= 0]).tolist()
    if not present:
        return None
    return sum(average_precision(scores[:, c], y == c) for c in present) / len(present)
