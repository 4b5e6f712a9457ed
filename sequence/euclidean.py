"""Interpolated Euclidean distance (paper §III-C): all pairs, matched pairs, sampled pairs.

One sequence (the *source*) is linearly resampled to the other's (the *target's*) valid
length L, and the distance is the mean over the L steps of the squared L2 difference::

    d(s, t) = (1/L) sum_k ||interp(s -> L)[k] - t[k]||^2 = (|s'|^2 + |t|^2 - 2 s'.t) / L

with s', t flattened to L * C. The all-pairs form is what training uses; the matched /
sampled forms are the same formula restricted to chosen pairs, for retrieval's re-ranking.
"""

from __future__ import annotations

import warnings

import torch

from .blockwise import valid_lengths
from .interpolation import interpolate_to_length, interpolate_to_lengths, resampled_or_cut


def _interp_euclidean_x2y(
    x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor
) -> torch.Tensor:
    y_len = valid_lengths(y_mask)
    b2 = y.shape[0]
    cols, order = [], []
    # Group the targets by valid length: x is interpolated once per distinct length L and
    # the group's distances come from one matmul over the flattened (L * C) axis.
    for length in torch.unique(y_len).tolist():
        idx = (y_len == length).nonzero(as_tuple=True)[0]
        p = interpolate_to_length(x, x_mask, length).flatten(1)  # (B1, L*C)
        q = y[idx, :length].flatten(1)  # (G, L*C)
        d = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2.0 * (p @ q.T)
        cols.append(d.clamp_min(0.0) / length)  # clamp: rounding can give tiny negatives
        order.append(idx)
    d = torch.cat(cols, dim=1)
    inverse = torch.empty(b2, dtype=torch.long, device=y.device)
    inverse[torch.cat(order)] = torch.arange(b2, device=y.device)
    return d[:, inverse]


def interp_euclidean_matrix(
    x: torch.Tensor,
    x_mask: torch.Tensor,
    y: torch.Tensor,
    y_mask: torch.Tensor,
    direction: str = "x2y",
) -> torch.Tensor:
    """Interpolated Euclidean distance between all pairs.

    x (B1, N, C), x_mask (B1, N), y (B2, M, C), y_mask (B2, M) -> D (B1, B2).
    'x2y': d_ij = (1/m_j) sum_t ||interp(x_i -> m_j)[t] - y_j[t]||^2, x_i's valid part
    linearly resampled (:func:`interpolate_to_length`) to y_j's valid length m_j.
    'y2x': the reverse (y_j resampled to x_i's valid length n_i, averaged over n_i steps).
    In SCAV x = video, y = audio, so 'x2y' = resample='video' (the paper's v->a).
    Never materialises (B1, B2, T, C): one interpolation and one matmul per distinct
    target length.
    """
    if direction == "x2y":
        return _interp_euclidean_x2y(x, x_mask, y, y_mask)
    if direction == "y2x":
        return _interp_euclidean_x2y(y, y_mask, x, x_mask).T
    raise ValueError(f"direction must be 'x2y' or 'y2x', got {direction!r}")


def equal_length_euclidean(x, x_mask, y, y_mask) -> torch.Tensor | None:
    """The all-pairs interpolated Euclidean when every sequence of both sides has the same
    valid length L (pre-interpolated models, fixed-length clips), else None.

    x (B1, L, C), y (B2, L, C) -> (B1, B2). The interpolation is then the identity in
    either direction (``interpolate_to_lengths`` at equal lengths returns its input
    exactly), so it is skipped; same formula as :func:`interp_euclidean_matrix`.
    """
    length = x.shape[1]
    if y.shape[1] != length or not bool(x_mask.all()) or not bool(y_mask.all()):
        return None
    p, q = x.flatten(1), y.flatten(1)
    d = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2.0 * (p @ q.T)
    return d.clamp_min(0.0) / length


def paired_euclidean(src, src_mask, tgt, tgt_mask) -> torch.Tensor:
    """Matched pairs: src (P, N, C), tgt (P, M, C) -> (P,), d(src_p -> tgt_p).

    Vectorised over pairs: each source is resampled to its own target's valid length.
    """
    tgt_len = valid_lengths(tgt_mask)
    if src.shape[1] == tgt.shape[1] and torch.equal(src_mask, tgt_mask):
        res = src  # same valid lengths: linear interpolation is the identity
    else:
        res, _ = interpolate_to_lengths(src, src_mask, tgt_len)
        tgt = tgt[:, : res.shape[1]]
    diff = (res - tgt).square().sum(-1)  # (P, L); padded steps are zero on both sides
    return diff.sum(1) / tgt_len.to(diff.dtype)


def sampled_euclidean(src, src_mask, s_idx, tgt, tgt_mask, t_idx) -> torch.Tensor:
    """d(src[s_idx[p]] -> tgt[t_idx[p]]) for P chosen pairs -> (P,).

    src (Bs, N, C), tgt (Bt, M, C), s_idx / t_idx (P,) long, distinct pairs.
    The same ``(|s|^2 + |t|^2 - 2 s.t) / L`` as the all-pairs form, grouped by target
    length L, but only the P cross terms are computed: a sampled matrix product
    (``torch.sparse.sampled_addmm``, one dot product per pair, reading the sequences
    in place). Nothing of size P x L x C is built, so re-ranking k of N costs about
    k / N of a full product instead of a gather of P candidate copies.
    """
    out = torch.empty(len(s_idx), dtype=src.dtype, device=src.device)
    pair_len = valid_lengths(tgt_mask)[t_idx]
    for length in torch.unique(pair_len).tolist():
        p = (pair_len == length).nonzero(as_tuple=True)[0]
        s, s_loc = _flat_at_length(src, src_mask, s_idx[p], length, resample=True)  # (ms, L*C)
        t, t_loc = _flat_at_length(tgt, tgt_mask, t_idx[p], length, resample=False)  # (mt, L*C)
        cross = _sampled_dots(s, t, s_loc, t_loc)
        # squared norms as reductions (no temporary of the operand's size)
        sq_s = torch.linalg.vector_norm(s, dim=1).square()
        sq_t = torch.linalg.vector_norm(t, dim=1).square()
        out[p] = (sq_s[s_loc] + sq_t[t_loc] - 2.0 * cross).clamp_min(0.0) / length
    return out


def _flat_at_length(x, mask, idx, length: int, resample: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequences ``idx`` of x at ``length`` steps (valid part resampled if ``resample``,
    else cut) as a (m, length * C) matrix, and each entry of idx's row in it.

    When x already is at that length it is used in place (a view, rows = idx): copying the
    needed rows out would cost more than the sampled product itself.
    """
    if x.shape[1] == length and bool(mask.all()):
        return x.reshape(x.shape[0], -1), idx
    rows, loc = torch.unique(idx, return_inverse=True)
    xs, ms = x[rows], mask[rows]
    xs = resampled_or_cut(xs, ms, length) if resample else xs[:, :length]
    return xs.reshape(len(rows), -1), loc


def _sampled_dots(s: torch.Tensor, t: torch.Tensor, s_loc: torch.Tensor, t_loc: torch.Tensor) -> torch.Tensor:
    """(P,) dot products s[s_loc[p]] . t[t_loc[p]] (distinct pairs) via a sampled matmul."""
    n_s, n_t = s.shape[0], t.shape[0]
    order = torch.argsort(s_loc * n_t + t_loc)  # CSR: by row, columns ascending
    crow = torch.zeros(n_s + 1, dtype=torch.int64, device=s.device)
    crow[1:] = torch.cumsum(torch.bincount(s_loc, minlength=n_s), 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": it is, and tested here
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            crow, t_loc[order], torch.zeros(len(order), dtype=s.dtype, device=s.device),
            size=(n_s, n_t), check_invariants=False,
        )
        vals = torch.sparse.sampled_addmm(pattern, s.contiguous(), t.contiguous().T, beta=0.0).values()
    out = torch.empty_like(vals)
    out[order] = vals
    return out
