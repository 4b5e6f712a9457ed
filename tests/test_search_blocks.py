"""Retrieval block sizes: 'auto' sizing from free memory (a pure function) and rankings
identical for any block size, down to the (1, 1) floor."""

from __future__ import annotations

import pytest
import torch

from scav.retrieve import blocks, search
from scav.retrieve.config import RetrieveConfig
from scav.retrieve.search import (
    AGG_CELL_BYTES,
    SEQ_CELL_BYTES,
    Latents,
    BlockConfig,
    agg_search,
    hybrid_rerank,
    plan_blocks,
    seq_row_bytes,
    seq_search,
)
from scav.sequence.metrics import ranks_from_scores
from scav.sequence.spec import DistanceSpec

ROW = seq_row_bytes(62, 62, 512)


def working_set(qb, cb, qrow, crow, cell):
    return qb * qrow + cb * crow + qb * cb * cell + 4 * qb * (qb + 2 * cb)


@pytest.mark.parametrize("free", [10**6, 10**8, 10**9, 4 * 10**9, 10**10, 10**11])
@pytest.mark.parametrize("n_q,n_c", [(1000, 10000), (10000, 100000), (7, 5)])
def test_plan_fits_budget_and_bounds(free, n_q, n_c):
    qb, cb = plan_blocks(free, n_q, n_c, ROW, ROW, SEQ_CELL_BYTES, fraction=0.5, max_block=1 << 17)
    assert 1 <= qb <= n_q and 1 <= cb <= n_c
    if (qb, cb) != (1, 1):  # (1, 1) is the floor even when nothing fits
        assert working_set(qb, cb, ROW, ROW, SEQ_CELL_BYTES) <= 0.5 * free


def test_plan_prefers_whole_query_side_then_fills_candidates():
    free = 100 * 2**30  # an H200's free memory, half of it usable
    assert plan_blocks(free, 1000, 10000, ROW, ROW, SEQ_CELL_BYTES, 0.5, 1 << 17) == (1000, 10000)
    qb, cb = plan_blocks(free, 10000, 100000, ROW, ROW, SEQ_CELL_BYTES, 0.5, 1 << 17)
    assert qb == 10000 and 10000 <= cb < 100000
    # the CPU cap keeps blocks cache-sized however much RAM there is
    assert plan_blocks(free, 1000, 10000, ROW, ROW, SEQ_CELL_BYTES, 0.25, 4096) == (1000, 4096)


def test_plan_monotone_in_free_memory_and_fixed_sides():
    prev = (0, 0)
    for free in (10**7, 10**8, 10**9, 10**10):
        qb, cb = plan_blocks(free, 5000, 50000, ROW, ROW, SEQ_CELL_BYTES)
        assert qb * cb >= prev[0] * prev[1]
        prev = (qb, cb)
    assert plan_blocks(10**9, 5000, 50000, ROW, ROW, SEQ_CELL_BYTES, fixed_query_block=3)[0] == 3
    assert plan_blocks(10**9, 5000, 50000, ROW, ROW, SEQ_CELL_BYTES, fixed_candidate_chunk=5)[1] == 5
    assert plan_blocks(0, 10, 10, ROW, ROW, SEQ_CELL_BYTES) == (1, 1)
    assert plan_blocks(10**9, 10, 10, 16 * 512, 16 * 512, AGG_CELL_BYTES) == (10, 10)


def test_free_memory_bytes_on_cpu():
    assert search.free_memory_bytes(torch.device("cpu")) > 0


def latents(n, seed, lengths):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    lmax = int(lengths.max())
    mask = torch.arange(lmax)[None, :] < lengths[:, None]
    return torch.randn(n, lmax, 6, generator=g) * mask[..., None], mask


@pytest.mark.parametrize("free", [0, 40_000, 300_000, 10**12])
@pytest.mark.parametrize("resample", ["video", "audio"])
def test_auto_blocks_rank_like_the_full_matrix(monkeypatch, free, resample):
    """Whatever the free memory, 'auto' gives the ranks of the full (Q, N) matrix."""
    monkeypatch.setattr(blocks, "free_memory_bytes", lambda device: free)
    n = 29
    g = torch.Generator().manual_seed(3)
    v, vm = latents(n, 0, torch.randint(3, 12, (n,), generator=g).tolist())
    a, am = latents(n, 1, torch.randint(2, 7, (n,), generator=g).tolist())
    video, audio = Latents.from_padded(v, vm), Latents.from_padded(a, am)
    spec = DistanceSpec("euclidean", resample)
    full = spec.matrix(v, vm, a, am)  # (video, audio)
    cfg = BlockConfig()  # auto, auto
    for direction, q, c, d in (("a2v", audio, video, full.T), ("v2a", video, audio, full)):
        want = ranks_from_scores(-d)
        assert torch.equal(seq_search(q, c, direction, spec, cfg), want), (direction, free)
        explicit = BlockConfig(query_block=4, candidate_chunk=7)
        assert torch.equal(seq_search(q, c, direction, spec, explicit), want)
        agg_ranks, topk = agg_search(q, c, cfg, k=n)
        assert torch.equal(agg_ranks, agg_search(q, c, explicit)[0])
        union = BlockConfig(rerank="union")
        assert torch.equal(hybrid_rerank(q, c, direction, spec, agg_ranks, topk, union), want)


def test_config_block_sizes_validate():
    RetrieveConfig(checkpoint="c", split="s").validate()  # auto by default
    RetrieveConfig(checkpoint="c", split="s", query_block=3, candidate_chunk="auto").validate()
    for bad in (0, -1, "big", 2.5, True):
        with pytest.raises(ValueError):
            RetrieveConfig(checkpoint="c", split="s", query_block=bad).validate()
        with pytest.raises(ValueError):
            BlockConfig(candidate_chunk=bad).validate()
    with pytest.raises(ValueError):
        RetrieveConfig(checkpoint="c", split="s", precision="fp16").validate()


def test_cli_block_size_option():
    import typer

    from scav.retrieve.cli import _block_size

    assert _block_size("auto") == "auto" and _block_size("64") == 64
    for bad in ("0", "x", "-3"):
        with pytest.raises(typer.BadParameter):
            _block_size(bad)
