"""Wasserstein: the position term scaled to the step costs, and Sinkhorn run to a tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scav.sequence.spec import DistanceSpec
from scav.sequence.wasserstein import wasserstein_matrix

ot = pytest.importorskip("ot")
DT = torch.float64


def related_pair(n, m, c, seed, noise=0.7):
    """x (1, n, c) and y (1, m, c) = x resampled to m steps + noise: one true alignment."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, c, generator=g, dtype=DT)
    y = F.interpolate(x.transpose(1, 2), size=m, mode="linear", align_corners=False).transpose(1, 2)
    y = y + noise * torch.randn(1, m, c, generator=g, dtype=DT)
    return x, torch.ones(1, n, dtype=torch.bool), y, torch.ones(1, m, dtype=torch.bool)


def scaled_total_cost(a, b, pos_weight):
    """POT-side cost: ||a_i - b_j||^2 + pos_weight * mean(step cost) * (t_i - t_j)^2."""
    step = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    ta = (np.arange(len(a)) + 0.5) / len(a)
    tb = (np.arange(len(b)) + 0.5) / len(b)
    return step + pos_weight * step.mean() * (ta[:, None] - tb[None, :]) ** 2


def uniform(n):
    return np.full(n, 1.0 / n)


def test_step_mean_scaling_equals_pot_on_the_same_total_cost():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, 4, generator=g, dtype=DT)
    y = torch.randn(2, 5, 4, generator=g, dtype=DT)
    xm = torch.arange(6)[None] < torch.tensor([6, 2, 4])[:, None]
    ym = torch.arange(5)[None] < torch.tensor([5, 3])[:, None]
    x, y = torch.where(xm[..., None], x, 9.0), torch.where(ym[..., None], y, -9.0)  # padding must not count
    eps, n_iter = 0.5, 300
    d = wasserstein_matrix(x, xm, y, ym, eps=eps, n_iter=n_iter, pos_weight=2.0, pos_scale="step_mean", chunk=7)
    for i in range(3):
        for j in range(2):
            a, b = x[i, : int(xm[i].sum())].numpy(), y[j, : int(ym[j].sum())].numpy()
            cost = scaled_total_cost(a, b, 2.0)
            plan = ot.bregman.sinkhorn_log(uniform(len(a)), uniform(len(b)), cost, eps,
                                           numItermax=n_iter, stopThr=0.0, warn=False)
            assert abs(float(d[i, j]) - float((plan * cost).sum())) < 1e-9


def test_reversing_a_sequence_now_changes_the_distance_materially():
    """Latent-like scale (c = 512, step costs ~1e3): the absolute position term moves W by
    well under 1 % when one sequence is reversed; scaled to the step costs, by > 50 %."""
    x, xm, y, ym = related_pair(16, 12, 512, seed=4)
    rev = x.flip(1)
    change = {}
    for scale in ("none", "step_mean"):
        d = wasserstein_matrix(x, xm, y, ym, eps=0.1, pos_scale=scale, max_iter=500)
        d_rev = wasserstein_matrix(rev, xm, y, ym, eps=0.1, pos_scale=scale, max_iter=500)
        change[scale] = float((d_rev - d) / d)
    assert abs(change["none"]) < 0.01
    assert change["step_mean"] > 0.5


def test_tolerance_stop_reaches_pot_converged_value_at_c512():
    """Sinkhorn to a tolerance (with eps-scaling) vs POT's converged value (its eps-scaling
    solver) on the same total cost: relative gap below 1e-4, where 100 fixed iterations
    from a cold start (the old behaviour) are far off."""
    x, xm, y, ym = related_pair(12, 10, 512, seed=0)
    a, b = x[0].numpy(), y[0].numpy()
    cost = scaled_total_cost(a, b, 1.0)
    with pytest.warns(UserWarning):  # POT's own stopThr is not met; its value is converged to ~1e-9
        plan = ot.bregman.sinkhorn_epsilon_scaling(uniform(12), uniform(10), cost, 0.1, numItermax=20000, stopThr=1e-10)
    ref = float((plan * cost).sum())
    got = float(wasserstein_matrix(x, xm, y, ym, eps=0.1, pos_scale="step_mean", tol=1e-3, max_iter=100_000))
    fixed = float(wasserstein_matrix(x, xm, y, ym, eps=0.1, pos_scale="step_mean", n_iter=100))
    assert abs(got - ref) / ref < 1e-4
    assert abs(fixed - ref) / ref > 1e-2


def test_float32_runs_sinkhorn_in_float64():
    x, xm, y, ym = related_pair(10, 8, 64, seed=5)
    d64 = wasserstein_matrix(x, xm, y, ym, eps=0.1, pos_scale="step_mean", max_iter=300)
    with torch.no_grad():
        d32 = wasserstein_matrix(x.float(), xm, y.float(), ym, eps=0.1, pos_scale="step_mean", max_iter=300)
    assert d32.dtype == torch.float32
    torch.testing.assert_close(d32.double(), d64, rtol=1e-4, atol=0)


def test_relative_eps_equals_pot_with_the_pair_scaled_regularisation():
    """eps_scale='step_mean': POT's Sinkhorn on the same total cost with reg = eps * mean step cost."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 7, 32, generator=g, dtype=DT) * 4  # step costs ~1e3, as latents
    y = torch.randn(3, 5, 32, generator=g, dtype=DT) * 4
    xm = torch.arange(7)[None] < torch.tensor([7, 4])[:, None]
    ym = torch.arange(5)[None] < torch.tensor([5, 2, 4])[:, None]
    eps, n_iter = 0.1, 400
    d = wasserstein_matrix(x, xm, y, ym, eps=eps, n_iter=n_iter, pos_scale="step_mean", eps_scale="step_mean")
    for i in range(2):
        for j in range(3):
            a, b = x[i, : int(xm[i].sum())].numpy(), y[j, : int(ym[j].sum())].numpy()
            step = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
            cost = scaled_total_cost(a, b, 1.0)
            plan = ot.bregman.sinkhorn_log(uniform(len(a)), uniform(len(b)), cost, eps * step.mean(),
                                           numItermax=n_iter, stopThr=0.0, warn=False)
            assert abs(float(d[i, j]) - float((plan * cost).sum())) < 1e-8 * float(d[i, j])


def test_relative_eps_converges_to_tolerance_in_few_iterations_at_c512():
    """Latent-like costs (c = 512): with eps relative to the step costs the tolerance stop
    is reached far below the cap, and the value equals POT's converged one."""
    x, xm, y, ym = related_pair(16, 12, 512, seed=9)
    a, b = x[0].numpy(), y[0].numpy()
    step = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    cost = scaled_total_cost(a, b, 1.0)
    plan = ot.bregman.sinkhorn_log(uniform(16), uniform(12), cost, 0.1 * step.mean(), numItermax=100_000,
                                   stopThr=1e-12, warn=False)
    ref = float((plan * cost).sum())
    got = float(wasserstein_matrix(x, xm, y, ym, eps=0.1, pos_scale="step_mean", eps_scale="step_mean",
                                   tol=1e-6, max_iter=300))
    assert abs(got - ref) / ref < 1e-6


def test_spec_uses_the_scaled_position_term_and_relative_eps():
    x, xm, y, ym = related_pair(8, 6, 16, seed=6)
    spec = DistanceSpec("wasserstein", eps=0.5, max_iter=400)
    want = wasserstein_matrix(x, xm, y, ym, eps=0.5, pos_scale="step_mean", eps_scale="step_mean", max_iter=400)
    torch.testing.assert_close(spec.matrix(x, xm, y, ym), want)
    with pytest.raises(ValueError, match="pos_scale"):
        wasserstein_matrix(x, xm, y, ym, pos_scale="median")


def test_wasserstein_scale_reaches_the_spec():
    """wasserstein_scale='none' (absolute costs) and the default 'step_mean' round-trip through
    a stored config and reach the distance spec built from it."""
    from scav.model.config import ObjectiveConfig
    from scav.model.objective import distance_spec
    from scav.train.config import TrainConfig

    new = TrainConfig(cache="c", out="o", objective=ObjectiveConfig(distance="wasserstein", interp="post"))
    absolute = TrainConfig(cache="c", out="o", objective=ObjectiveConfig(distance="wasserstein", interp="post",
                                                                        wasserstein_scale="none"))
    assert TrainConfig.from_dict(new.to_dict()) == new and TrainConfig.from_dict(absolute.to_dict()) == absolute
    assert new.objective.wasserstein_scale == "step_mean"
    s_old, s_new = distance_spec(absolute.objective), distance_spec(new.objective)
    assert (s_old.pos_scale, s_old.eps_scale) == ("none", "none")
    assert (s_new.pos_scale, s_new.eps_scale) == ("step_mean", "step_mean")
    x, xm, y, ym = related_pair(8, 6, 16, seed=7)
    want = wasserstein_matrix(x, xm, y, ym, eps=0.1, pos_scale="none", eps_scale="none")
    torch.testing.assert_close(s_old.matrix(x, xm, y, ym), want)
