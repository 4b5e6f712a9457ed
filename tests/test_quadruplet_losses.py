"""Quadruplet losses (dubs paper Eq. 1-3) against plain-python loops and hand-worked cases (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from scav.sequence.losses import scav_loss
from scav.sequence.quadruplet import cav_quadruplet_loss, joint_nt_xent, scav_quadruplet_loss
from scav.sequence.spec import DistanceSpec

DT = torch.float64


def loop_joint(s):
    """Eq. 1 by hand: for each i, one softmax whose negatives are row i and column i, then the mean."""
    b = s.shape[0]
    total = 0.0
    for i in range(b):
        num = torch.exp(s[i, i])
        den = num
        for j in range(b):
            if j != i:
                den = den + torch.exp(s[i, j]) + torch.exp(s[j, i])
        total = total - torch.log(num / den)
    return total / b


def loop_logits(x, y, scale):
    """scale * cosine similarity, one pair at a time."""
    b = x.shape[0]
    return torch.stack([
        torch.stack([scale * (x[i] @ y[j]) / (x[i].norm() * y[j].norm()) for j in range(b)]) for i in range(b)
    ])


def loop_zscore(v):
    mean = sum(v) / len(v)
    var = sum((x - mean) ** 2 for x in v) / len(v)
    return [(x - mean) / torch.sqrt(var + 1e-6) for x in v]


def loop_scav(d, lam):
    """SCAV's loss by hand: rows z-scored for v->a, columns for a->v, cross-entropy on -d / lambda."""
    b = d.shape[0]

    def ce(logits, t):
        return torch.log(sum(torch.exp(x) for x in logits)) - logits[t]

    total = 0.0
    for i in range(b):
        total = total + ce([-x / lam for x in loop_zscore([d[i, j] for j in range(b)])], i)
        total = total + ce([-x / lam for x in loop_zscore([d[j, i] for j in range(b)])], i)
    return total / (2 * b)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


# -- joint_nt_xent ---------------------------------------------------------------------------


def test_joint_nt_xent_hand_worked_2x2():
    # e^s = [[2, 1], [3, 4]]: l_0 = -log(2 / (2 + 1 + 3)) = log 3, l_1 = -log(4 / (4 + 3 + 1)) = log 2
    s = torch.log(torch.tensor([[2.0, 1.0], [3.0, 4.0]], dtype=DT))
    assert joint_nt_xent(s).item() == pytest.approx(math.log(6) / 2, abs=1e-12)
    # CLIP's mean of row and column cross-entropies would give a different value here
    clip = 0.5 * (torch.nn.functional.cross_entropy(s, torch.arange(2))
                  + torch.nn.functional.cross_entropy(s.T, torch.arange(2)))
    assert abs(clip.item() - math.log(6) / 2) > 0.1


@pytest.mark.parametrize("b", [1, 2, 5])
def test_joint_nt_xent_matches_loop_values_and_gradients(b):
    s = (3 * rand(b, b, seed=b)).requires_grad_()
    s_ref = s.detach().clone().requires_grad_()
    got, want = joint_nt_xent(s), loop_joint(s_ref)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    torch.testing.assert_close(s.grad, s_ref.grad)
    assert torch.autograd.gradcheck(joint_nt_xent, (rand(b, b, seed=10 + b).requires_grad_(),))


def test_joint_nt_xent_stable_at_large_logits():
    s = rand(6, 6, seed=3)
    ref = joint_nt_xent(s)
    for shift in (1e3, 1e4):
        shifted = (s + shift).float().requires_grad_()  # exp would overflow float32 at once
        loss = joint_nt_xent(shifted)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(shifted.grad).all()
        assert loss.item() == pytest.approx(ref.item(), abs=5e-3)  # shift invariance (float32 rounding)
    big = torch.tensor([[1e4, -1e4], [-1e4, 1e4]])  # positives far ahead: loss -> 0, not NaN
    assert joint_nt_xent(big).item() == 0.0


def test_joint_nt_xent_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        joint_nt_xent(torch.zeros(2, 3))


# -- cav_quadruplet_loss --------------------------------------------------------------------


def _quad(b=4, c=3, seed=0):
    return [rand(b, c, seed=seed + k).requires_grad_() for k in range(4)]


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True, retain_graph=True)


@pytest.mark.parametrize("cross,lv,la", [(True, 0.0, 0.0), (True, 0.5, 0.0), (True, 0.3, 2.0), (False, 0.0, 1.0)])
def test_cav_quadruplet_matches_loop(cross, lv, la):
    vp, ap, vs, as_ = quad = _quad()
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=DT, requires_grad=True)
    out = cav_quadruplet_loss(vp, ap, vs, as_, log_scale, cross=cross, lambda_v=lv, lambda_a=la)

    scale = 1 / 0.07
    want = {
        "quad_loss": 0.5 * (loop_joint(loop_logits(vp, as_, scale)) + loop_joint(loop_logits(vs, ap, scale))),
        "within_video_loss": lv * loop_joint(loop_logits(vp, vs, scale)),
        "within_audio_loss": la * loop_joint(loop_logits(ap, as_, scale)),
    }
    want = {k: v for k, v in want.items() if (k == "quad_loss" and cross) or (k != "quad_loss" and v.item() != 0)}
    assert {k for k in out if k.endswith("_loss")} == set(want)
    for k in want:
        torch.testing.assert_close(out[k], want[k])
    total, ref = sum(out[k] for k in want), sum(want.values())
    for g, r in zip(_grads(total, quad), _grads(ref, quad)):
        torch.testing.assert_close(g, r)

    # tracked whatever the weights, never part of the graph
    torch.testing.assert_close(out["within_video"], loop_joint(loop_logits(vp, vs, scale)).detach())
    torch.testing.assert_close(out["within_audio"], loop_joint(loop_logits(ap, as_, scale)).detach())
    assert not out["within_video"].requires_grad and not out["within_audio"].requires_grad
    torch.testing.assert_close(out["logits"], loop_logits(vp, as_, scale))
    assert out["logit_scale"].item() == pytest.approx(scale)


def test_cav_quadruplet_scale_is_clamped_and_learnable():
    quad = _quad()
    log_scale = torch.tensor(10.0, dtype=DT, requires_grad=True)  # exp(10) > 100
    out = cav_quadruplet_loss(*quad, log_scale)
    assert out["logit_scale"].item() == 100.0
    torch.testing.assert_close(out["quad_loss"], 0.5 * (loop_joint(loop_logits(quad[0], quad[3], 100.0))
                                                        + loop_joint(loop_logits(quad[2], quad[1], 100.0))))
    log_scale = torch.tensor(1.0, dtype=DT, requires_grad=True)
    cav_quadruplet_loss(*quad, log_scale)["quad_loss"].backward()
    assert log_scale.grad is not None and log_scale.grad != 0


def test_cav_quadruplet_gradients_reach_all_four_inputs():
    quad = _quad()
    out = cav_quadruplet_loss(*quad, torch.tensor(2.0, dtype=DT))
    for g in _grads(out["quad_loss"], quad):
        assert g is not None and g.abs().sum() > 0


def test_cav_quadruplet_rejects_nothing_to_optimise_and_negative_weights():
    quad = _quad()
    with pytest.raises(ValueError, match="no loss"):
        cav_quadruplet_loss(*quad, torch.tensor(2.0), cross=False)
    with pytest.raises(ValueError, match=">= 0"):
        cav_quadruplet_loss(*quad, torch.tensor(2.0), lambda_v=-1.0)


# -- scav_quadruplet_loss -------------------------------------------------------------------


def _dists(b=4, seed=0):
    return [(rand(b, b, seed=seed + k) ** 2).requires_grad_() for k in range(4)]


@pytest.mark.parametrize("cross,lv,la", [(True, 0.0, 0.0), (True, 0.5, 0.0), (True, 0.3, 2.0), (False, 1.0, 0.0)])
def test_scav_quadruplet_matches_loop(cross, lv, la):
    d_vp_as, d_vs_ap, d_vp_vs, d_ap_as = dists = _dists()
    log_lambda = torch.tensor(math.log(0.5), dtype=DT, requires_grad=True)
    out = scav_quadruplet_loss(d_vp_as, d_vs_ap, log_lambda, d_vp_vs=d_vp_vs, d_ap_as=d_ap_as,
                               lambda_v=lv, lambda_a=la, cross=cross)
    lam = log_lambda.exp()  # a tensor, so that the gradient to the temperature is compared too
    want = {
        "quad_loss": 0.5 * (loop_scav(d_vp_as, lam) + loop_scav(d_vs_ap, lam)),
        "within_video_loss": lv * loop_scav(d_vp_vs, lam),
        "within_audio_loss": la * loop_scav(d_ap_as, lam),
    }
    want = {k: v for k, v in want.items() if (k == "quad_loss" and cross) or (k != "quad_loss" and v.item() != 0)}
    assert {k for k in out if k.endswith("_loss")} == set(want)
    for k in want:
        torch.testing.assert_close(out[k], want[k])
    params = [*dists, log_lambda]
    for g, r in zip(_grads(sum(out[k] for k in want), params), _grads(sum(want.values()), params)):
        if r is None:  # a matrix whose term is not optimised
            assert g is None
        else:
            torch.testing.assert_close(g, r)
    torch.testing.assert_close(out["within_video"], loop_scav(d_vp_vs, 0.5).detach())
    torch.testing.assert_close(out["within_audio"], loop_scav(d_ap_as, 0.5).detach())
    assert not out["within_video"].requires_grad
    torch.testing.assert_close(out["logits"].detach(), scav_loss(d_vp_as, log_lambda)["logits"].detach())
    assert out["lambda"].item() == pytest.approx(0.5)


def test_scav_quadruplet_keys_without_within_matrices_and_normalize_off():
    d1, d2, *_ = _dists()
    log_lambda = torch.tensor(0.0, dtype=DT)
    out = scav_quadruplet_loss(d1, d2, log_lambda, normalize=False)
    assert set(out) == {"quad_loss", "logits", "lambda"}
    want = 0.5 * (scav_loss(d1, log_lambda, False)["scav_loss"] + scav_loss(d2, log_lambda, False)["scav_loss"])
    torch.testing.assert_close(out["quad_loss"], want)
    with pytest.raises(ValueError, match="distance matrix"):
        scav_quadruplet_loss(d1, d2, log_lambda, lambda_a=1.0)
    with pytest.raises(ValueError, match="no loss"):
        scav_quadruplet_loss(d1, d2, log_lambda, cross=False)


def _seqs(b=3, t=5, s=4, c=2, seed=0):
    v = rand(b, t, c, seed=seed).requires_grad_()
    a = rand(b, s, c, seed=seed + 1).requires_grad_()
    return v, torch.ones(b, t, dtype=torch.bool), a, torch.ones(b, s, dtype=torch.bool)


def test_scav_quadruplet_with_identical_instances_is_scav_loss():
    # v_s = v_p and a_s = a_p: both cross terms are the ordinary SCAV loss of one distance matrix
    spec = DistanceSpec("euclidean")
    v, vm, a, am = _seqs()
    log_lambda = torch.tensor(0.0, dtype=DT)
    d = spec.matrix(v, vm, a, am)
    out = scav_quadruplet_loss(d, spec.matrix(v, vm, a, am), log_lambda)
    ref = scav_loss(d, log_lambda)
    torch.testing.assert_close(out["quad_loss"], ref["scav_loss"])
    for g, r in zip(_grads(out["quad_loss"], [v, a]), _grads(ref["scav_loss"], [v, a])):
        torch.testing.assert_close(g, r)


def test_scav_quadruplet_gradients_reach_all_four_sequences():
    spec = DistanceSpec("euclidean")
    vp, vm, ap, am = _seqs(seed=0)
    vs, _, as_, _ = _seqs(seed=5)
    out = scav_quadruplet_loss(spec.matrix(vp, vm, as_, am), spec.matrix(vs, vm, ap, am), torch.tensor(0.0, dtype=DT))
    for g in _grads(out["quad_loss"], [vp, ap, vs, as_]):
        assert g is not None and g.abs().sum() > 0


def test_scav_quadruplet_within_only_gives_logits_outside_the_graph():
    d1, d2, d3, _ = _dists()
    out = scav_quadruplet_loss(d1, d2, torch.tensor(0.0, dtype=DT), d_vp_vs=d3, lambda_v=1.0, cross=False)
    assert set(out) == {"within_video_loss", "within_video", "logits", "lambda"}
    assert not out["logits"].requires_grad
    torch.testing.assert_close(out["within_video_loss"], loop_scav(d3, 1.0))
    # the audio-only variant need not compute the cross matrices at all
    out = scav_quadruplet_loss(None, None, torch.tensor(-9.0, dtype=DT), d_ap_as=d3, lambda_a=1.0, cross=False)
    assert set(out) == {"within_audio_loss", "within_audio", "lambda"}
    assert out["lambda"].item() == pytest.approx(0.01)  # clamped as scav_loss
    with pytest.raises(ValueError, match="cross-modal"):
        scav_quadruplet_loss(None, d2, torch.tensor(0.0, dtype=DT))
