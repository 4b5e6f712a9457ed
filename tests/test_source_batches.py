"""Batches with a same-source group (hard negatives): composition, coverage, determinism,
uniform choice over sources, and the loader serving them (workers, resume)."""

import time
from collections import Counter

import numpy as np
import pytest
import torch

from scav.core.cache import FeatureCache
from scav.core.loader import make_train_loader
from scav.core.schema import CacheError
from scav.core.source_batches import batch_composition, group_size, source_batches
from cache_factory import make_random_cache


def _mixed_sources(seed: int, n_sources: int = 60, hi: int = 40) -> list[str]:
    """Sources of 1..hi clips, clips of one source stored together (as a cache stores them)."""
    sizes = np.random.default_rng(seed).integers(1, hi + 1, size=n_sources)
    return [f"title{s:03d}" for s, k in enumerate(sizes) for _ in range(k)]


def _chi2_bound(df: int) -> float:
    """Far upper tail of chi-square(df): mean + 5 sd (mean df, variance 2 df); avoids scipy."""
    return df + 5 * np.sqrt(2 * df)


def test_group_size_rounds_and_has_at_least_two():
    assert group_size(64, 1 / 8) == 8 and group_size(256, 1 / 8) == 32
    assert group_size(8, 1 / 8) == 2 and group_size(4, 0.01) == 2  # a "group" of one is no hard negative
    assert group_size(20, 1 / 8) == 2  # round(2.5): the even neighbour
    assert group_size(10, 1.0) == 10
    for b, f in ((8, 0.0), (8, -0.1), (8, 1.5), (1, 0.5)):
        with pytest.raises(ValueError):
            group_size(b, f)


def test_every_batch_has_a_group_while_some_source_can_give_one():
    sources = _mixed_sources(0)
    src = np.array(sources)
    b, f = 16, 1 / 4
    g = group_size(b, f)
    batches = source_batches(sources, b, f, seed=1, epoch=0)
    assert len(batches) == len(sources) // b and all(len(x) == b for x in batches)
    # replayed independently: the unused clips of each source before each batch
    unused = Counter(sources)
    served: set[int] = set()
    grouped = 0
    for batch in batches:
        ids = batch.tolist()
        assert len(set(ids)) == b and not served & set(ids)  # no clip twice in the epoch
        served |= set(ids)
        if max(unused.values()) >= g:
            head = set(src[batch[:g]])  # the documented place of the group: the first g clips
            assert len(head) == 1 and unused[next(iter(head))] >= g
            grouped += 1
        unused.subtract(src[batch].tolist())
    # both phases ran: groups first, then plain uniform batches once no source had g clips left
    assert 0 < grouped < len(batches)
    assert all(max(Counter(src[x].tolist()).values()) >= g for x in batches[:grouped])
    # drop_last=False: the same batches, then the leftover clips: every clip exactly once
    full = source_batches(sources, b, f, seed=1, epoch=0, drop_last=False)
    assert all(np.array_equal(x, y) for x, y in zip(full, batches)) and len(full) == len(batches) + 1
    assert sorted(np.concatenate(full).tolist()) == list(range(len(sources)))


def test_batches_are_a_function_of_seed_epoch_and_sources():
    sources = _mixed_sources(1)
    run = lambda seed, epoch: np.concatenate(source_batches(sources, 8, 1 / 8, seed, epoch)).tolist()  # noqa: E731
    first = run(0, 0)
    assert run(0, 0) == first
    assert run(0, 1) != first and run(1, 0) != first
    # another stream than epoch_order's: a fraction of 1 (whole batches of one source) is not a reshuffle of it
    whole = source_batches(sources, 4, 1.0, 0, 0)
    assert all(len(set(np.array(sources)[x])) == 1 for x in whole[:5])


def test_sources_are_chosen_uniformly_over_sources_not_clips():
    # 20 long sources (200 clips) and 20 short ones (12): by clips a long one would be picked
    # ~17x as often; early in an epoch every source still has a group's worth left
    sources = [f"long{s}" for s in range(20) for _ in range(200)] + [f"short{s}" for s in range(20) for _ in range(12)]
    picks: Counter = Counter()
    for epoch in range(150):
        for batch in source_batches(sources, 32, 1 / 8, seed=3, epoch=epoch)[:10]:
            picks[sources[batch[0]]] += 1
    counts = np.array([picks[f"long{s}"] for s in range(20)] + [picks[f"short{s}"] for s in range(20)])
    expected = counts.sum() / 40
    assert ((counts - expected) ** 2 / expected).sum() < _chi2_bound(39), counts
    assert 0.8 < counts[:20].sum() / counts[20:].sum() < 1.25


def test_the_rest_of_a_batch_is_uniform_over_the_other_clips():
    # the first batch of many seeds: each clip not in the group is in the rest with probability
    # (B - g) / (N - g), whatever the size of its source
    sources = [f"a{s}" for s in range(4) for _ in range(40)] + [f"b{s}" for s in range(20) for _ in range(2)]
    n, b = len(sources), 20
    g = group_size(b, 1 / 8)
    hits, expected = np.zeros(n), np.zeros(n)
    for seed in range(400):
        batch = source_batches(sources, b, 1 / 8, seed=seed, epoch=0)[0]
        hits[batch[g:]] += 1
        outside = np.ones(n, dtype=bool)
        outside[batch[:g]] = False
        expected += outside * (b - g) / (n - g)
    assert ((hits - expected) ** 2 / expected).sum() < _chi2_bound(n - 1)
    big, small = hits[:160].mean() / expected[:160].mean(), hits[160:].mean() / expected[160:].mean()
    assert 0.85 < big < 1.15 and 0.85 < small < 1.15


def test_batch_composition_counts_the_largest_group():
    sources = ["x", "x", "y", "z", "y", "y"]
    comp = batch_composition(sources, [np.array([0, 1, 2]), np.array([2, 4, 5]), np.array([3, 0])])
    assert comp.largest_group.tolist() == [2, 3, 1]
    assert comp.largest_source == ["x", "y", "x"]  # a tie goes to the smallest name
    assert comp.n_sources.tolist() == [2, 1, 2]
    assert comp.summary() == {"largest_group": 2.0, "n_sources": 5 / 3}


def test_200k_clips_take_well_under_a_second():
    sizes = np.random.default_rng(0).integers(1, 400, size=1000)
    sources = np.repeat([f"t{i}" for i in range(len(sizes))], sizes).tolist()
    t0 = time.perf_counter()
    batches = source_batches(sources, 256, 1 / 8, seed=0, epoch=0)
    took = time.perf_counter() - t0
    print(f"source_batches: {len(sources)} clips, {len(batches)} batches of 256 in {took:.3f} s")
    assert len(batches) == len(sources) // 256
    assert (batch_composition(sources, batches[:100]).largest_group >= 32).all()


# -- through the loader --------------------------------------------------------


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    # 63 train clips over 7 sources (src0..src6, interleaved in storage)
    return make_random_cache(tmp_path_factory.mktemp("srcb") / "c.zarr", {"train": 63, "test": 4})


def test_loader_serves_source_batches_of_the_selected_clips(cache_path):
    cache = FeatureCache.open(cache_path)
    infos = cache.clips("train")[5:]  # a subset: the sources of the selected clips, in cache order
    ids, sources = [c.clip_id for c in infos], [c.source for c in infos]
    loader = make_train_loader(cache, "train", 8, seed=4, epoch=2, clip_ids=ids, same_source_fraction=0.25)
    got = [b.clip_ids for b in loader]
    want = [[ids[i] for i in x] for x in source_batches(sources, 8, 0.25, seed=4, epoch=2)]
    assert got == want and len(loader) == len(got) == len(ids) // 8
    for b in loader:
        assert b.sources[0] == b.sources[1]  # g = 2
        f = cache.get(b.clip_ids[0])
        np.testing.assert_array_equal(b.video[0, : len(f.video)].numpy(), f.video)
    # drop_last=False: the leftover clips come last, every clip once
    every = [c for b in make_train_loader(cache, "train", 8, seed=4, epoch=2, clip_ids=ids, drop_last=False,
                                          same_source_fraction=0.25) for c in b.clip_ids]
    assert every[: len(ids) // 8 * 8] == [c for x in got for c in x] and sorted(every) == sorted(ids)


def test_loader_source_batches_same_with_workers_and_on_resume(cache_path):
    kw = dict(seed=9, epoch=1, same_source_fraction=0.25)
    full = list(make_train_loader(cache_path, "train", 8, **kw))
    resumed = list(make_train_loader(cache_path, "train", 8, start_batch=3, **kw))
    spawned = list(make_train_loader(cache_path, "train", 8, start_batch=3, num_workers=2, **kw))
    assert len(full) == 7 and len(resumed) == len(spawned) == 4
    for a, b, c in zip(full[3:], resumed, spawned):
        assert a.clip_ids == b.clip_ids == c.clip_ids
        for x, y, z in [(a.video, b.video, c.video), (a.audio, b.audio, c.audio),
                        (a.audio_mask, b.audio_mask, c.audio_mask)]:
            assert torch.equal(x, y) and torch.equal(x, z)


def test_loader_options_are_checked(cache_path):
    with pytest.raises(CacheError, match=r"same_source_fraction must be in \[0, 1\]"):
        make_train_loader(cache_path, "train", 8, seed=0, same_source_fraction=1.5)
    with pytest.raises(CacheError, match="needs shuffle=True"):
        make_train_loader(cache_path, "train", 8, seed=0, same_source_fraction=0.25, shuffle=False)
    with pytest.raises(CacheError, match="batch_size >= 2"):
        make_train_loader(cache_path, "train", 1, seed=0, same_source_fraction=0.25)
    # 0 = off: the loader's usual order
    a = [b.clip_ids for b in make_train_loader(cache_path, "train", 8, seed=0)]
    assert a == [b.clip_ids for b in make_train_loader(cache_path, "train", 8, seed=0, same_source_fraction=0.0)]
