"""The feature cache: round trips, refusal of unreadable caches, crash safety."""

import json
import shutil

import numpy as np
import pytest

from scav.core.cache import CacheWriter, ClipRecord, FeatureCache, new_meta
from scav.core.schema import AudioTrack, CacheError, ClipInfo, EncoderInfo, Failure

VIDEO = EncoderInfo("pixels", 6, stand_in=True)
AUDIO = EncoderInfo("fbank", 4, stand_in=True, steps_per_second=6.25)


def _record(i, split="train", rng=None, n_tracks=1):
    rng = rng or np.random.default_rng(i)
    t, s = 3 + i % 4, 2 + i % 3
    tracks = [AudioTrack(j, None if j == 0 else "fra", s) for j in range(n_tracks)]
    info = ClipInfo(f"clip{i:03d}", split, label=f"L{i % 2}", source=f"src{i // 2}", n_video=t, tracks=tracks)
    return ClipRecord(
        info,
        rng.standard_normal((t, 6)).astype(np.float32),
        np.arange(t) / 25.0,
        [rng.standard_normal((s, 4)).astype(np.float32) for _ in range(n_tracks)],
    )


def test_round_trip_is_exact_in_float16(tmp_path):
    w = CacheWriter.create_or_open(tmp_path / "c.zarr", new_meta(VIDEO, AUDIO))
    recs = [_record(i) for i in range(5)]
    recs.append(_record(5, n_tracks=2))
    w.write_part(recs[:3])
    w.write_part(recs[3:], [Failure("bad", "open", "no such file", "x.mp4")])
    cache = FeatureCache.open(tmp_path / "c.zarr")
    assert len(cache) == 6 and len(cache.parts) == 2
    for r in recs:
        got = cache.get(r.info.clip_id)
        np.testing.assert_array_equal(got.video, r.video.astype(np.float16))
        np.testing.assert_array_equal(got.audio, r.audio[0].astype(np.float16))
        np.testing.assert_array_equal(got.video_times, r.video_times)
        assert got.info == r.info
    second = cache.get("clip005", track=1)
    np.testing.assert_array_equal(second.audio, recs[5].audio[1].astype(np.float16))
    assert second.track == 1 and cache.get("clip005", track="FRA").track == 1  # by language tag
    # a clip without the selected track is an error naming it, never empty or another track's audio
    with pytest.raises(CacheError, match=r"clip 'clip004' has no audio track 1 \(it has 1 track: 0"):
        cache.get("clip004", track=1)
    assert [f.clip_id for f in cache.failures()] == ["bad"]
    assert cache.summary()["multi_track_clips"] == 1


def test_splits_and_batches(tmp_path):
    w = CacheWriter.create_or_open(tmp_path / "c.zarr", new_meta(VIDEO, AUDIO))
    w.write_part([_record(i, "train") for i in range(4)])
    w.write_part([_record(i, "test") for i in range(4, 7)])
    cache = FeatureCache.open(tmp_path / "c.zarr")
    assert cache.splits() == {"test": 3, "train": 4}
    batches = list(cache.iter_split("train", batch_size=3))
    assert [len(b) for b in batches] == [3, 1]
    assert [f.clip_id for b in batches for f in b] == [f"clip{i:03d}" for i in range(4)]
    with pytest.raises(CacheError, match=r"available: test \(3\), train \(4\)"):
        cache.require_split("music-test")


def test_refuses_other_encoders_and_other_schema(tmp_path):
    path = tmp_path / "c.zarr"
    CacheWriter.create_or_open(path, new_meta(VIDEO, AUDIO)).write_part([_record(0)])
    other = EncoderInfo("clip-vit-b32", 768, checksum="abc")
    with pytest.raises(CacheError, match="clip-vit-b32"):
        CacheWriter.create_or_open(path, new_meta(other, AUDIO))
    meta_file = path / "zarr.json"
    doc = json.loads(meta_file.read_text())
    doc["attributes"]["scav"]["schema_version"] = 99
    meta_file.write_text(json.dumps(doc))
    with pytest.raises(CacheError, match="schema version 99"):
        FeatureCache.open(path)


def test_not_a_cache(tmp_path):
    with pytest.raises(CacheError, match="no cache"):
        FeatureCache.open(tmp_path / "missing.zarr")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(CacheError, match="not a SCAV cache"):
        FeatureCache.open(tmp_path / "junk")
    with pytest.raises(CacheError, match="not empty"):
        CacheWriter.create_or_open(tmp_path / "junk", new_meta(VIDEO, AUDIO))


def test_unfinished_part_is_invisible_and_cleaned(tmp_path):
    """A part killed mid-write stays in .staging: readers never see it."""
    path = tmp_path / "c.zarr"
    with CacheWriter.create_or_open(path, new_meta(VIDEO, AUDIO)) as w:
        w.write_part([_record(0)])
    committed = next(p for p in (path / "parts").iterdir() if p.is_dir())
    shutil.copytree(committed, path / ".staging" / "p-99999999999999999999-deadbeef")  # an old-style leftover
    assert len(FeatureCache.open(path)) == 1
    with CacheWriter.create_or_open(path, new_meta(VIDEO, AUDIO)) as w:
        assert w.done_clip_ids() == {"clip000"}
    assert not any((path / ".staging").iterdir())


def test_duplicate_clip_ids_are_served_once(tmp_path):
    path = tmp_path / "c.zarr"
    w = CacheWriter.create_or_open(path, new_meta(VIDEO, AUDIO))
    w.write_part([_record(0), _record(1)])
    w.write_part([_record(1)])
    cache = FeatureCache.open(path)
    assert [c.clip_id for c in cache.clips()] == ["clip000", "clip001"]
