"""CAV / SCAV losses against hand-written loops and a hand-worked case (float64)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scav.sequence.losses import cav_loss, scav_loss, zscore

DT = torch.float64


def loop_zscore(rows):
    """Plain-python z-score of a list of floats/tensors (population std, eps in the sqrt)."""
    n = len(rows)
    mean = sum(rows) / n
    var = sum((r - mean) ** 2 for r in rows) / n
    return [(r - mean) / torch.sqrt(var + 1e-6) for r in rows]


def loop_ce(logits, target):
    """-log softmax(logits)[target] by hand."""
    mx = max(logits)
    lse = mx + torch.log(sum(torch.exp(v - mx) for v in logits))
    return lse - logits[target]


def loop_scav(d, lam, normalize=True):
    b = d.shape[0]
    rows = [[d[i, j] for j in range(b)] for i in range(b)]
    cols = [[d[i, j] for i in range(b)] for j in range(b)]
    if normalize:
        rows = [loop_zscore(r) for r in rows]
        cols = [loop_zscore(c) for c in cols]
    total = 0.0
    for i in range(b):
        total = total + loop_ce([-v / lam for v in rows[i]], i)
        total = total + loop_ce([-v / lam for v in cols[i]], i)
    return total / (2 * b)


def loop_cav(v, a, scale):
    b = v.shape[0]
    cos = [[(v[i] @ a[j]) / (v[i].norm() * a[j].norm()) for j in range(b)] for i in range(b)]
    total = 0.0
    for i in range(b):
        total = total + loop_ce([scale * cos[i][j] for j in range(b)], i)
        total = total + loop_ce([scale * cos[j][i] for j in range(b)], i)
    return total / (2 * b)


def test_zscore_hand_worked_2x2():
    d = torch.tensor([[1.0, 3.0], [2.0, 6.0]], dtype=DT)
    # rows: [1,3] mean 2 std 1; [2,6] mean 4 std 2. cols: [1,2] mean 1.5 std .5; [3,6] mean 4.5 std 1.5
    torch.testing.assert_close(zscore(d, 1, eps=0.0), torch.tensor([[-1.0, 1.0], [-1.0, 1.0]], dtype=DT))
    torch.testing.assert_close(zscore(d, 0, eps=0.0), torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=DT))
    # loss with lambda = 1: each v->a row and a->v column has logits (+1, -1) (negated z),
    # target first for i=0 and second for i=1: L = (log(1 + e^-2) + log(1 + e^2)) / 2.
    out = scav_loss(d, torch.tensor(0.0, dtype=DT), eps=0.0)
    expected = 0.5 * (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2)))
    assert abs(float(out["scav_loss"]) - expected) < 1e-12


def test_scav_loss_matches_loop_values_and_grads():
    g = torch.Generator().manual_seed(0)
    d = (torch.rand(5, 5, generator=g, dtype=DT) * 10).requires_grad_(True)
    log_lam = torch.tensor(math.log(0.3), dtype=DT, requires_grad=True)
    for normalize in (True, False):
        out = scav_loss(d, log_lam, normalize=normalize)
        ref = loop_scav(d, torch.exp(log_lam), normalize=normalize)
        torch.testing.assert_close(out["scav_loss"], ref, rtol=1e-12, atol=1e-12)
        g1 = torch.autograd.grad(out["scav_loss"], (d, log_lam))
        g2 = torch.autograd.grad(ref, (d, log_lam))
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_scav_loss_matches_cross_entropy_formulation():
    g = torch.Generator().manual_seed(1)
    d = torch.rand(4, 4, generator=g, dtype=DT)
    lam = 0.5
    zr = (d - d.mean(1, keepdim=True)) / torch.sqrt(d.var(1, unbiased=False, keepdim=True) + 1e-6)
    zc = (d - d.mean(0, keepdim=True)) / torch.sqrt(d.var(0, unbiased=False, keepdim=True) + 1e-6)
    t = torch.arange(4)
    ref = 0.5 * (F.cross_entropy(-zr / lam, t) + F.cross_entropy((-zc / lam).T, t))
    out = scav_loss(d, torch.tensor(math.log(lam), dtype=DT))
    torch.testing.assert_close(out["scav_loss"], ref)
    assert not torch.allclose(out["logits"], out["logits_a2v"].T)  # non-symmetric normalisation


def test_cav_loss_matches_loop_values_and_grads():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(4, 6, generator=g, dtype=DT, requires_grad=True)
    a = torch.randn(4, 6, generator=g, dtype=DT, requires_grad=True)
    ls = torch.tensor(math.log(1 / 0.07), dtype=DT, requires_grad=True)
    out = cav_loss(v, a, ls)
    ref = loop_cav(v, a, torch.exp(ls))
    torch.testing.assert_close(out["cav_loss"], ref, rtol=1e-12, atol=1e-12)
    for x, y in zip(torch.autograd.grad(out["cav_loss"], (v, a, ls)), torch.autograd.grad(ref, (v, a, ls))):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_cav_logit_scale_clamped_at_100():
    v = torch.eye(3, dtype=DT)
    out = cav_loss(v, v, torch.tensor(10.0, dtype=DT))
    assert float(out["logit_scale"]) == 100.0
    torch.testing.assert_close(out["logits"], 100.0 * torch.eye(3, dtype=DT))


def test_local_loss_with_global_negatives_equals_global_loss():
    """Two 'ranks' of 3 clips: the mean of their local losses is the 6-clip loss (values, grads)."""
    g = torch.Generator().manual_seed(3)
    d = (torch.rand(6, 6, generator=g, dtype=DT) * 4).requires_grad_(True)
    v = torch.randn(6, 5, generator=g, dtype=DT, requires_grad=True)
    a = torch.randn(6, 5, generator=g, dtype=DT, requires_grad=True)
    ll = torch.tensor(0.1, dtype=DT)
    ls = torch.tensor(2.0, dtype=DT)
    glob = scav_loss(d, ll)["scav_loss"] + cav_loss(v, a, ls)["cav_loss"]
    local = 0.0
    for r in range(2):
        s = slice(3 * r, 3 * r + 3)
        local = local + scav_loss(d[s], ll, dist_a2v=d[:, s], offset=3 * r)["scav_loss"]
        local = local + cav_loss(v[s], a[s], ls, all_video_emb=v, all_audio_emb=a, offset=3 * r)["cav_loss"]
    local = local / 2
    torch.testing.assert_close(local, glob)
    for x, y in zip(torch.autograd.grad(local, (d, v, a)), torch.autograd.grad(glob, (d, v, a))):
        torch.testing.assert_close(x, y)


def test_scav_constant_rows_give_finite_gradients():
    d = torch.ones(3, 3, dtype=DT, requires_grad=True)
    out = scav_loss(d, torch.tensor(0.0, dtype=DT))
    (g,) = torch.autograd.grad(out["scav_loss"], d)
    assert torch.isfinite(g).all()
    assert abs(float(out["scav_loss"].detach()) - math.log(3)) < 1e-12
