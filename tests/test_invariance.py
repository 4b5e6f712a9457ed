"""Track-invariance scores (retrieve/invariance.py) against a naive loop over clip pairs."""

import numpy as np
import pytest
from scav.retrieve.invariance import (
    invariance_from_distances,
    invariance_scores,
    sequence_distances,
)


def naive(original, dub, sources):
    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    n = len(original)
    own = [1 - cos(original[i], dub[i]) for i in range(n)]
    src, hits = [], []
    for i in range(n):
        peers = [j for j in range(n) if j != i and sources[j] == sources[i]]
        if not peers:
            continue
        src.append(np.mean([1 - cos(original[i], original[j]) for j in peers]))
        own_c = cos(dub[i], original[i])
        hits.append(all(own_c > cos(dub[i], original[j]) for j in peers))
    return np.mean(own), np.mean(src), 100 * np.mean(hits)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_equal_a_naive_loop(seed):
    rng = np.random.default_rng(seed)
    n, c = 23, 8
    sources = [f"s{rng.integers(0, 5)}" for _ in range(n)] + ["lonely"]
    original = rng.normal(size=(n + 1, c))
    dub = original + rng.normal(scale=0.7, size=(n + 1, c)) * rng.uniform(0.1, 3, size=(n + 1, 1))
    got = invariance_scores(original, dub, sources)
    own, src, r1 = naive(original, dub, sources)
    assert got["own_distance"] == pytest.approx(own, rel=1e-12)
    assert got["source_distance"] == pytest.approx(src, rel=1e-12)
    assert got["invariance"] == pytest.approx(1 - own / src, rel=1e-12)
    assert got["track_R@1"] == pytest.approx(r1)
    assert got["clips_with_source_peers"] == n  # the lonely clip counts in own_distance only


def test_hand_worked_extremes():
    o = np.array([[1.0, 0], [0, 1.0], [1.0, 1.0]])
    # identical tracks: invariance 1 and every dub finds its clip
    same = invariance_scores(o, 3 * o, ["a", "a", "a"])
    assert same["invariance"] == pytest.approx(1.0) and same["track_R@1"] == 100.0
    # dubs swapped between clips 0 and 1: each dub equals the other clip's original
    swapped = invariance_scores(o[:2], o[[1, 0]], ["a", "a"])
    # own distance = 1 - cos(e0, e1) = 1 = source distance -> invariance 0, no hit
    assert swapped["invariance"] == pytest.approx(0.0) and swapped["track_R@1"] == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        invariance_scores(np.zeros((3, 2)), np.zeros((2, 2)), ["a"] * 3)


def test_from_distances_equals_a_naive_loop_on_any_distance():
    rng = np.random.default_rng(4)
    n = 17
    sources = [f"s{i % 4}" for i in range(n)]
    d_to, d_oo = rng.uniform(0, 2, (n, n)), rng.uniform(0, 2, (n, n))
    d_to[3, 3] = d_to[3, 7]  # a tie with a same-source clip (7 = 3 + 4): counts as a miss
    got = invariance_from_distances(d_to, d_oo, sources)
    own = np.mean([d_to[i, i] for i in range(n)])
    peers = {i: [j for j in range(n) if j != i and sources[j] == sources[i]] for i in range(n)}
    src = np.mean([np.mean([d_oo[i, j] for j in peers[i]]) for i in range(n)])
    hits = [all(d_to[i, i] < d_to[i, j] for j in peers[i]) for i in range(n)]
    assert got["own_distance"] == pytest.approx(own) and got["source_distance"] == pytest.approx(src)
    assert got["invariance"] == pytest.approx(1 - own / src)
    assert got["track_R@1"] == pytest.approx(100 * np.mean(hits)) and not hits[3]


def test_sequence_distances_use_the_models_distance():
    import torch
    from scav.model.latents import Latents
    from scav.sequence.spec import DistanceSpec

    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 5, 4])
    mask = torch.arange(5)[None] < lengths[:, None]
    a = Latents.from_padded(torch.randn(3, 5, 4, generator=g) * mask[..., None], mask)
    b = Latents.from_padded(torch.randn(3, 5, 4, generator=g) * mask[..., None], mask)
    spec = DistanceSpec("euclidean", resample="audio")
    got = sequence_distances(spec, a, b)
    xa, ma = a.take(np.arange(3))
    xb, mb = b.take(np.arange(3))
    for i in range(3):
        for j in range(3):
            want = spec.matrix(xa[i:i + 1], ma[i:i + 1], xb[j:j + 1], mb[j:j + 1])
            assert got[i, j] == pytest.approx(float(want), rel=1e-5)
