"""Sequence distances between padded batches of latent sequences (pure torch): the index.

Every distance takes ``x (B1, N, C)`` with ``x_mask (B1, N)`` and ``y (B2, M, C)`` with
``y_mask (B2, M)`` (bool, True = real step; valid steps come first, padding is at the end)
and returns a ``(B1, B2)`` matrix; row ``i`` = ``x_i`` (video in SCAV), column ``j`` = ``y_j``
(audio). All are device/dtype agnostic and exact for mixed lengths: padded steps never
enter a result; all but hard DTW are differentiable.

- :mod:`.euclidean`: interpolated Euclidean (all pairs, matched pairs, sampled pairs)
- :mod:`.dtw`: soft-DTW, hard DTW
- :mod:`.wasserstein`: entropic OT with a position cost
- :mod:`.interpolation`, :mod:`.blockwise`: resampling, masks, the block loop

Which distance a model uses, with which parameters, is a :class:`~.spec.DistanceSpec`.
"""

from __future__ import annotations

import torch

from .blockwise import DEFAULT_CHUNK_CELLS, valid_lengths
from .dtw import dtw_matrix, soft_dtw_from_cost, soft_dtw_matrix
from .euclidean import interp_euclidean_matrix
from .interpolation import interpolate_to_length, interpolate_to_lengths
from .wasserstein import sinkhorn_log, wasserstein_matrix

__all__ = [
    "DEFAULT_CHUNK_CELLS",
    "valid_lengths",
    "interpolate_to_length",
    "interpolate_to_lengths",
    "interp_euclidean_matrix",
    "soft_dtw_from_cost",
    "soft_dtw_matrix",
    "dtw_matrix",
    "sinkhorn_log",
    "wasserstein_matrix",
    "distance_matrix",
    "DISTANCES",
]

DISTANCES = ("euclidean", "soft_dtw", "wasserstein")


def distance_matrix(
    name: str,
    x: torch.Tensor,
    x_mask: torch.Tensor,
    y: torch.Tensor,
    y_mask: torch.Tensor,
    **kw,
) -> torch.Tensor:
    """(B1, B2) distance matrix by name: 'euclidean' (kw: direction), 'soft_dtw'
    (kw: gamma, normalize, chunk) or 'wasserstein' (kw: eps, n_iter, pos_weight, pos_scale,
    tol, max_iter, chunk)."""
    if name == "euclidean":
        return interp_euclidean_matrix(x, x_mask, y, y_mask, **kw)
    if name == "soft_dtw":
        return soft_dtw_matrix(x, x_mask, y, y_mask, **kw)
    if name == "wasserstein":
        return wasserstein_matrix(x, x_mask, y, y_mask, **kw)
    raise ValueError(f"unknown distance {name!r}; expected one of {DISTANCES}")
