"""One meaning of ``track`` from the cache up: an audio track chosen by index or language tag."""

import numpy as np
import pytest
import torch

from scav.core.cache import CacheWriter, ClipRecord, FeatureCache, new_meta
from scav.core.loader import iter_eval_batches, make_train_loader
from scav.core.schema import AudioTrack, CacheError, CacheLayout, ClipInfo, EncoderInfo

DV, DA = 5, 3


def _record(i: int, languages: list[str | None]) -> ClipRecord:
    """A clip whose audio tracks have the given language tags and different lengths per track."""
    rng = np.random.default_rng(i)
    t = 3 + i % 4
    lengths = [2 + (i + 3 * j) % 5 for j in range(len(languages))]
    tracks = [AudioTrack(j, lang, n) for j, (lang, n) in enumerate(zip(languages, lengths))]
    info = ClipInfo(f"c{i:02d}", "train" if i < 12 else "val", source=f"s{i // 4}", n_video=t, tracks=tracks)
    audio = [(rng.standard_normal((n, DA)) + 10 * j).astype(np.float16) for j, n in enumerate(lengths)]
    return ClipRecord(info, rng.standard_normal((t, DV)).astype(np.float16), np.arange(t) / 25.0, audio)


def _languages(i: int) -> list[str | None]:
    if i % 5 == 4:
        return ["eng"]  # no dub
    return ["spa", "eng"] if i % 3 == 0 else ["eng", "SPA"]  # the dub's position and tag case vary


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tracks") / "c.zarr"
    meta = new_meta(EncoderInfo("pixels", DV, stand_in=True), EncoderInfo("fbank", DA, stand_in=True),
                    layout=CacheLayout(chunk_rows=4))  # clips straddle chunk boundaries
    with CacheWriter.create_or_open(path, meta) as w:
        recs = [_record(i, _languages(i)) for i in range(16)]
        for a in range(0, len(recs), 6):
            w.write_part(recs[a : a + 6])
    return path


def _written(i: int) -> ClipRecord:
    return _record(i, _languages(i))


def test_clip_info_resolves_index_and_language():
    info = _written(3).info  # tracks: spa (0), eng (1)
    assert info.track_index(0) == 0 and info.track_index(1) == 1
    assert info.track_index("eng") == 1 and info.track_index("SPA") == 0 and info.track_index(" spa ") == 0
    assert info.n_audio_steps("eng") == info.tracks[1].n_steps != info.n_audio_steps(0) == info.n_audio
    assert info.find_track(2) is None and info.find_track("fra") is None
    with pytest.raises(CacheError, match=r"clip 'c03' has no audio track 'fra' \(it has 2 tracks: 0 \(spa\), 1 \(eng\)\)"):
        info.track_index("fra")
    for bad in (-1, True, "", 1.5, None):
        with pytest.raises(CacheError, match="index >= 0 or a language tag"):
            info.find_track(bad)


def test_get_serves_the_selected_track(cache_path):
    cache = FeatureCache.open(cache_path)
    for i in range(16):
        rec = _written(i)
        cid = rec.info.clip_id
        assert cache.get(cid).track == 0
        np.testing.assert_array_equal(cache.get(cid).audio, rec.audio[0])
        np.testing.assert_array_equal(cache.get(cid, "eng").audio, rec.audio[rec.info.track_index("eng")])
        if len(rec.audio) == 2:
            got = cache.get(cid, "spa")
            np.testing.assert_array_equal(got.audio, rec.audio[rec.info.track_index("spa")])
            np.testing.assert_array_equal(cache.get(cid, 1).audio, rec.audio[1])
            np.testing.assert_array_equal(got.video, rec.video)  # the video is the same for every track
        else:
            with pytest.raises(CacheError, match=f"clip '{cid}' has no audio track 'spa'"):
                cache.get(cid, "spa")
    batches = list(cache.iter_split("train", batch_size=5, track="eng"))
    assert [f.track for b in batches for f in b] == [_written(i).info.track_index("eng") for i in range(12)]


def _check(cache, batch, track):
    for i, cid in enumerate(batch.clip_ids):
        f = cache.get(cid, track)
        t, s = len(f.video), len(f.audio)
        assert s == f.info.n_audio_steps(track)
        np.testing.assert_array_equal(batch.video[i, :t].numpy(), f.video)
        np.testing.assert_array_equal(batch.audio[i, :s].numpy(), f.audio)
        assert batch.audio_mask[i].tolist() == [True] * s + [False] * (batch.audio.shape[1] - s)
        assert not batch.audio[i, s:].any()


@pytest.mark.parametrize("track", [0, 1, "spa", "ENG"])
def test_loader_batches_match_get_for_the_selected_track(cache_path, track):
    cache = FeatureCache.open(cache_path)
    have = [c.clip_id for c in cache.clips() if c.find_track(track) is not None]
    served = []
    for b in make_train_loader(cache, None, 3, seed=2, clip_ids=have, drop_last=False, buffer_clips=6,
                               block_clips=2, track=track):
        _check(cache, b, track)
        served += b.clip_ids
    assert sorted(served) == sorted(have)
    evals = list(iter_eval_batches(cache, "val", clip_ids=[c for c in have if c in {x.clip_id for x in cache.clips("val")}],
                                   batch_size=2, track=track))
    for b in evals:
        _check(cache, b, track)


def test_default_track_is_track_zero_unchanged(cache_path):
    cache = FeatureCache.open(cache_path)
    a = list(make_train_loader(cache_path, "train", 4, seed=0))
    b = list(make_train_loader(cache, "train", 4, seed=0, track=0))
    for x, y in zip(a, b):
        assert x.clip_ids == y.clip_ids
        assert torch.equal(x.video, y.video) and torch.equal(x.audio, y.audio)
        assert torch.equal(x.audio_mask, y.audio_mask)
        _check(cache, x, 0)


def test_clips_lacking_the_track_are_a_clear_error(cache_path):
    # no silent fallback to the original track: a mistyped or absent language fails before any read
    with pytest.raises(CacheError, match=r"2 of the 12 selected clips have no audio track 'spa', e.g. 'c04'"):
        make_train_loader(cache_path, "train", 2, seed=0, track="spa")
    with pytest.raises(CacheError, match=r"16 of the 16 selected clips have no audio track 'fra'"):
        next(iter_eval_batches(cache_path, track="fra"))
    with pytest.raises(CacheError, match="index >= 0 or a language tag"):
        make_train_loader(cache_path, "train", 2, seed=0, track=-1)


def test_worker_processes_serve_the_same_tracks(cache_path):
    cache = FeatureCache.open(cache_path)
    have = [c.clip_id for c in cache.clips("train") if c.find_track("spa") is not None]
    kw = dict(seed=5, clip_ids=have, buffer_clips=4, block_clips=2, track="spa")
    local = list(make_train_loader(cache, "train", 2, **kw))
    spawned = list(make_train_loader(cache_path, "train", 2, num_workers=2, **kw))
    assert [b.clip_ids for b in local] == [b.clip_ids for b in spawned]
    for x, y in zip(local, spawned):
        assert torch.equal(x.audio, y.audio) and torch.equal(x.audio_mask, y.audio_mask)
