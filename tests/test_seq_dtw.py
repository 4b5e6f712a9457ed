"""Hard DTW (retrieval's gamma -> 0) against tslearn and a naive DP; the DistanceSpec switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scav.model.latents import Latents
from scav.retrieve.search import BlockConfig, agg_search, hybrid_rerank, seq_search
from scav.sequence.distances import soft_dtw_matrix
from scav.sequence.dtw import dtw_matrix
from scav.sequence.metrics import ranks_from_scores
from scav.sequence.spec import DistanceSpec

DT = torch.float64


def padded(lengths, max_len, dim, seed, pad_value=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max_len, dim, generator=g, dtype=DT)
    mask = torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]
    return torch.where(mask[..., None], x, torch.full_like(x, pad_value)), mask


def naive_dtw(a: np.ndarray, b: np.ndarray) -> float:
    n, m = len(a), len(b)
    r = np.full((n + 1, m + 1), np.inf)
    r[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            r[i, j] = ((a[i - 1] - b[j - 1]) ** 2).sum() + min(r[i - 1, j - 1], r[i - 1, j], r[i, j - 1])
    return float(r[n, m])


def test_dtw_matches_tslearn_and_naive_dp_mixed_lengths():
    tslearn = pytest.importorskip("tslearn.metrics")
    x, xm = padded([7, 2, 5], 7, 3, seed=1, pad_value=5.0)
    y, ym = padded([4, 6], 6, 3, seed=2, pad_value=-5.0)
    d = dtw_matrix(x, xm, y, ym, chunk=9)  # several blocks
    for i in range(3):
        for j in range(2):
            a, b = x[i, : int(xm[i].sum())].numpy(), y[j, : int(ym[j].sum())].numpy()
            assert abs(float(d[i, j]) - naive_dtw(a, b)) < 1e-9
            assert abs(float(d[i, j]) - tslearn.dtw(a, b) ** 2) < 1e-9


def test_soft_dtw_tends_to_dtw_and_spec_switches_at_gamma_zero():
    x, xm = padded([5, 3], 5, 4, seed=3)
    y, ym = padded([4, 6], 6, 4, seed=4)
    hard = dtw_matrix(x, xm, y, ym)
    torch.testing.assert_close(soft_dtw_matrix(x, xm, y, ym, gamma=1e-4), hard, rtol=0, atol=1e-2)
    spec = DistanceSpec("soft_dtw", gamma=0.1).with_gamma(0.0)
    assert spec.hard_dtw and spec.label == "dtw (hard)"
    torch.testing.assert_close(spec.matrix(x, xm, y, ym), hard)
    with pytest.raises(ValueError, match="soft_dtw"):
        DistanceSpec("euclidean").with_gamma(0.0)
    with pytest.raises(ValueError, match="gamma"):
        DistanceSpec("soft_dtw", gamma=-1.0)


def test_hard_dtw_search_equals_full_matrix():
    v, vm = padded([6, 3, 5, 4, 2, 6, 5], 6, 3, seed=5)
    a, am = padded([4, 5, 2, 3, 4, 4, 5], 5, 3, seed=6)
    video, audio = Latents.from_padded(v.float(), vm), Latents.from_padded(a.float(), am)
    spec = DistanceSpec("soft_dtw", gamma=0.0)
    full = spec.matrix(v.float(), vm, a.float(), am)  # (video, audio)
    cfg = BlockConfig(query_block=3, candidate_chunk=2)
    assert torch.equal(seq_search(audio, video, "a2v", spec, cfg), ranks_from_scores(-full.T))
    assert torch.equal(seq_search(video, audio, "v2a", spec, cfg), ranks_from_scores(-full))
    h = hybrid_rerank(audio, video, "a2v", spec, *agg_search(audio, video, cfg, k=7), cfg)
    assert torch.equal(h, ranks_from_scores(-full.T))
