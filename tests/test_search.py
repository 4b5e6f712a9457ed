"""agg / seq / hybrid search against naive full-matrix computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scav.sequence.metrics import ranks_from_scores
from scav.sequence.spec import DistanceSpec
from scav.retrieve.search import (
    Latents,
    RunningTopK,
    BlockConfig,
    agg_search,
    hybrid_rerank,
    key_index,
    rank_keys,
    retrieve,
    seq_search,
)


def random_latents(n, lengths, c, seed):
    g = torch.Generator().manual_seed(seed)
    lmax = max(lengths)
    x = torch.randn(n, lmax, c, generator=g)
    mask = torch.arange(lmax)[None, :] < torch.tensor(lengths)[:, None]
    return x * mask[..., None], mask


def make_pair(n=23, c=6, uniform=False, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    if uniform:
        vl = al = [5] * n
    else:
        vl = torch.randint(3, 12, (n,), generator=g).tolist()
        al = torch.randint(2, 7, (n,), generator=g).tolist()
    v, vm = random_latents(n, vl, c, seed)
    a, am = random_latents(n, al, c, seed + 1)
    # make the positives a bit closer so ranks are spread, not all random
    return (v, vm), (a, am)


def naive_distance(v, vm, a, am, resample):
    """Per pair: F.interpolate the valid part (of the video if resample='video', else of
    the audio), mean over steps of the squared L2. (Bv, Ba) float64."""
    n_v, n_a = v.shape[0], a.shape[0]
    d = torch.empty(n_v, n_a, dtype=torch.float64)
    for i in range(n_v):
        vi = v[i, : int(vm[i].sum())].double()
        for j in range(n_a):
            aj = a[j, : int(am[j].sum())].double()
            if resample == "video":
                src, tgt = vi, aj
            else:
                src, tgt = aj, vi
            res = F.interpolate(src.T[None], size=tgt.shape[0], mode="linear", align_corners=False)[0].T
            d[i, j] = ((res - tgt) ** 2).sum(-1).mean()
    return d


def naive_ranks(d_video_by_audio, direction):
    d = d_video_by_audio if direction == "v2a" else d_video_by_audio.T  # rows = queries
    return ranks_from_scores(-d)


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("resample", ["video", "audio"])
@pytest.mark.parametrize("blocks", [(5, 7), (4, 23), (23, 3)])
def test_seq_streaming_equals_naive_full_matrix(resample, blocks, uniform):
    (v, vm), (a, am) = make_pair(uniform=uniform)
    video, audio = Latents.from_padded(v, vm), Latents.from_padded(a, am)
    cfg = BlockConfig(query_block=blocks[0], candidate_chunk=blocks[1])
    dist = DistanceSpec("euclidean", resample)
    d = naive_distance(v, vm, a, am, resample)
    for ret_dir in ("a2v", "v2a"):
        q, c = (audio, video) if ret_dir == "a2v" else (video, audio)
        got = seq_search(q, c, ret_dir, dist, cfg)
        assert torch.equal(got, naive_ranks(d, ret_dir)), (ret_dir, resample, blocks)


def test_paired_distance_matches_matrix():
    (v, vm), (a, am) = make_pair(n=9)
    for resample in ("video", "audio"):
        dist = DistanceSpec("euclidean", resample)
        full = dist.matrix(v, vm, a, am)
        ii, jj = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
        ii, jj = ii.reshape(-1), jj.reshape(-1)
        paired = dist.paired(v[ii], vm[ii], a[jj], am[jj]).reshape(9, 9)
        torch.testing.assert_close(paired, full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(full.double(), naive_distance(v, vm, a, am, resample), rtol=1e-5, atol=1e-5)


def test_agg_streaming_with_ties_equals_full_matrix():
    g = torch.Generator().manual_seed(5)
    n, c = 31, 4
    # few distinct embeddings -> many exact ties
    base = torch.randn(4, c, generator=g)
    ve = base[torch.randint(0, 4, (n,), generator=g)]
    ae = base[torch.randint(0, 4, (n,), generator=g)]
    video = Latents(ve.numpy().copy(), np.arange(n + 1), ve.numpy().copy())
    audio = Latents(ae.numpy().copy(), np.arange(n + 1), ae.numpy().copy())
    full = (F.normalize(ae.double(), dim=-1) @ F.normalize(ve.double(), dim=-1).T).float()  # a2v: rows = audio
    for qb, cb in [(7, 5), (31, 31), (1, 9)]:
        ranks, topk = agg_search(audio, video, BlockConfig(query_block=qb, candidate_chunk=cb), k=6)
        # exact duplicates must tie whatever the block layout (fp32 matmuls alone do not)
        assert torch.equal(ranks, ranks_from_scores(full)), (qb, cb)
        order = np.argsort(-full.numpy(), axis=1, kind="stable")[:, :6]
        assert topk.numpy().tolist() == order.tolist()


@pytest.mark.parametrize("k", [1, 3, 7, 20])
def test_running_topk_any_block_order(k):
    g = torch.Generator().manual_seed(7)
    # many ties, negatives, -0.0 against +0.0 (equal scores), infinities
    values = torch.tensor([-float("inf"), -2.5, -1.0, -0.0, 0.0, 0.5, 3.0, float("inf")])
    s = values[torch.randint(0, len(values), (6, 20), generator=g)]
    s[5] = torch.randn(20, generator=g)  # and one row without ties
    tk = RunningTopK(6, k)
    blocks = [(12, 20), (0, 5), (5, 12)]  # out of order on purpose
    for a, b in blocks:
        tk.update(0, 6, a, b, s[:, a:b])
    want = np.argsort(-(s.numpy() + 0.0), axis=1, kind="stable")[:, :k]
    assert tk.index.numpy().tolist() == want.tolist()


def test_rank_keys_order_like_stable_sort():
    g = torch.Generator().manual_seed(8)
    s = torch.randn(500, generator=g) * torch.logspace(-30, 30, 500)  # tiny to huge, both signs
    s[::7] = s[3]  # ties
    keys = rank_keys(s, torch.arange(500))
    order = torch.argsort(keys, descending=True)
    assert order.tolist() == np.argsort(-s.numpy(), kind="stable").tolist()
    assert torch.equal(key_index(keys), torch.arange(500))


@pytest.mark.parametrize("rerank", ["gather", "union", "sampled", "auto"])
@pytest.mark.parametrize("uniform", [False, True])
def test_hybrid_extremes_equal_seq_and_agg(uniform, rerank):
    (v, vm), (a, am) = make_pair(n=19, uniform=uniform, seed=3)
    video, audio = Latents.from_padded(v, vm), Latents.from_padded(a, am)
    cfg = BlockConfig(query_block=6, candidate_chunk=4, rerank=rerank)
    dist = DistanceSpec("euclidean", "video")
    for direction in ("a2v", "v2a"):
        q, c = (audio, video) if direction == "a2v" else (video, audio)
        agg_r, _ = agg_search(q, c, cfg)
        seq_r = seq_search(q, c, direction, dist, cfg)
        h_all = hybrid_rerank(q, c, direction, dist, *agg_search(q, c, cfg, k=len(c)), cfg)
        h_one = hybrid_rerank(q, c, direction, dist, *agg_search(q, c, cfg, k=1), cfg)
        assert torch.equal(h_all, seq_r), direction
        assert torch.equal(h_one, agg_r), direction
        assert not torch.equal(seq_r, agg_r)  # the two extremes differ: the checks bite


def naive_hybrid_ranks(q, c, d_queries_by_candidates, k):
    """Per query: sort by agg (cosine desc, index asc), re-rank the top k by distance."""
    qe = F.normalize(torch.from_numpy(q.emb).double(), dim=-1)
    ce = F.normalize(torch.from_numpy(c.emb).double(), dim=-1)
    sims = (qe @ ce.T).float().numpy()
    dd = d_queries_by_candidates.numpy()
    want = []
    for i in range(len(q)):
        order = sorted(range(len(c)), key=lambda j: (-sims[i, j], j))
        top = order[:k]
        if i in top:
            want.append(sorted(top, key=lambda j: (dd[i, j], j)).index(i) + 1)
        else:
            want.append(order.index(i) + 1)
    return torch.tensor(want)


@pytest.mark.parametrize("rerank", ["gather", "union", "sampled", "auto"])
def test_hybrid_middle_k_vs_naive(rerank):
    (v, vm), (a, am) = make_pair(n=17, seed=9)
    video, audio = Latents.from_padded(v, vm), Latents.from_padded(a, am)
    cfg = BlockConfig(query_block=5, candidate_chunk=6, rerank_budget_mb=1, rerank=rerank)
    dist = DistanceSpec("euclidean", "audio")
    d = naive_distance(v, vm, a, am, "audio")
    k = 5
    for direction in ("a2v", "v2a"):
        q, c = (audio, video) if direction == "a2v" else (video, audio)
        got = retrieve(video, audio, ("hybrid",), k, dist, cfg, (direction,))[direction].ranks["hybrid"]
        assert torch.equal(got, naive_hybrid_ranks(q, c, d if direction == "v2a" else d.T, k)), direction


@pytest.mark.parametrize("rerank", ["union", "sampled"])
def test_hybrid_sparse_union_vs_naive(rerank):
    """Few queries, small k, many candidates: the union chunks are scattered (gathered,
    not read as one span), and queries of one block have different target lengths."""
    (v, vm), (a, am) = make_pair(n=40, seed=17)
    video, audio = Latents.from_padded(v, vm), Latents.from_padded(a, am)
    cfg = BlockConfig(query_block=3, candidate_chunk=2, rerank=rerank)
    for resample in ("video", "audio"):
        dist = DistanceSpec("euclidean", resample)
        d = naive_distance(v, vm, a, am, resample)
        q = audio.head(7)
        # agg embeddings that point at the positive, so it is re-ranked inside its top 3
        near = video.emb[:7] + 0.3 * np.random.default_rng(0).standard_normal(video.emb[:7].shape)
        q = Latents(q.seq, q.offsets, near.astype(np.float32))
        got = hybrid_rerank(q, video, "a2v", dist, *agg_search(q, video, cfg, k=3), cfg)
        assert torch.equal(got, naive_hybrid_ranks(q, video, d.T[:7], 3)), resample
        assert (got <= 3).sum() >= 5  # the check bites: most positives are re-ranked


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("resample", ["video", "audio"])
def test_sampled_pairs_equal_naive_distance(resample, uniform):
    (v, vm), (a, am) = make_pair(n=11, uniform=uniform, seed=4)
    d = naive_distance(v, vm, a, am, resample)  # (video, audio)
    dist = DistanceSpec("euclidean", resample)
    g = torch.Generator().manual_seed(2)
    rows, cols = torch.randint(0, 11, (40,), generator=g), torch.randint(0, 11, (40,), generator=g)
    keep = torch.unique(rows * 11 + cols)  # distinct pairs, as in a top-k list
    rows, cols = keep // 11, keep % 11
    perm = torch.randperm(len(rows), generator=g)  # any order, not CSR order
    rows, cols = rows[perm], cols[perm]
    # queries = video (rows index video), then queries = audio
    got_v = dist.sampled(v, vm, a, am, rows, cols, query_is_video=True)
    got_a = dist.sampled(a, am, v, vm, cols, rows, query_is_video=False)
    torch.testing.assert_close(got_v.double(), d[rows, cols], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_a.double(), d[rows, cols], rtol=1e-5, atol=1e-5)


def test_sampled_rerank_needs_euclidean():
    (v, vm), (a, am) = make_pair(n=6, c=3)
    video, audio = Latents.from_padded(v, vm), Latents.from_padded(a, am)
    cfg = BlockConfig(rerank="sampled")
    with pytest.raises(ValueError, match="sampled"):
        hybrid_rerank(audio, video, "a2v", DistanceSpec("soft_dtw"), *agg_search(audio, video, cfg, k=2), cfg)
    with pytest.raises(ValueError, match="rerank must be"):
        BlockConfig(rerank="fast").validate()


def test_memmap_store_same_ranks(tmp_path):
    (v, vm), (a, am) = make_pair(n=15, seed=11)
    video, audio = Latents.from_padded(v, vm), Latents.from_padded(a, am)
    for name, lat in (("video", video), ("audio", audio)):
        np.save(tmp_path / f"{name}_seq.npy", lat.seq)
        np.save(tmp_path / f"{name}_offsets.npy", lat.offsets)
        np.save(tmp_path / f"{name}_emb.npy", lat.emb)
    mv, ma = Latents.load(tmp_path, "video"), Latents.load(tmp_path, "audio")
    assert isinstance(mv.seq, np.memmap)
    cfg = BlockConfig(query_block=4, candidate_chunk=6)
    r_ram = retrieve(video, audio, ("agg", "seq", "hybrid"), 3, DistanceSpec(), cfg)
    r_map = retrieve(mv, ma, ("agg", "seq", "hybrid"), 3, DistanceSpec(), cfg)
    for d in r_ram:
        for m in r_ram[d].ranks:
            assert torch.equal(r_ram[d].ranks[m], r_map[d].ranks[m])


def test_soft_dtw_streaming_equals_full_matrix():
    (v, vm), (a, am) = make_pair(n=8, c=3, seed=13)
    video, audio = Latents.from_padded(v, vm), Latents.from_padded(a, am)
    dist = DistanceSpec("soft_dtw", gamma=0.1)
    full = dist.matrix(v, vm, a, am)  # (video, audio)
    cfg = BlockConfig(query_block=3, candidate_chunk=5)
    assert torch.equal(seq_search(audio, video, "a2v", dist, cfg), ranks_from_scores(-full.T))
    assert torch.equal(seq_search(video, audio, "v2a", dist, cfg), ranks_from_scores(-full))
    h = hybrid_rerank(audio, video, "a2v", dist, *agg_search(audio, video, cfg, k=8), cfg)
    assert torch.equal(h, ranks_from_scores(-full.T))


def test_fewer_queries_than_candidates():
    (v, vm), (a, am) = make_pair(n=14, seed=21)
    video, audio = Latents.from_padded(v, vm), Latents.from_padded(a, am)
    d = naive_distance(v, vm, a, am, "video")
    cfg = BlockConfig(query_block=3, candidate_chunk=4)
    dist = DistanceSpec("euclidean", "video")
    q = audio.head(6)
    got = seq_search(q, video, "a2v", dist, cfg)
    assert torch.equal(got, ranks_from_scores(-d.T[:6], torch.arange(6)))
    h = hybrid_rerank(q, video, "a2v", dist, *agg_search(q, video, cfg, k=14), cfg)
    assert torch.equal(h, got)


def test_bad_inputs():
    (v, vm), (a, am) = make_pair(n=5)
    video, audio = Latents.from_padded(v, vm), Latents.from_padded(a, am)
    with pytest.raises(ValueError, match="k must be"):
        retrieve(video, audio, ("hybrid",), 6)
    with pytest.raises(ValueError, match="unknown methods"):
        retrieve(video, audio, ("fast",), 2)
