"""Sequence distances against independent computations (loops, tslearn, POT), float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scav.sequence.distances import (
    distance_matrix,
    interp_euclidean_matrix,
    interpolate_to_length,
    interpolate_to_lengths,
    soft_dtw_matrix,
    valid_lengths,
    wasserstein_matrix,
)

DT = torch.float64


def padded_batch(lengths, max_len, dim, seed, pad_value=0.0):
    """(B, max_len, dim) random sequences with the given valid lengths; padding = pad_value."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max_len, dim, generator=g, dtype=DT)
    mask = torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]
    x = torch.where(mask[..., None], x, torch.full_like(x, pad_value))
    return x, mask


def ref_interp(seq, length):
    """(n, C) -> (length, C) with F.interpolate on the unpadded sequence."""
    return F.interpolate(seq.T[None], size=length, mode="linear", align_corners=False)[0].T


# ----------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize("length", [1, 3, 5, 9, 16])
def test_interpolate_to_length_matches_f_interpolate(length):
    x, m = padded_batch([9, 5, 1, 3], 9, 3, seed=0, pad_value=7.0)
    y = interpolate_to_length(x, m, length)
    assert y.shape == (4, length, 3)
    for b, n in enumerate(valid_lengths(m).tolist()):
        torch.testing.assert_close(y[b], ref_interp(x[b, :n], length), rtol=0, atol=1e-12)


def test_interpolate_to_lengths_per_sequence_targets():
    x, m = padded_batch([6, 2, 4], 6, 2, seed=1, pad_value=-3.0)
    lengths = torch.tensor([3, 7, 4])
    y, ym = interpolate_to_lengths(x, m, lengths)
    assert y.shape == (3, 7, 2) and ym.tolist() == (torch.arange(7)[None] < lengths[:, None]).tolist()
    for b in range(3):
        n, L = int(m[b].sum()), int(lengths[b])
        torch.testing.assert_close(y[b, :L], ref_interp(x[b, :n], L), rtol=0, atol=1e-12)
        assert torch.all(y[b, L:] == 0)


def test_non_prefix_mask_rejected():
    x = torch.zeros(1, 3, 2, dtype=DT)
    with pytest.raises(ValueError):
        interpolate_to_length(x, torch.tensor([[True, False, True]]), 4)


# ----------------------------------------------------------------------------- interpolated Euclidean


def naive_interp_euclidean(x, xm, y, ym, direction):
    rows = []
    for i in range(x.shape[0]):
        row = []
        for j in range(y.shape[0]):
            xi, yj = x[i, : int(xm[i].sum())], y[j, : int(ym[j].sum())]
            if direction == "x2y":
                diff = ref_interp(xi, yj.shape[0]) - yj
            else:
                diff = xi - ref_interp(yj, xi.shape[0])
            row.append((diff**2).sum(-1).mean())
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("direction", ["x2y", "y2x"])
def test_interp_euclidean_matches_naive_values_and_grads(direction):
    x, xm = padded_batch([8, 5, 8, 3], 8, 4, seed=2, pad_value=5.0)
    y, ym = padded_batch([3, 6, 3], 6, 4, seed=3, pad_value=-5.0)
    x.requires_grad_(True)
    y.requires_grad_(True)
    w = torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(4))
    d = interp_euclidean_matrix(x, xm, y, ym, direction)
    gx, gy = torch.autograd.grad((d * w).sum(), (x, y))
    d_ref = naive_interp_euclidean(x, xm, y, ym, direction)
    gx_ref, gy_ref = torch.autograd.grad((d_ref * w).sum(), (x, y))
    torch.testing.assert_close(d, d_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gy, gy_ref, rtol=1e-9, atol=1e-10)
    assert torch.all(gx[~xm] == 0) and torch.all(gy[~ym] == 0)  # padding gets no gradient


def test_interp_euclidean_identical_sequences_zero():
    x, xm = padded_batch([5, 2], 5, 3, seed=5)
    d = interp_euclidean_matrix(x, xm, x, xm, "x2y")
    assert torch.all(d >= 0)
    torch.testing.assert_close(torch.diagonal(d), torch.zeros(2, dtype=DT), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- soft-DTW


def naive_soft_dtw(a, b, gamma):
    """Python DP over (n, m) with torch scalars (autograd through it)."""
    n, m = a.shape[0], b.shape[0]
    inf = torch.tensor(float("inf"), dtype=a.dtype)
    r = [[inf] * (m + 1) for _ in range(n + 1)]
    r[0][0] = torch.tensor(0.0, dtype=a.dtype)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            prev = torch.stack([r[i - 1][j - 1], r[i - 1][j], r[i][j - 1]])
            cost = ((a[i - 1] - b[j - 1]) ** 2).sum()
            r[i][j] = cost - gamma * torch.logsumexp(-prev / gamma, 0)
    return r[n][m]


@pytest.mark.slow  # tslearn's numba JIT takes ~15 s on first call; the naive DP test runs by default
def test_soft_dtw_matches_tslearn_mixed_lengths():
    tslearn_metrics = pytest.importorskip("tslearn.metrics")
    x, xm = padded_batch([7, 3, 5], 7, 3, seed=6, pad_value=9.0)
    y, ym = padded_batch([4, 9], 9, 3, seed=7, pad_value=-9.0)
    for gamma in (0.1, 1.0):
        d = soft_dtw_matrix(x, xm, y, ym, gamma=gamma)
        for i in range(3):
            for j in range(2):
                ref = tslearn_metrics.soft_dtw(
                    x[i, : int(xm[i].sum())].numpy(), y[j, : int(ym[j].sum())].numpy(), gamma=gamma
                )
                assert abs(float(d[i, j]) - ref) < 1e-9 * max(1.0, abs(ref))


@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_soft_dtw_grads_match_naive_dp(gamma):
    x, xm = padded_batch([5, 2, 4], 5, 3, seed=8, pad_value=3.0)
    y, ym = padded_batch([3, 6], 6, 3, seed=9, pad_value=-3.0)
    x.requires_grad_(True)
    y.requires_grad_(True)
    w = torch.randn(3, 2, dtype=DT, generator=torch.Generator().manual_seed(10))
    d = soft_dtw_matrix(x, xm, y, ym, gamma=gamma)
    gx, gy = torch.autograd.grad((d * w).sum(), (x, y))
    d_ref = torch.stack(
        [
            torch.stack(
                [
                    naive_soft_dtw(x[i, : int(xm[i].sum())], y[j, : int(ym[j].sum())], gamma)
                    for j in range(2)
                ]
            )
            for i in range(3)
        ]
    )
    gx_ref, gy_ref = torch.autograd.grad((d_ref * w).sum(), (x, y))
    torch.testing.assert_close(d, d_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gy, gy_ref, rtol=1e-8, atol=1e-10)


def test_soft_dtw_padding_has_no_influence_and_chunking_is_exact():
    x, xm = padded_batch([6, 3, 1], 6, 2, seed=11, pad_value=0.0)
    y, ym = padded_batch([2, 5], 5, 2, seed=12, pad_value=0.0)
    x2 = torch.where(xm[..., None], x, torch.full_like(x, 100.0))  # garbage in the padding
    y2 = torch.where(ym[..., None], y, torch.full_like(y, -100.0))
    x2.requires_grad_(True)
    ref = soft_dtw_matrix(x, xm, y, ym, gamma=0.3)
    d = soft_dtw_matrix(x2, xm, y2, ym, gamma=0.3, chunk=1)  # one pair per block
    torch.testing.assert_close(d, ref, rtol=1e-12, atol=1e-12)
    (gx,) = torch.autograd.grad(d.sum(), x2)
    assert torch.all(gx[~xm] == 0)


def test_soft_dtw_gradcheck_small():
    x, xm = padded_batch([3, 2], 3, 2, seed=13)
    y, ym = padded_batch([4, 1], 4, 2, seed=14)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: soft_dtw_matrix(a, xm, b, ym, gamma=0.5), (x, y), eps=1e-6, atol=1e-5
    )


def test_soft_dtw_normalized_divergence():
    x, xm = padded_batch([4, 2], 4, 2, seed=15)
    y, ym = padded_batch([3, 5], 5, 2, seed=16)
    raw = soft_dtw_matrix(x, xm, y, ym, gamma=0.5)
    div = soft_dtw_matrix(x, xm, y, ym, gamma=0.5, normalize=True)
    sx = [naive_soft_dtw(x[i, : int(xm[i].sum())], x[i, : int(xm[i].sum())], 0.5) for i in range(2)]
    sy = [naive_soft_dtw(y[j, : int(ym[j].sum())], y[j, : int(ym[j].sum())], 0.5) for j in range(2)]
    expected = raw - 0.5 * (torch.stack(sx)[:, None] + torch.stack(sy)[None, :])
    torch.testing.assert_close(div, expected, rtol=1e-10, atol=1e-10)
    assert torch.all(div >= -1e-10)
    self_div = soft_dtw_matrix(x, xm, x, xm, gamma=0.5, normalize=True)
    torch.testing.assert_close(torch.diagonal(self_div), torch.zeros(2, dtype=DT), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- Wasserstein


def pot_cost_matrix(a, b, pos_weight):
    n, m = a.shape[0], b.shape[0]
    ta = (np.arange(n) + 0.5) / n
    tb = (np.arange(m) + 0.5) / m
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) + pos_weight * (ta[:, None] - tb[None, :]) ** 2


@pytest.mark.parametrize("pos_weight", [0.0, 2.0])
def test_wasserstein_matches_pot_mixed_lengths(pos_weight):
    ot = pytest.importorskip("ot")
    x, xm = padded_batch([6, 2, 4], 6, 3, seed=17, pad_value=4.0)
    y, ym = padded_batch([5, 3], 5, 3, seed=18, pad_value=-4.0)
    eps, n_iter = 0.5, 300
    d = wasserstein_matrix(x, xm, y, ym, eps=eps, n_iter=n_iter, pos_weight=pos_weight, chunk=7)
    for i in range(3):
        for j in range(2):
            a = x[i, : int(xm[i].sum())].numpy()
            b = y[j, : int(ym[j].sum())].numpy()
            cost = pot_cost_matrix(a, b, pos_weight)
            plan = ot.bregman.sinkhorn_log(
                np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), cost, eps,
                numItermax=n_iter, stopThr=0.0, warn=False,
            )
            assert abs(float(d[i, j]) - float((plan * cost).sum())) < 1e-9


def test_wasserstein_gradient_is_envelope_gradient():
    """d/dx of the entropic OT objective (finite differences through POT) == our gradient."""
    ot = pytest.importorskip("ot")
    x, xm = padded_batch([3], 4, 2, seed=19)
    y, ym = padded_batch([4], 4, 2, seed=20)
    eps, n_iter = 1.0, 500
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(wasserstein_matrix(xr, xm, y, ym, eps=eps, n_iter=n_iter).sum(), xr)

    def entropic_objective(xv):
        a, b = xv[0, :3], y[0].numpy()
        cost = pot_cost_matrix(a, b, 1.0)
        p = ot.bregman.sinkhorn_log(np.full(3, 1 / 3), np.full(4, 1 / 4), cost, eps,
                                    numItermax=n_iter, stopThr=0.0, warn=False)
        return float((p * cost).sum() + eps * (p * np.log(p)).sum())

    h = 1e-6
    xv = x.numpy().copy()
    fd = np.zeros_like(xv)
    for a in range(3):
        for c in range(2):
            xp, xn = xv.copy(), xv.copy()
            xp[0, a, c] += h
            xn[0, a, c] -= h
            fd[0, a, c] = (entropic_objective(xp) - entropic_objective(xn)) / (2 * h)
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-5, atol=1e-7)


def test_wasserstein_is_order_sensitive_only_with_positions():
    x, xm = padded_batch([5], 7, 3, seed=21)
    y, ym = padded_batch([4], 4, 3, seed=22)
    x_rev = x.clone()
    x_rev[0, :5] = x[0, :5].flip(0)
    for pw, changes in ((0.0, False), (1.0, True)):
        d = wasserstein_matrix(x, xm, y, ym, eps=0.1, n_iter=200, pos_weight=pw)
        d_rev = wasserstein_matrix(x_rev, xm, y, ym, eps=0.1, n_iter=200, pos_weight=pw)
        assert (abs(float(d - d_rev)) > 1e-3) == changes


def test_distance_matrix_dispatch():
    x, xm = padded_batch([3, 2], 3, 2, seed=23)
    y, ym = padded_batch([2, 4], 4, 2, seed=24)
    torch.testing.assert_close(
        distance_matrix("euclidean", x, xm, y, ym, direction="y2x"),
        interp_euclidean_matrix(x, xm, y, ym, "y2x"),
    )
    torch.testing.assert_close(
        distance_matrix("soft_dtw", x, xm, y, ym, gamma=0.2), soft_dtw_matrix(x, xm, y, ym, gamma=0.2)
    )
    torch.testing.assert_close(
        distance_matrix("wasserstein", x, xm, y, ym), wasserstein_matrix(x, xm, y, ym)
    )
    with pytest.raises(ValueError):
        distance_matrix("cosine", x, xm, y, ym)


def test_float32_and_no_grad_paths():
    x, xm = padded_batch([5, 3], 5, 4, seed=25)
    y, ym = padded_batch([2, 4], 4, 4, seed=26)
    for name in ("euclidean", "soft_dtw", "wasserstein"):
        d64 = distance_matrix(name, x, xm, y, ym)
        with torch.no_grad():
            d32 = distance_matrix(name, x.float(), xm, y.float(), ym)
        assert d32.dtype == torch.float32 and d32.shape == (2, 2)
        torch.testing.assert_close(d32.double(), d64, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x, xm = padded_batch([9, 4, 7], 9, 8, seed=27)
    y, ym = padded_batch([5, 3], 5, 8, seed=28)
    for name in ("euclidean", "soft_dtw", "wasserstein"):
        cpu = distance_matrix(name, x, xm, y, ym)
        xc, yc = x.cuda().requires_grad_(True), y.cuda().requires_grad_(True)
        gpu = distance_matrix(name, xc, xm.cuda(), yc, ym.cuda())
        gpu.sum().backward()
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9)
        assert torch.isfinite(xc.grad).all() and torch.isfinite(yc.grad).all()
