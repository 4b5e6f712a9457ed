"""A part filled in pieces, with failed clips dropped half-way, is the part written whole, byte for byte (issue 22).

The whole-part path is the writer every earlier cache was made with: one
``create_array`` of the part's row count and one write of the concatenated
rows (its bytes were compared with the code before the builder when it was
introduced). A long clip's memory is bounded by one write unit per array.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from scav.core.cache import CacheWriter, ClipRecord, FeatureCache, new_meta
from scav.core.schema import PART_PREFIX, AudioTrack, CacheError, CacheLayout, ClipInfo, EncoderInfo, Failure

VIDEO_INFO = EncoderInfo(name="pixels", dim=8, stand_in=True)
AUDIO_INFO = EncoderInfo(name="fbank", dim=5, stand_in=True, steps_per_second=6.25)


def _record(rng, i: int, n_video: int, n_audio: int, tracks: int = 2) -> ClipRecord:
    info = ClipInfo(clip_id=f"c{i:03d}", split="s", fps=25.0, duration=n_video / 25, n_video=n_video, path=f"m{i}.mp4",
                    tracks=[AudioTrack(index=j, n_steps=n_audio + j) for j in range(tracks)])
    return ClipRecord(info, rng.standard_normal((n_video, 8)).astype(np.float32), np.arange(n_video) / 25.0,
                      [rng.standard_normal((n_audio + j, 5)).astype(np.float32) for j in range(tracks)])


# parts smaller than a unit, a part spanning several units, a single clip of many units, track counts that vary
SHAPES = [[(10, 7, 2), (30, 9, 1)], [(200, 50, 2), (5, 3, 2), (131, 70, 3)], [(64, 64, 1)], [(700, 260, 2)]]


def _records(seed: int = 0) -> list[list[ClipRecord]]:
    rng = np.random.default_rng(seed)
    k = iter(range(1000))
    return [[_record(rng, next(k), *s) for s in part] for part in SHAPES]


def _pieces(rng, x: np.ndarray):
    i = 0
    while i < len(x):
        n = int(rng.integers(1, 90))
        yield i, x[i : i + n]
        i += n


def _write(path: Path, layout: CacheLayout, pieces: bool) -> dict[str, str]:
    """Every file of every part, named by part order, -> md5."""
    rng = np.random.default_rng(1)
    with CacheWriter.create_or_open(path, new_meta(VIDEO_INFO, AUDIO_INFO, layout)) as w:
        for k, records in enumerate(_records()):
            failures = [Failure(f"bad{k}", "decode-video", "broken", "x.mp4")]
            if not pieces:
                p = w.write_part(records, failures)
            else:
                part = w.open_part()
                for r in records:
                    # a clip that fails after some of its rows (up to 3 units) reached disk, then the real one
                    bad = part.clip()
                    for _, piece in _pieces(rng, rng.standard_normal((int(rng.integers(1, 200)), 8))):
                        bad.video(piece, np.zeros(len(piece)))
                    bad.audio(0, rng.standard_normal((int(rng.integers(0, 150)), 5)))
                    bad.abort()
                    rows = part.clip()
                    for i, piece in _pieces(rng, r.video):
                        rows.video(piece, r.video_times[i : i + len(piece)])
                    for j, a in enumerate(r.audio):
                        for _, piece in _pieces(rng, a):
                            rows.audio(j, piece)
                    assert rows.rows("video") == len(r.video) and rows.rows("audio", len(r.audio) - 1) == len(r.audio[-1])
                    rows.end(r.info)
                p = part.commit(failures)
            p.rename(p.with_name(f"{PART_PREFIX}{k:020d}"))  # the same names in both caches
    return {str(f.relative_to(path)): hashlib.md5(f.read_bytes()).hexdigest()
            for f in sorted((path / "parts").rglob("*")) if f.is_file()}


@pytest.mark.parametrize("layout", [CacheLayout(chunk_rows=64), CacheLayout(chunk_rows=32, shard_rows=128),
                                    CacheLayout(chunk_rows=50, checksums=False, compressor="zstd")],
                         ids=["chunks", "shards", "zstd-no-crc"])
def test_pieces_and_aborted_clips_give_the_whole_part_byte_for_byte(tmp_path, layout):
    whole = _write(tmp_path / "whole.zarr", layout, pieces=False)
    pieces = _write(tmp_path / "pieces.zarr", layout, pieces=True)
    assert len(whole) > 40 and pieces == whole
    cache = FeatureCache.open(tmp_path / "pieces.zarr")
    for r in (r for part in _records() for r in part):
        for j in range(len(r.audio)):
            got = cache.get(r.info.clip_id, track=j)
            np.testing.assert_array_equal(got.video, r.video.astype(np.float16))
            np.testing.assert_array_equal(got.audio, r.audio[j].astype(np.float16))
            np.testing.assert_array_equal(got.video_times, r.video_times)
    assert {f.clip_id for f in cache.failures()} == {"bad0", "bad1", "bad2", "bad3"}


def test_a_part_of_only_failed_clips_has_no_arrays(tmp_path):
    rng = np.random.default_rng(0)
    with CacheWriter.create_or_open(tmp_path / "c.zarr", new_meta(VIDEO_INFO, AUDIO_INFO, CacheLayout(chunk_rows=16))) as w:
        part = w.open_part()
        bad = part.clip()
        bad.video(rng.standard_normal((100, 8)), np.zeros(100))  # several units on disk
        bad.abort()
        p = part.commit([Failure("bad", "encode", "no", "x.mp4")])
    assert sorted(q.name for q in p.iterdir()) == ["zarr.json"]
    assert [f.clip_id for f in FeatureCache.open(tmp_path / "c.zarr").failures()] == ["bad"]


def _peak_appending(path: Path, pieces: int) -> int:
    """Peak traced memory while one clip's audio (100-row pieces of 2,048 floats, one buffer reused) is appended."""
    rng = np.random.default_rng(0)
    piece = rng.standard_normal((100, 2048)).astype(np.float32)
    info = EncoderInfo(name="fbank", dim=2048, stand_in=True, steps_per_second=6.25)
    with CacheWriter.create_or_open(path, new_meta(VIDEO_INFO, info)) as w:
        part = w.open_part()
        rows = part.clip()
        rows.video(rng.standard_normal((3, 8)), np.arange(3.0))
        tracemalloc.start()
        for _ in range(pieces):
            rows.audio(0, piece)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.end(ClipInfo(clip_id="long", split="s", fps=1.0, duration=3.0, n_video=3,
                          tracks=[AudioTrack(index=0, n_steps=100 * pieces)]))
        part.commit()
    got = FeatureCache.open(path).get("long").audio
    np.testing.assert_array_equal(got, np.tile(piece, (pieces, 1)).astype(np.float16))
    return peak


def test_a_long_clip_holds_a_few_units_not_its_duration(tmp_path):
    """4,000 then 16,000 rows of 2,048 features (16 and 66 MB in float16): the same peak, a few 1,024-row
    units (pending rows, their concatenation, Zarr's encoded chunk), not the clip."""
    unit = 1024 * 2048 * 2
    short, long = _peak_appending(tmp_path / "a.zarr", 40), _peak_appending(tmp_path / "b.zarr", 160)
    assert long < 4 * unit and long < short + unit / 2, (short / 2**20, long / 2**20)


def test_misuse_is_refused(tmp_path):
    with CacheWriter.create_or_open(tmp_path / "c.zarr", new_meta(VIDEO_INFO, AUDIO_INFO)) as w:
        part = w.open_part()
        rows = part.clip()
        rows.video(np.zeros((2, 8)), np.zeros(2))
        with pytest.raises(CacheError, match="different feature sizes"):
            rows.video(np.zeros((2, 9)), np.zeros(2))
        with pytest.raises(CacheError, match="frame times"):
            rows.video(np.zeros((2, 8)), np.zeros(3))
        with pytest.raises(CacheError, match="neither ended nor aborted"):
            part.clip()
        with pytest.raises(CacheError, match="neither ended nor aborted"):
            part.commit()
        rows.abort()
        assert part.commit() is None
        assert not [p for p in (tmp_path / "c.zarr" / "parts").iterdir() if p.is_dir()]
