"""HDF5 exchange: bit-exact round trip, validation errors, minimal external layout, dedupe."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from scav.core.cache import CacheWriter, ClipRecord, FeatureCache, new_meta
from scav.core.schema import AudioTrack, CacheError, ClipInfo, EncoderInfo, Failure
from scav.extract.cli import main
from scav.core.hdf5 import export_h5, import_h5

VIDEO = EncoderInfo("pixels", 6, stand_in=True)
AUDIO = EncoderInfo("fbank", 4, stand_in=True)


def make_cache(path, n=5, seed=0):
    """A small cache written through CacheWriter: mixed lengths, two splits, one 2-track clip, a failure."""
    rng = np.random.default_rng(seed)
    w = CacheWriter.create_or_open(path, new_meta(VIDEO, AUDIO))
    recs = []
    for i in range(n):
        t, s = 3 + i, 1 + i % 3
        audio = [rng.standard_normal((s, 4)).astype(np.float16)]
        if i == 2:
            audio.append(rng.standard_normal((s + 1, 4)).astype(np.float16))
        info = ClipInfo(f"c/{i}%" if i == 4 else f"c{i}", "train" if i < 3 else "test", label=f"l{i}",
                        source=f"s{i}", path=f"v{i}.mp4", start=None if i else 1.5, end=None if i else 4.0,
                        fps=25.0, duration=t / 25, n_video=t,
                        tracks=[AudioTrack(j, "eng" if j else None, len(a)) for j, a in enumerate(audio)])
        recs.append(ClipRecord(info, rng.standard_normal((t, 6)).astype(np.float16),
                               np.arange(t) / 25 + 0.01 * i, audio))
    w.write_part(recs[:3], [Failure("bad", "open", "file not found", "bad.mp4")])
    w.write_part(recs[3:])
    return path


def assert_caches_equal(a, b, split=None):
    ca, cb = FeatureCache.open(a), FeatureCache.open(b)
    assert ca.meta == cb.meta
    ia = {c.clip_id: c for c in ca.clips(split)}
    ib = {c.clip_id: c for c in cb.clips()}
    assert ia == ib
    for cid, info in ia.items():
        for j in range(len(info.tracks)):
            fa, fb = ca.get(cid, track=j), cb.get(cid, track=j)
            assert fa.video.dtype == fb.video.dtype == np.float16
            assert fa.video.tobytes() == fb.video.tobytes() and fa.audio.tobytes() == fb.audio.tobytes()
            assert fa.video_times.tobytes() == fb.video_times.tobytes()


def test_round_trip_is_bit_exact(tmp_path):
    src = make_cache(tmp_path / "a.zarr")
    assert export_h5(src, tmp_path / "a.h5") == 5
    res = import_h5(tmp_path / "a.h5", tmp_path / "b.zarr")
    assert res == {"imported": 5, "skipped": 0}
    assert_caches_equal(src, tmp_path / "b.zarr")
    # importing again dedupes by clip_id
    assert import_h5(tmp_path / "a.h5", tmp_path / "b.zarr") == {"imported": 0, "skipped": 5}
    assert len(FeatureCache.open(tmp_path / "b.zarr")) == 5


def test_cli_export_one_split_and_import(tmp_path):
    src = make_cache(tmp_path / "a.zarr")
    for args in (["export", str(src), str(tmp_path / "t.h5"), "--split", "test"],
                 ["import", str(tmp_path / "t.h5"), "--out", str(tmp_path / "b.zarr")]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code in (0, None)
    assert FeatureCache.open(tmp_path / "b.zarr").splits() == {"test": 2}
    assert_caches_equal(src, tmp_path / "b.zarr", split="test")


def test_minimal_external_layout(tmp_path):
    rng = np.random.default_rng(1)
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f.attrs["video_encoder"], f.attrs["audio_encoder"] = "my-video", "my-audio"
        for i in range(3):
            g = f.create_group(f"clips/x{i}")
            g.create_dataset("video", data=rng.standard_normal((4 + i, 5)).astype(np.float32))
            g.create_dataset("audio", data=rng.standard_normal((2, 3)).astype(np.float32))
            g.attrs["split"] = "ext"
            g.attrs["fps"] = 10.0
    import_h5(tmp_path / "ext.h5", tmp_path / "c.zarr")
    c = FeatureCache.open(tmp_path / "c.zarr")
    assert c.meta.video.name == "my-video" and c.meta.video.dim == 5 and c.meta.audio.dim == 3
    f1 = c.get("x1")
    assert f1.video.shape == (5, 5) and f1.info.n_video == 5 and f1.info.n_audio == 2
    np.testing.assert_allclose(f1.video_times, np.arange(5) / 10.0)
    # the same names into a cache of other encoders: refused
    make_cache(tmp_path / "a.zarr")
    with pytest.raises(CacheError, match="my-video"):
        import_h5(tmp_path / "ext.h5", tmp_path / "a.zarr")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda g: g.__delitem__("video"), "missing dataset 'video'"),
        (lambda g: g.__delitem__("audio"), "missing dataset or group 'audio'"),
        (lambda g: g.attrs.__delitem__("split"), "missing attribute 'split'"),
        (lambda g: (g.__delitem__("video"), g.create_dataset("video", data=np.zeros((4, 7), np.float16))),
         "size 7"),
        (lambda g: (g.__delitem__("video_times"), g.create_dataset("video_times", data=np.zeros(2))),
         "video_times"),
    ],
)
def test_invalid_files_give_clear_errors(tmp_path, damage, message):
    src = make_cache(tmp_path / "a.zarr")
    export_h5(src, tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        damage(f["clips/c1"])
    with pytest.raises(CacheError, match=message):
        import_h5(tmp_path / "a.h5", tmp_path / "b.zarr")
    assert not (tmp_path / "b.zarr").exists()  # validated before anything is written


def test_track_language_and_original_are_attributes(tmp_path):
    """Issue 23: audio/t<j> carries the track's language and original flag as attributes, and a file
    without the info JSON (made elsewhere) is read back with them."""
    import h5py

    src = make_cache(tmp_path / "a.zarr")
    export_h5(src, tmp_path / "a.h5")
    fc = FeatureCache.open(src)
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        for name in f["clips"]:
            info = fc.info(f["clips"][name].attrs["clip_id"])
            for j, t in enumerate(info.tracks):
                ds = f["clips"][name]["audio"][f"t{j}"]
                assert ds.attrs["language"] == (t.language or "") and bool(ds.attrs["original"]) == t.original
            if "t1" in f["clips"][name]["audio"]:
                f["clips"][name]["audio"]["t1"].attrs["original"] = 1
            del f["clips"][name].attrs["info"]
    import_h5(tmp_path / "a.h5", tmp_path / "b.zarr")
    two = [c for c in FeatureCache.open(tmp_path / "b.zarr").clips() if len(c.tracks) == 2]
    assert len(two) == 1
    assert [t.language for t in two[0].tracks] == [None, "eng"] and [t.original for t in two[0].tracks] == [False, True]
