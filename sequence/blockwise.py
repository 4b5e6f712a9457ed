"""Masks, step costs and the block loop shared by the all-pairs sequence distances.

Conventions of every distance in :mod:`scav.sequence`: ``x (B1, N, C)`` with ``x_mask (B1, N)``
and ``y (B2, M, C)`` with ``y_mask (B2, M)`` (bool, True = real step; valid steps first,
padding at the end); the result is ``(B1, B2)``, row ``i`` = ``x_i`` (video in SCAV),
column ``j`` = ``y_j`` (audio).

The all-pairs soft-DTW / Wasserstein cost is ``B1 * B2 * N * M`` cells. It is processed in
blocks of at most ``chunk`` cells, the pairwise costs are built with one matrix product per
block (``||a||^2 + ||b||^2 - 2 a.b``, never ``(B1, B2, N, M, C)``), and when gradients are
needed each block is wrapped in activation checkpointing, so the memory held for the backward
pass is only the inputs: the block is recomputed during backward.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_CELLS = 2**24  # ~16.8 M DP cells per block: ~64 MiB per float32 block tensor


def valid_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Number of valid steps per sequence.

    mask: (B, N) bool, True = real step, valid steps first. Returns (B,) long.
    Raises ValueError if a mask is not a prefix mask (a gap before the padding) or is empty.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, N), got {tuple(mask.shape)}")
    lengths = mask.sum(dim=1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask.bool()):
        raise ValueError("mask must be a prefix mask (valid steps first, padding at the end)")
    if mask.shape[0] > 0 and int(lengths.min()) < 1:
        raise ValueError("every sequence needs at least one valid step")
    return lengths


def sq_norms(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N, C) -> (B, N) squared norms, zero at padded steps."""
    return (x * x).sum(-1) * mask.to(x.dtype)


def pairwise_sq_dist(xb: torch.Tensor, xn: torch.Tensor, yb: torch.Tensor, yn: torch.Tensor) -> torch.Tensor:
    """All-pairs step cost matrices.

    xb (b1, N, C), xn (b1, N) squared norms, yb (b2, M, C), yn (b2, M) ->
    (b1 * b2, N, M) with cost[i*b2 + j, a, b] = ||xb[i, a] - yb[j, b]||^2 (one matmul).
    Entries at padded steps are meaningless; the callers mask them.
    """
    b1, n, c = xb.shape
    b2, m, _ = yb.shape
    cross = (xb.reshape(b1 * n, c) @ yb.reshape(b2 * m, c).T).reshape(b1, n, b2, m)
    cost = xn[:, :, None, None] + yn[None, None, :, :] - 2.0 * cross
    return cost.permute(0, 2, 1, 3).reshape(b1 * b2, n, m)


def step_costs(xb, xmb, yb, ymb) -> torch.Tensor:
    """Squared-Euclidean step costs of every pair of a block: (b1 * b2, N, M), see above."""
    return pairwise_sq_dist(xb, sq_norms(xb, xmb), yb, sq_norms(yb, ymb))


def _blocks(b1: int, b2: int, cells_per_pair: int, chunk: int) -> list[tuple[slice, slice]]:
    """Row/column blocks so that each block has at most ``chunk`` DP cells (at least one pair)."""
    bj = max(1, min(b2, chunk // max(cells_per_pair, 1)))
    bi = max(1, min(b1, chunk // max(cells_per_pair * bj, 1)))
    return [
        (slice(i, min(i + bi, b1)), slice(j, min(j + bj, b2)))
        for i in range(0, b1, bi)
        for j in range(0, b2, bj)
    ]


def blockwise(
    block_fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    x_mask: torch.Tensor,
    y: torch.Tensor,
    y_mask: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """Assemble a (B1, B2) matrix from ``block_fn(xb, xmb, yb, ymb) -> (b1, b2)`` over blocks.

    Blocks are trimmed to their own longest valid sequence (less DP work, exact because
    the padding never influences a result) and checkpointed when a gradient is needed.
    """
    b1, n = x_mask.shape
    b2, m = y_mask.shape
    need_grad = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    x_len = valid_lengths(x_mask)
    y_len = valid_lengths(y_mask)
    out_rows: dict[int, list[torch.Tensor]] = {}
    for rs, cs in _blocks(b1, b2, n * m, chunk):
        nb = int(x_len[rs].max())
        mb = int(y_len[cs].max())
        args = (x[rs, :nb], x_mask[rs, :nb], y[cs, :mb], y_mask[cs, :mb])
        if need_grad:
            d = checkpoint(block_fn, *args, use_reentrant=False)
        else:
            d = block_fn(*args)
        out_rows.setdefault(rs.start, []).append(d)
    return torch.cat([torch.cat(out_rows[start], dim=1) for start in sorted(out_rows)], dim=0)
