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
from .interpolation import interpolate_to_length, interpolate_to_lengths, interpolate_trusted, resampled_or_cut


PRECISIONS = ("fp32", "bf16")  # of the cross term of the all-pairs form (retrieval's seq)


def _sq_dist_flat(p: torch.Tensor, q: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Squared L2 between all rows: p (B1, D), q (B2, D) -> (B1, B2), clamped at 0.

    fp32: ``|p|^2 + |q|^2 - 2 p.q`` in the inputs' dtype (the formula used since the start:
    results stay bit-identical). bf16: only the cross term is rounded, its operands to
    bfloat16, accumulated and returned in float32; the norms stay exact. Rounding the norms
    too (the distance of the rounded sequences) was worse: a candidate's own rounding error
    then enters its norm, shifting it against every query alike (R@1 -0.4 point on the
    noisy synthetic set of tests/test_search_bf16.py, 0 with exact norms).
    """
    if precision == "fp32":
        d = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2.0 * (p @ q.T)
        return d.clamp_min(0.0)  # clamp: rounding can give tiny negatives
    if precision != "bf16":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    pb, qb = p.to(torch.bfloat16), q.to(torch.bfloat16)
    d = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2.0 * _bf16_mm_fp32(pb, qb).to(p.dtype)
    return d.clamp_min(0.0)


def _bf16_mm_fp32(pb: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
    """pb (B1, D) @ qb (B2, D).T, bfloat16 inputs, float32 accumulation and output: (B1, B2).

    CUDA has the kernel (``torch.mm(..., out_dtype=float32)``: tensor cores, fp32 accumulate).
    Elsewhere (``mm.dtype`` has no CPU kernel) the float32 product of the rounded values is
    the same arithmetic (a bf16 x bf16 product is exact in fp32), so CPU runs measure the
    accuracy of the GPU path, not its speed.
    """
    if pb.is_cuda:
        try:
            return torch.mm(pb, qb.T, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # a torch without out_dtype
            pass
    return pb.float() @ qb.float().T


def _host_lengths(lengths) -> torch.Tensor | None:
    """Valid lengths the caller already holds on the host (list / ndarray / CPU tensor) as a
    CPU long tensor, or None. Trusted to match the mask: checking would cost the sync they save."""
    if lengths is None:
        return None
    t = torch.as_tensor(lengths, dtype=torch.long)
    if t.device.type != "cpu":
        raise ValueError("host lengths must be on the CPU (a device tensor would need a sync)")
    return t


def length_groups(mask: torch.Tensor, lengths=None) -> list[tuple[int, torch.Tensor | None]]:
    """Sequences grouped by valid length, ascending: [(L, idx (G,) long on mask's device)].

    mask (B, N). idx lists the group's rows in ascending order (None: the group is all B
    rows, in order). With ``lengths`` on the host (see :func:`_host_lengths`) there is no
    device->host sync at all: the group sizes come from the host, the rows from a stable
    sort kept on the device. Without them, one sync (the distinct lengths and counts).
    """
    host = _host_lengths(lengths)
    if host is None:
        dev_len = valid_lengths(mask)
        uniq, counts = torch.unique(dev_len, return_counts=True)  # sorted
        uniq, counts = torch.stack([uniq, counts]).tolist()  # the one sync
    else:
        if host.shape != (mask.shape[0],):
            raise ValueError(f"lengths must be ({mask.shape[0]},), got {tuple(host.shape)}")
        dev_len = mask.sum(1)
        uniq, counts = (v.tolist() for v in torch.unique(host, return_counts=True))
    if len(uniq) == 1:
        return [(int(uniq[0]), None)]
    # stable: each group's rows stay ascending, as (dev_len == L).nonzero() lists them
    order = torch.argsort(dev_len, stable=True)
    groups, start = [], 0
    for length, count in zip(uniq, counts):
        groups.append((int(length), order[start : start + count]))
        start += count
    return groups


def _interp_euclidean_x2y(
    x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor,
    x_lengths=None, y_lengths=None, precision: str = "fp32",
) -> torch.Tensor:
    b2 = y.shape[0]
    cols, order = [], []
    # Group the targets by valid length: x is interpolated once per distinct length L and
    # the group's distances come from one matmul over the flattened (L * C) axis.
    for length, idx in length_groups(y_mask, y_lengths):
        p = _resample(x, x_mask, length, x_lengths).flatten(1)  # (B1, L*C)
        q = (y[:, :length] if idx is None else y[idx, :length]).flatten(1)  # (G, L*C)
        cols.append(_sq_dist_flat(p, q, precision) / length)
        order.append(idx)
    if order[0] is None:  # one group: columns already in order
        return cols[0]
    d = torch.cat(cols, dim=1)
    inverse = torch.empty(b2, dtype=torch.long, device=y.device)
    inverse[torch.cat(order)] = torch.arange(b2, device=y.device)
    return d[:, inverse]


def _resample(x: torch.Tensor, x_mask: torch.Tensor, length: int, x_lengths=None) -> torch.Tensor:
    """x's valid parts resampled to ``length`` steps: (B, N, C) -> (B, length, C).

    With host lengths, no sync: the interpolation weights come from the mask's row sums
    (trusted, see :func:`_host_lengths`), and when every row already has ``length`` valid
    steps the resampling is the identity (exactly: weight 0 on the next step) and skipped.
    """
    host = _host_lengths(x_lengths)
    if host is None:
        return interpolate_to_length(x, x_mask, length)
    if bool((host == length).all()) and x.shape[1] >= length:
        return x[:, :length]
    return interpolate_trusted(x, x_mask.sum(1), length)


def interp_euclidean_matrix(
    x: torch.Tensor,
    x_mask: torch.Tensor,
    y: torch.Tensor,
    y_mask: torch.Tensor,
    direction: str = "x2y",
    *,
    x_lengths=None,
    y_lengths=None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Interpolated Euclidean distance between all pairs.

    x (B1, N, C), x_mask (B1, N), y (B2, M, C), y_mask (B2, M) -> D (B1, B2).
    'x2y': d_ij = (1/m_j) sum_t ||interp(x_i -> m_j)[t] - y_j[t]||^2, x_i's valid part
    linearly resampled (:func:`interpolate_to_length`) to y_j's valid length m_j.
    'y2x': the reverse (y_j resampled to x_i's valid length n_i, averaged over n_i steps).
    In SCAV x = video, y = audio, so 'x2y' = resample='video' (the paper's v->a).
    Never materialises (B1, B2, T, C): one interpolation and one matmul per distinct
    target length.
    x_lengths / y_lengths: the valid lengths (B1,) / (B2,) when the caller holds them on the
    host (retrieval does): then no device->host sync at all (without them, one per call to
    group by length, plus the mask checks). Trusted to match the masks.
    precision: of the cross term, 'fp32' or 'bf16' (see :func:`_sq_dist_flat`).
    """
    if direction == "x2y":
        return _interp_euclidean_x2y(x, x_mask, y, y_mask, x_lengths, y_lengths, precision)
    if direction == "y2x":
        return _interp_euclidean_x2y(y, y_mask, x, x_mask, y_lengths, x_lengths, precision).T
    raise ValueError(f"direction must be 'x2y' or 'y2x', got {direction!r}")


def equal_length_euclidean(x, x_mask, y, y_mask, x_lengths=None, y_lengths=None,
                           precision: str = "fp32") -> torch.Tensor | None:
    """The all-pairs interpolated Euclidean when every sequence of both sides has the same
    valid length L (pre-interpolated models, fixed-length clips), else None.

    x (B1, L, C), y (B2, L, C) -> (B1, B2). The interpolation is then the identity in
    either direction (``interpolate_to_lengths`` at equal lengths returns its input
    exactly), so it is skipped; same formula as :func:`interp_euclidean_matrix`.
    With host lengths (x_lengths (B1,), y_lengths (B2,)) the test needs no device sync.
    """
    length = x.shape[1]
    if y.shape[1] != length:
        return None
    hx, hy = _host_lengths(x_lengths), _host_lengths(y_lengths)
    if hx is not None and hy is not None:
        if not (bool((hx == length).all()) and bool((hy == length).all())):
            return None
    elif not bool(x_mask.all()) or not bool(y_mask.all()):
        return None
    return _sq_dist_flat(x.flatten(1), y.flatten(1), precision) / length


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
