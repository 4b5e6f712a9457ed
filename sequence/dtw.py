"""Soft-DTW (Cuturi & Blondel 2017), the distance SCAV trains with, and hard DTW for retrieval.

Squared-Euclidean step costs; shapes and mask convention as in :mod:`.blockwise`. Both run
an anti-diagonal wavefront over the DP table in a skewed layout (each diagonal is a
contiguous slice), for a whole block of pairs at once.
"""

from __future__ import annotations

import math

import torch

from .blockwise import DEFAULT_CHUNK_CELLS, blockwise, sq_norms, step_costs, valid_lengths


def _softmin3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, gamma: float) -> torch.Tensor:
    """-gamma * log(exp(-a/gamma) + exp(-b/gamma) + exp(-c/gamma)), +inf safe."""
    return -gamma * torch.logsumexp(torch.stack((a, b, c)) / -gamma, dim=0)


def _skew_index(n: int, m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index maps between a (N, M) grid and the anti-diagonal layout (K=N+M+3, A=N+2).

    Cell (a, b) (1-based, as in the DP table R) is stored at [k=a+b, a]. Returns
    ``gather (K*A,)`` (flat grid index, or -1 outside the grid) and
    ``scatter (N*M,)`` (flat diagonal index of each grid cell).
    """
    kk, aa = torch.meshgrid(
        torch.arange(n + m + 3, device=device), torch.arange(n + 2, device=device), indexing="ij"
    )
    bb = kk - aa
    inside = (aa >= 1) & (aa <= n) & (bb >= 1) & (bb <= m)
    gather = torch.where(inside, (aa - 1) * m + (bb - 1), torch.full_like(aa, -1)).reshape(-1)
    a0, b0 = torch.meshgrid(
        torch.arange(n, device=device), torch.arange(m, device=device), indexing="ij"
    )
    scatter = ((a0 + b0 + 2) * (n + 2) + (a0 + 1)).reshape(-1)
    return gather, scatter


class _SoftDTW(torch.autograd.Function):
    """Soft-DTW of P cost matrices (P, N, M) with per-pair lengths -> (P,).

    Forward: anti-diagonal wavefront over R in a skewed layout (each diagonal is a
    contiguous slice), R[a, b] = C[a, b] + softmin_gamma(R[a-1, b-1], R[a-1, b], R[a, b-1]).
    Backward: the E-matrix recursion of Cuturi & Blondel (2017, Alg. 2), run from each
    pair's own end cell (n_p, m_p); dL/dC = grad * E. The caller puts the shorter axis
    first (N <= M) so the diagonals are short.
    """

    @staticmethod
    def forward(ctx, cost, n_len, m_len, gamma):  # type: ignore[override]
        p, n, m = cost.shape
        gather, scatter = _skew_index(n, m, cost.device)
        kdim, adim = n + m + 3, n + 2
        flat = cost.reshape(p, n * m)
        cd = flat[:, gather.clamp_min(0)] * (gather >= 0).to(cost.dtype)
        cd = cd.reshape(p, kdim, adim)
        r = torch.full((p, kdim, adim), math.inf, dtype=cost.dtype, device=cost.device)
        r[:, 0, 0] = 0.0
        for k in range(2, n + m + 1):
            lo, hi = max(1, k - m), min(n, k - 1)
            r[:, k, lo : hi + 1] = cd[:, k, lo : hi + 1] + _softmin3(
                r[:, k - 2, lo - 1 : hi], r[:, k - 1, lo - 1 : hi], r[:, k - 1, lo : hi + 1], gamma
            )
        idx = torch.arange(p, device=cost.device)
        out = r[idx, n_len + m_len, n_len]
        ctx.save_for_backward(cd, r, n_len, m_len, scatter)
        ctx.gamma = gamma
        ctx.shape = (p, n, m)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        cd, r, n_len, m_len, scatter = ctx.saved_tensors
        gamma = ctx.gamma
        p, n, m = ctx.shape
        kdim, adim = n + m + 3, n + 2
        dev = cd.device
        idx = torch.arange(p, device=dev)
        r = r.clone()
        r[r == math.inf] = -math.inf  # cells outside the grid must contribute exp(-inf) = 0
        r[idx, n_len + m_len + 2, n_len + 1] = r[idx, n_len + m_len, n_len]
        cd = cd.clone()
        cd[idx, n_len + m_len + 2, n_len + 1] = 0.0
        e = torch.zeros((p, kdim, adim), dtype=cd.dtype, device=dev)
        e[idx, n_len + m_len + 2, n_len + 1] = 1.0
        nl, ml = n_len[:, None], m_len[:, None]
        for k in range(n + m, 1, -1):
            lo, hi = max(1, k - m), min(n, k - 1)
            a = torch.arange(lo, hi + 1, device=dev)[None, :]
            valid = (a <= nl) & ((k - a) <= ml)  # (P, len): inside this pair's own grid
            term = (k - a == ml + 1) & (a == nl + 1)  # this pair's end cell (keep its R)
            r_ab = r[:, k, lo : hi + 1]
            down = e[:, k + 1, lo + 1 : hi + 2] * torch.exp(
                (r[:, k + 1, lo + 1 : hi + 2] - r_ab - cd[:, k + 1, lo + 1 : hi + 2]) / gamma
            )
            right = e[:, k + 1, lo : hi + 1] * torch.exp(
                (r[:, k + 1, lo : hi + 1] - r_ab - cd[:, k + 1, lo : hi + 1]) / gamma
            )
            diag = e[:, k + 2, lo + 1 : hi + 2] * torch.exp(
                (r[:, k + 2, lo + 1 : hi + 2] - r_ab - cd[:, k + 2, lo + 1 : hi + 2]) / gamma
            )
            e[:, k, lo : hi + 1] = torch.where(valid, down + right + diag, e[:, k, lo : hi + 1])
            r[:, k, lo : hi + 1] = torch.where(valid | term, r_ab, -math.inf)
        g = e.reshape(p, kdim * adim)[:, scatter].reshape(p, n, m)
        a0 = torch.arange(n, device=dev)[None, :, None]
        b0 = torch.arange(m, device=dev)[None, None, :]
        inside = (a0 < n_len[:, None, None]) & (b0 < m_len[:, None, None])
        g = g * inside.to(g.dtype) * grad_out[:, None, None]
        return g, None, None, None


def soft_dtw_from_cost(
    cost: torch.Tensor, n_len: torch.Tensor, m_len: torch.Tensor, gamma: float = 0.1
) -> torch.Tensor:
    """Soft-DTW value of each cost matrix.

    cost (P, N, M), n_len (P,), m_len (P,) valid lengths -> (P,): R[n_p, m_p] of the
    soft-DTW recursion on cost[p, :n_p, :m_p] (entries beyond are ignored).
    """
    if gamma <= 0:
        raise ValueError("gamma must be > 0")
    n_len, m_len = n_len.to(cost.device, torch.long), m_len.to(cost.device, torch.long)
    if cost.shape[1] > cost.shape[2]:  # shorter axis first: shorter anti-diagonals
        cost, n_len, m_len = cost.transpose(1, 2), m_len, n_len
    return _SoftDTW.apply(cost.contiguous(), n_len, m_len, float(gamma))


def _soft_dtw_block(gamma: float):
    def block(xb, xmb, yb, ymb):
        cost = step_costs(xb, xmb, yb, ymb)
        nl = valid_lengths(xmb).repeat_interleave(yb.shape[0])
        ml = valid_lengths(ymb).repeat(xb.shape[0])
        return soft_dtw_from_cost(cost, nl, ml, gamma).reshape(xb.shape[0], yb.shape[0])

    return block


def _soft_dtw_self(x: torch.Tensor, x_mask: torch.Tensor, gamma: float, chunk: int) -> torch.Tensor:
    """sdtw(x_i, x_i) for each i: (B, N, C) -> (B,)."""
    n = x.shape[1]
    step = max(1, chunk // (n * n))
    outs = []
    for s in range(0, x.shape[0], step):
        xb, mb = x[s : s + step], x_mask[s : s + step]
        sq = sq_norms(xb, mb)
        cost = sq[:, :, None] + sq[:, None, :] - 2.0 * xb @ xb.transpose(1, 2)
        ln = valid_lengths(mb)
        outs.append(soft_dtw_from_cost(cost, ln, ln, gamma))
    return torch.cat(outs)


def soft_dtw_matrix(
    x: torch.Tensor,
    x_mask: torch.Tensor,
    y: torch.Tensor,
    y_mask: torch.Tensor,
    gamma: float = 0.1,
    normalize: bool = False,
    chunk: int = DEFAULT_CHUNK_CELLS,
) -> torch.Tensor:
    """Soft-DTW (Cuturi & Blondel 2017) between all pairs, squared-Euclidean step cost.

    x (B1, N, C), x_mask (B1, N), y (B2, M, C), y_mask (B2, M) -> D (B1, B2),
    D[i, j] = sdtw_gamma(x_i[:n_i], y_j[:m_j]) (same convention as ``tslearn.metrics.soft_dtw``).
    Values can be negative (softmin < min); the SCAV loss z-scores rows/columns, so only
    differences matter. ``normalize=True`` returns the divergence
    sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2 (Blondel et al. 2021), which is >= 0.
    ``chunk``: max DP cells (pairs * N * M) per block; memory ~ a few such blocks.
    """
    d = blockwise(_soft_dtw_block(gamma), x, x_mask, y, y_mask, chunk)
    if normalize:
        sx = _soft_dtw_self(x, x_mask, gamma, chunk)
        sy = _soft_dtw_self(y, y_mask, gamma, chunk)
        d = d - 0.5 * (sx[:, None] + sy[None, :])
    return d


# ----------------------------------------------------------------------------- hard DTW


def dtw_from_cost(cost: torch.Tensor, n_len: torch.Tensor, m_len: torch.Tensor) -> torch.Tensor:
    """Exact DTW value of each cost matrix (the gamma -> 0 limit of soft-DTW).

    cost (P, N, M), n_len (P,), m_len (P,) valid lengths -> (P,): R[n_p, m_p] of
    R[a, b] = C[a, b] + min(R[a-1, b-1], R[a-1, b], R[a, b-1]) on cost[p, :n_p, :m_p]
    (same convention as ``tslearn.metrics.dtw`` squared). No gradient: a retrieval distance.
    """
    cost = cost.detach()
    n_len, m_len = n_len.to(cost.device, torch.long), m_len.to(cost.device, torch.long)
    if cost.shape[1] > cost.shape[2]:  # shorter axis first: shorter anti-diagonals
        cost, n_len, m_len = cost.transpose(1, 2), m_len, n_len
    p, n, m = cost.shape
    gather, _ = _skew_index(n, m, cost.device)
    kdim, adim = n + m + 3, n + 2
    flat = cost.reshape(p, n * m)
    cd = (flat[:, gather.clamp_min(0)] * (gather >= 0).to(cost.dtype)).reshape(p, kdim, adim)
    r = torch.full((p, kdim, adim), math.inf, dtype=cost.dtype, device=cost.device)
    r[:, 0, 0] = 0.0
    for k in range(2, n + m + 1):
        lo, hi = max(1, k - m), min(n, k - 1)
        best = torch.minimum(torch.minimum(r[:, k - 2, lo - 1 : hi], r[:, k - 1, lo - 1 : hi]), r[:, k - 1, lo : hi + 1])
        r[:, k, lo : hi + 1] = cd[:, k, lo : hi + 1] + best
    return r[torch.arange(p, device=cost.device), n_len + m_len, n_len]


def _dtw_block(xb, xmb, yb, ymb):
    cost = step_costs(xb, xmb, yb, ymb)
    nl = valid_lengths(xmb).repeat_interleave(yb.shape[0])
    ml = valid_lengths(ymb).repeat(xb.shape[0])
    return dtw_from_cost(cost, nl, ml).reshape(xb.shape[0], yb.shape[0])


def dtw_matrix(
    x: torch.Tensor,
    x_mask: torch.Tensor,
    y: torch.Tensor,
    y_mask: torch.Tensor,
    chunk: int = DEFAULT_CHUNK_CELLS,
) -> torch.Tensor:
    """Hard DTW between all pairs, squared-Euclidean step cost (no gradient).

    x (B1, N, C), x_mask (B1, N), y (B2, M, C), y_mask (B2, M) -> D (B1, B2),
    D[i, j] = min over monotone alignments of the summed step costs of x_i[:n_i], y_j[:m_j]
    (``tslearn.metrics.dtw(x, y) ** 2``). Retrieval's option for models trained with
    soft-DTW: ranking by the best alignment rather than a soft mixture of alignments.
    """
    with torch.no_grad():
        return blockwise(_dtw_block, x, x_mask, y, y_mask, chunk)
