"""The first stage (top-k by inner product) against a naive full matrix, and FAISS against ours."""

import numpy as np
import pytest
import torch

from scav.retrieve.first_stage import (
    FirstStageConfig, agg_topk, ann_topk, build_ann, exact_topk_faiss, exact_topk_torch, key_scores, normalize_rows,
)
from scav.retrieve.search import rank_keys


def naive_topk(q: np.ndarray, g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 full matrix, stable sort: score desc, index asc."""
    s = q.astype(np.float64) @ g.astype(np.float64).T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


def clustered(n, d, clusters, seed):
    rng = np.random.default_rng(seed)
    centres = normalize_rows(rng.standard_normal((clusters, d)))
    x = centres[rng.integers(0, clusters, n)] + 0.5 / np.sqrt(d) * rng.standard_normal((n, d))
    return normalize_rows(x)


@pytest.mark.parametrize("d", [16, 96])
def test_exact_paths_equal_naive_full_matrix(d):
    """Random data without ties: torch (small chunks, so the pruned merges run), FAISS flat and
    the naive matrix give the same lists; scores agree."""
    g = clustered(3000, d, 30, seed=d)
    q = normalize_rows(g[:40] + 0.3 * np.random.default_rng(1).standard_normal((40, d)))
    want_s, want_i = naive_topk(q, g, 50)
    for res in (exact_topk_torch(q, g, 50, chunk=211), exact_topk_torch(q, g, 50), exact_topk_faiss(q, g, 50)):
        np.testing.assert_array_equal(res.index, want_i, err_msg=res.method)
        np.testing.assert_allclose(res.scores, want_s, atol=1e-5, err_msg=res.method)


def test_torch_ties_break_by_index_across_chunks():
    """Integer vectors: products are exact in float32 and tie a lot; the lists must be the
    stable order (score desc, index asc), also where ties straddle chunk boundaries."""
    rng = np.random.default_rng(0)
    g = rng.integers(-2, 3, (997, 8)).astype(np.float32)
    q = rng.integers(-2, 3, (23, 8)).astype(np.float32)
    want_s, want_i = naive_topk(q, g, 37)
    res = exact_topk_torch(q, g, 37, chunk=50)
    np.testing.assert_array_equal(res.index, want_i)
    np.testing.assert_array_equal(res.scores, want_s.astype(np.float32))


def test_key_scores_invert_rank_keys():
    s = torch.tensor([[0.5, -0.0, 0.0, -3.25, 1e-30, -1e-30, float("inf"), -float("inf")]])
    keys = rank_keys(s, torch.arange(s.shape[1]).expand_as(s))
    back = key_scores(keys)
    assert torch.equal(back, s + 0.0)  # -0.0 is stored as +0.0 (they tie)


def test_ivf_probing_every_list_is_exact_and_hnsw_recall():
    g = clustered(4000, 32, 40, seed=3)
    q = normalize_rows(g[::100] + 0.2 * np.random.default_rng(2).standard_normal((40, 32)))
    _, want = naive_topk(q, g, 30)
    ivf = build_ann(g, FirstStageConfig(ann="ivf", nlist=16))
    res = ann_topk(ivf, q, 30, FirstStageConfig(ann="ivf", nprobe=16))  # all lists: exhaustive
    np.testing.assert_array_equal(res.index, want)
    few = ann_topk(ivf, q, 30, FirstStageConfig(ann="ivf", nprobe=1))
    assert "nprobe=1" in few.method and few.index.shape == (40, 30)
    hnsw = build_ann(g, FirstStageConfig(ann="hnsw", hnsw_m=16))
    res = ann_topk(hnsw, q, 30, FirstStageConfig(ann="hnsw", ef_search=200))
    recall = np.mean([len(np.intersect1d(a, b)) / 30 for a, b in zip(res.index, want)])
    assert recall >= 0.95, recall


def test_dispatch_by_threshold_and_ann():
    g = clustered(500, 16, 5, seed=4)
    q = g[:7]
    small = agg_topk(q, g, 10, FirstStageConfig(faiss_threshold=1000))
    large = agg_topk(q, g, 10, FirstStageConfig(faiss_threshold=500))
    assert "torch" in small.method and "faiss flat" in large.method
    np.testing.assert_array_equal(small.index, large.index)
    assert agg_topk(q, g, 10, FirstStageConfig(ann="ivf", nlist=4, nprobe=4)).method.startswith("approximate")


def test_bad_inputs():
    g = normalize_rows(np.random.default_rng(0).standard_normal((10, 4)))
    with pytest.raises(ValueError, match="between 1 and the gallery size"):
        exact_topk_torch(g[:2], g, 11)
    with pytest.raises(ValueError, match="must be"):
        exact_topk_torch(g[:2, :3], g, 2)
    with pytest.raises(ValueError, match="ann must be one of"):
        FirstStageConfig(ann="lsh").validate()
    with pytest.raises(ValueError, match="nprobe must be >= 1"):
        FirstStageConfig(nprobe=0).validate()
