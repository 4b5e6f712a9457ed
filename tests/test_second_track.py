"""A second audio track per clip (``Batch.audio2``): the dubs paper's secondary instance."""

import zlib

import numpy as np
import pytest
import torch

from scav.core import loader as loader_module
from scav.core.cache import CacheWriter, ClipRecord, FeatureCache, new_meta
from scav.core.clip_reader import ClipReader
from scav.core.loader import make_train_loader, second_track_index
from scav.core.schema import AudioTrack, CacheError, CacheLayout, ClipInfo, EncoderInfo

DV, DA = 5, 3
LANGUAGES = [["eng"], ["eng", "spa"], ["spa", "eng", "fra"], ["eng", "fra", "spa", "jpn"]]  # clip i: LANGUAGES[i % 4]


def _record(i: int) -> ClipRecord:
    """Clip i; its track j is offset by 10 * j and each track has its own length, so a wrong
    track or a wrong length shows."""
    rng = np.random.default_rng(i)
    langs = LANGUAGES[i % 4]
    t = 3 + i % 4
    lengths = [2 + (i + 3 * j) % 5 for j in range(len(langs))]
    info = ClipInfo(f"c{i:02d}", "train", source=f"s{i // 5}", n_video=t,
                    tracks=[AudioTrack(j, lang, n) for j, (lang, n) in enumerate(zip(langs, lengths))])
    audio = [(rng.standard_normal((n, DA)) + 10 * j).astype(np.float16) for j, n in enumerate(lengths)]
    return ClipRecord(info, rng.standard_normal((t, DV)).astype(np.float16), np.arange(t) / 25.0, audio)


WRITTEN = {r.info.clip_id: r for r in map(_record, range(20))}


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("dubs") / "c.zarr"
    meta = new_meta(EncoderInfo("pixels", DV, stand_in=True), EncoderInfo("fbank", DA, stand_in=True),
                    layout=CacheLayout(chunk_rows=4))  # clips straddle chunk boundaries
    recs = list(WRITTEN.values())
    with CacheWriter.create_or_open(path, meta) as w:
        for a in range(0, len(recs), 7):
            w.write_part(recs[a : a + 7])
    return path


def _languages(batch, tracks) -> list[str]:
    return [WRITTEN[c].info.tracks[j].language for c, j in zip(batch.clip_ids, tracks)]


def _check_audio2(batch, expected: dict[str, int]) -> None:
    """audio2 of each clip equals the written features of track ``expected[clip_id]``, padded
    with zeros (float16, as stored)."""
    assert batch.audio2.dtype == torch.float16 and batch.tracks2 == [expected[c] for c in batch.clip_ids]
    for i, cid in enumerate(batch.clip_ids):
        want = WRITTEN[cid].audio[expected[cid]]
        s = len(want)
        np.testing.assert_array_equal(batch.audio2[i, :s].numpy(), want)
        assert batch.audio2_mask[i].tolist() == [True] * s + [False] * (batch.audio2.shape[1] - s)
        assert not batch.audio2[i, s:].any()


def _epoch(cache_path, epoch=0, **kw) -> list:
    return list(make_train_loader(cache_path, "train", 4, seed=3, epoch=epoch, buffer_clips=8, block_clips=2, **kw))


def _round_robin(cid: str, primary: int, epoch: int) -> int:
    """The documented rule, written out: the k-th of the other tracks, k = (epoch + crc32(id)) % their number."""
    others = [j for j in range(len(WRITTEN[cid].audio)) if j != primary]
    return others[(epoch + zlib.crc32(cid.encode())) % len(others)] if others else primary


def test_no_second_track_is_todays_batch(cache_path):
    cache = FeatureCache.open(cache_path)
    for b in _epoch(cache_path):
        assert b.audio2 is None and b.audio2_mask is None and b.tracks2 is None
        assert b.tracks == [0] * len(b)
        for i, cid in enumerate(b.clip_ids):  # video and primary audio as stored
            f = cache.get(cid)
            np.testing.assert_array_equal(b.video[i, : len(f.video)].numpy(), WRITTEN[cid].video)
            np.testing.assert_array_equal(b.audio[i, : len(f.audio)].numpy(), WRITTEN[cid].audio[0])
        moved = b.to("cpu")
        assert moved.audio2 is None and moved.tracks == b.tracks


@pytest.mark.parametrize("policy", ["same", "round-robin", "spa", 1])
def test_video_and_primary_audio_are_those_of_the_single_track_loader(cache_path, policy):
    plain = _epoch(cache_path, track="eng")
    dubbed = _epoch(cache_path, track="eng", second_track=policy)
    assert [b.clip_ids for b in plain] == [b.clip_ids for b in dubbed]
    for a, b in zip(plain, dubbed):
        for x, y in [(a.video, b.video), (a.video_mask, b.video_mask), (a.audio, b.audio),
                     (a.audio_mask, b.audio_mask)]:
            assert torch.equal(x, y)
        assert a.tracks == b.tracks == [WRITTEN[c].info.find_track("eng") for c in a.clip_ids]
        moved = b.to("cpu")  # .to() carries audio2 and casts it like audio
        assert moved.audio2.dtype == torch.float32 and torch.equal(moved.audio2, b.audio2.float())
        assert torch.equal(moved.audio2_mask, b.audio2_mask) and moved.tracks2 == b.tracks2


def test_same_serves_the_primary_track_again(cache_path):
    for b in _epoch(cache_path, track="eng", second_track="same"):
        _check_audio2(b, {c: WRITTEN[c].info.find_track("eng") for c in b.clip_ids})
        assert torch.equal(b.audio, b.audio2) and torch.equal(b.audio_mask, b.audio2_mask)


def test_round_robin_cycles_through_the_other_tracks_over_epochs(cache_path):
    seen: dict[str, set[int]] = {c: set() for c in WRITTEN}
    for epoch in range(3):
        batches = _epoch(cache_path, epoch, second_track="round-robin")
        for b in batches:
            _check_audio2(b, {c: _round_robin(c, 0, epoch) for c in b.clip_ids})
            for c, j in zip(b.clip_ids, b.tracks2):
                seen[c].add(j)
    for c, rec in WRITTEN.items():
        n = len(rec.audio)
        # one track: the primary (no dub to serve); else every other track within n - 1 epochs
        assert seen[c] == ({0} if n == 1 else set(range(1, n))), c
    # epochs differ for clips with several dubs; clips of one epoch do not all take the same one
    e0 = {c: j for b in _epoch(cache_path, 0, second_track="round-robin") for c, j in zip(b.clip_ids, b.tracks2)}
    e1 = {c: j for b in _epoch(cache_path, 1, second_track="round-robin") for c, j in zip(b.clip_ids, b.tracks2)}
    multi = [c for c in e0 if len(WRITTEN[c].audio) > 2]
    assert all(e0[c] != e1[c] for c in multi) and len({e0[c] for c in multi}) > 1


def test_a_language_as_second_track_falls_back_to_another_dub_then_to_the_primary(cache_path):
    batches = _epoch(cache_path, second_track="spa")  # primary: track 0
    expected = {}
    for cid, rec in WRITTEN.items():
        langs = [t.language for t in rec.info.tracks]
        if "spa" in langs[1:]:
            expected[cid] = langs.index("spa")
        else:  # no Spanish, or Spanish is the primary: round-robin among the others (none: the primary)
            expected[cid] = _round_robin(cid, 0, 0)
    for b in batches:
        _check_audio2(b, expected)
    served = {c: lang for b in batches for c, lang in zip(b.clip_ids, _languages(b, b.tracks2))}
    assert served["c01"] == "spa" and served["c03"] == "spa"  # has a Spanish dub
    assert served["c02"] in ("eng", "fra")  # primary is Spanish: another language
    assert served["c00"] == "eng"  # one track only: the primary itself
    # by index, with the primary selected by language: index 1 is c02's primary (eng) -> another track
    by_index = _epoch(cache_path, track="eng", second_track=1)
    for b in by_index:
        want = {}
        for c in b.clip_ids:
            p = WRITTEN[c].info.find_track("eng")
            want[c] = 1 if len(WRITTEN[c].audio) > 1 and p != 1 else _round_robin(c, p, 0)
        _check_audio2(b, want)


def test_workers_and_resume_serve_the_same_second_tracks(cache_path):
    kw = dict(second_track="round-robin", same_source_fraction=0.5)
    full = _epoch(cache_path, 2, **kw)
    spawned = _epoch(cache_path, 2, start_batch=2, num_workers=2, **kw)
    assert len(spawned) == len(full) - 2
    for a, b in zip(full[2:], spawned):
        assert a.clip_ids == b.clip_ids and a.tracks2 == b.tracks2
        assert torch.equal(a.audio2, b.audio2) and torch.equal(a.audio2_mask, b.audio2_mask)
        assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
        _check_audio2(b, {c: _round_robin(c, 0, 2) for c in b.clip_ids})


def test_second_tracks_are_prefetched_and_checked_ahead(cache_path, monkeypatch):
    # the kernel read-ahead and the spare-core crc thread get the second track's reads too
    asked: dict[str, set] = {"prefetch": set(), "verify": set()}
    real_prefetch, real_verify = ClipReader.prefetch, ClipReader.verify_ahead

    def note(kind, locs, tracks):
        asked[kind] |= {(pi, row, t) for (pi, row), t in zip(locs.tolist(), tracks.tolist())}

    def prefetch(self, locs, tracks):
        note("prefetch", locs, tracks)
        return real_prefetch(self, locs, tracks)

    def verify_ahead(self, batches, stop):
        batches = list(batches)
        for locs, tracks in batches:
            note("verify", locs, tracks)
        return real_verify(self, batches, stop)

    monkeypatch.setattr(ClipReader, "prefetch", prefetch)
    monkeypatch.setattr(ClipReader, "verify_ahead", verify_ahead)
    monkeypatch.setattr(loader_module, "VERIFY_AHEAD_MIN_CPUS", 1)
    loader = make_train_loader(FeatureCache.open(cache_path), "train", 4, seed=1, second_track="round-robin")
    for b in loader:  # a freshly opened cache: the verifier runs
        _check_audio2(b, {c: _round_robin(c, 0, 0) for c in b.clip_ids})
    served = {(pi, row, t) for (pi, row), t in zip(loader.locs.tolist(), loader.tracks2.tolist())}
    assert served <= asked["prefetch"] and served <= asked["verify"]
    assert not ClipReader(loader.cache).needs_verifying(loader.locs, loader.tracks2)


def test_second_track_index_and_bad_policies(cache_path):
    info = WRITTEN["c03"].info  # eng, fra, spa, jpn
    assert second_track_index(info, 0, "same", 5) == 0
    assert second_track_index(info, 0, " Round-Robin ", 0) == _round_robin("c03", 0, 0)
    assert second_track_index(info, 0, "JPN", 0) == 3 and second_track_index(info, 2, 2, 0) != 2
    with pytest.raises(CacheError, match="none of the 20 selected clips has audio track 'kor'"):
        make_train_loader(cache_path, "train", 4, seed=0, second_track="kor")
    for bad in (-1, "", True, 1.5):
        with pytest.raises(CacheError, match="second_track must be"):
            make_train_loader(cache_path, "train", 4, seed=0, second_track=bad)
