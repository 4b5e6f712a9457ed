"""The extraction runner on real generated media: counts, broken files, resume, append, parallel paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cache_factory import assert_same_contents, cache_contents

from scav.core.cache import FeatureCache
from scav.core.schema import CacheError, EncoderInfo
from scav.data_manifests.manifest import ManifestRow, write_manifest
from scav.data_manifests.media import AudioSpec, write_media
from scav.extract import runner
from scav.extract.encoders import audio_steps
from scav.extract.runner import EncoderSpec, ExtractConfig, run


@dataclass
class Media:
    name: str
    fps: float
    seconds: float  # video length
    sr: int
    channels: int
    audio_seconds: float | None = None  # default: same as video
    vfr: bool = False
    second_track: bool = False


MIXED = [
    Media("a24", 24, 0.5, 8000, 1),
    Media("b25", 25, 1.3, 44100, 2),
    Media("c30", 30, 2.0, 48000, 6),
    Media("d_vfr", 25, 1.5, 44100, 1, vfr=True),
    Media("e_long", 24, 12.0, 8000, 1),
    Media("f_two_tracks", 30, 1.0, 48000, 2, second_track=True),
    Media("g_short_audio", 25, 2.0, 44100, 1, audio_seconds=1.2),
]


def make_media(folder: Path, m: Media, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    if m.vfr:  # irregular gaps between 20 and 60 ms
        times = np.cumsum(np.r_[0.0, rng.uniform(0.02, 0.06, 200)])
        times = times[times < m.seconds]
    else:
        times = None
    n = len(times) if times is not None else int(round(m.seconds * m.fps))
    frames = rng.integers(0, 256, (n, 24, 32, 3), dtype=np.uint8)
    a_sec = m.audio_seconds or m.seconds
    tracks = [AudioSpec(rng.uniform(-0.5, 0.5, (m.channels, int(a_sec * m.sr))).astype(np.float32), m.sr, "eng")]
    if m.second_track:
        tracks.append(AudioSpec(rng.uniform(-0.5, 0.5, (1, int(a_sec * m.sr))).astype(np.float32), m.sr, "spa"))
    return write_media(folder / f"{m.name}.mp4", frames, fps=m.fps, audio=tracks,
                       frame_times=None if times is None else list(times))


def packet_frame_count(path: Path, lo: float, hi: float | None) -> int:
    """Independent count: video packets whose pts (from the container start) lies in [lo, hi)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        origin = (c.start_time or 0) / 1e6
        ts = [float(p.pts * s.time_base) - origin for p in c.demux(s) if p.pts is not None and p.size]
    return sum(1 for t in ts if t >= lo - 1e-6 and (hi is None or t < hi - 1e-6))


def expected_audio_steps(m: Media, lo: float, hi: float | None) -> int:
    """From the generated signal: samples of [lo, min(hi, end of audio)) at 16 kHz, then the steps rule."""
    a_end = int((m.audio_seconds or m.seconds) * m.sr) / m.sr
    end = a_end if hi is None else min(hi, a_end)
    return audio_steps(int(round((end - lo) * 16000)))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    for i, m in enumerate(MIXED):
        make_media(folder / "media", m, seed=i)
    rows = [ManifestRow(m.name, f"media/{m.name}.mp4", split="train", label=m.name[0]) for m in MIXED]
    # one ranged clip: a window inside the long file
    rows.append(ManifestRow("e_long_win", "media/e_long.mp4", start=3.0, end=7.5, split="train"))
    return folder, write_manifest(rows, folder / "m.csv")


def cfg_for(manifest, out, **kw):
    return ExtractConfig(manifest=Path(manifest), out=Path(out), progress=False, **kw)


def test_mixed_media_counts_match_container(mixed, tmp_path):
    folder, manifest = mixed
    summary = run(cfg_for(manifest, tmp_path / "f.zarr", part_clips=3))
    assert summary["extracted"] == len(MIXED) + 1 and summary["failed"] == 0, summary["failures"]
    cache = FeatureCache.open(tmp_path / "f.zarr")
    specs = {m.name: m for m in MIXED}
    for info in cache.clips():
        m = specs[info.clip_id.replace("_win", "")]
        lo, hi = (info.start or 0.0), info.end
        f = cache.get(info.clip_id)
        n_frames = packet_frame_count(folder / info.path, lo, hi)
        assert info.n_video == len(f.video) == len(f.video_times) == n_frames, info.clip_id
        assert np.all(np.diff(f.video_times) > 0) and f.video_times[0] >= lo - 1e-6
        assert info.n_audio == len(f.audio) == expected_audio_steps(m, lo, hi), info.clip_id
        assert [t.index for t in info.tracks] == ([0, 1] if m.second_track else [0])
        assert info.source == info.path and info.label == m.name[0] or info.clip_id.endswith("_win")
    two = cache.clips()[[c.clip_id for c in cache.clips()].index("f_two_tracks")]
    assert [t.language for t in two.tracks] == ["eng", "spa"]
    assert cache.get("f_two_tracks", track=1).audio.shape == cache.get("f_two_tracks").audio.shape


def test_features_are_the_encoders_output_for_that_clip(mixed, tmp_path):
    """Plumbing check: stored features == encoder(decode(file)) for the same clip, nothing swapped."""
    from scav.extract.decode import decode_clip
    from scav.extract.encoders import build_audio_encoder, build_video_encoder

    folder, manifest = mixed
    run(cfg_for(manifest, tmp_path / "f.zarr", part_clips=2, decode_threads=3, prefetch=3))
    cache = FeatureCache.open(tmp_path / "f.zarr")
    venc, aenc = build_video_encoder("pixels"), build_audio_encoder("fbank")
    for cid, (lo, hi) in {"b25": (None, None), "e_long_win": (3.0, 7.5)}.items():
        clip = decode_clip(folder / cache.info(cid).path, lo, hi)
        got = cache.get(cid)
        np.testing.assert_array_equal(got.video, venc.encode(clip.frames).astype(np.float16))
        np.testing.assert_array_equal(got.audio, aenc.encode(clip.audio[0].samples).astype(np.float16))
        np.testing.assert_array_equal(got.video_times, clip.frame_times)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    good = make_media(folder, Media("good", 25, 1.0, 16000, 1))
    make_media(folder, Media("good2", 30, 0.8, 44100, 2), seed=1)
    data = good.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (folder / "empty.mp4").write_bytes(b"")
    write_media(folder / "noaudio.mp4", np.zeros((10, 24, 32, 3), np.uint8), fps=25)
    write_media(folder / "novideo.mp4", None, audio=[AudioSpec(np.zeros((1, 16000), np.float32), 16000)])
    rows = [
        ManifestRow("good", "good.mp4", split="test"),
        ManifestRow("good2", "good2.mp4", split="test"),
        ManifestRow("missing", "nope.mp4", split="test"),
        ManifestRow("truncated", "truncated.mp4", split="test"),
        ManifestRow("corrupt", "corrupt.mp4", split="test"),
        ManifestRow("empty", "empty.mp4", split="test"),
        ManifestRow("noaudio", "noaudio.mp4", split="test"),
        ManifestRow("novideo", "novideo.mp4", split="test"),
        ManifestRow("outside", "good.mp4", start=50.0, end=60.0, split="test"),
    ]
    return folder, write_manifest(rows, folder / "m.csv")


def test_broken_files_are_reported_and_the_rest_extracted(broken, tmp_path, caplog):
    folder, manifest = broken
    out = tmp_path / "f.zarr"
    summary = run(cfg_for(manifest, out, part_clips=4))
    stages = {f["clip_id"]: f["stage"] for f in summary["failures"]}
    assert summary["extracted"] == 2, summary["failures"]
    assert stages["missing"] == "open" and stages["empty"] == "open" and stages["corrupt"] == "open"
    assert stages["noaudio"] == "decode-audio" and stages["novideo"] == "decode-video"
    assert stages["outside"] == "range"
    # a file cut to a third: either unreadable or decodes fewer frames than the intact file
    cache = FeatureCache.open(out)
    if "truncated" in cache:
        assert cache.info("truncated").n_video < cache.info("good").n_video
    else:
        assert "truncated" in stages
    assert all(f["reason"] for f in summary["failures"])
    assert "Traceback" not in caplog.text
    assert {f.clip_id for f in cache.failures()} == set(stages)
    # failures are committed: a re-run does nothing, unless asked to retry them
    again = run(cfg_for(manifest, out))
    assert again["extracted"] == 0 and again["already_present"] == 9 and again["failed"] == 0
    (folder / "nope.mp4").write_bytes((folder / "good.mp4").read_bytes())
    try:
        retry = run(cfg_for(manifest, out, retry_failed=True))
    finally:
        (folder / "nope.mp4").unlink()
    assert retry["extracted"] == 1 and "missing" in FeatureCache.open(out)
    assert "missing" not in {f.clip_id for f in FeatureCache.open(out).failures()}


def test_resume_append_split_and_no_duplicates(mixed, tmp_path):
    folder, manifest = mixed
    out = tmp_path / "f.zarr"
    first = run(cfg_for(manifest, out, split="train", as_split="train"))
    again = run(cfg_for(manifest, out))
    assert again["extracted"] == 0 and again["already_present"] == first["extracted"]
    # a second split: same files, new clip ids
    rows = [ManifestRow(f"val_{m.name}", str(folder / "media" / f"{m.name}.mp4"), split="val") for m in MIXED[:3]]
    summary = run(ExtractConfig(manifest=None, rows=tuple(rows), out=out, progress=False))
    assert summary["extracted"] == 3
    cache = FeatureCache.open(out)
    assert cache.splits() == {"train": len(MIXED) + 1, "val": 3}
    ids = [c.clip_id for p in cache.parts for c in p.clips]
    assert len(ids) == len(set(ids))
    np.testing.assert_array_equal(cache.get("val_a24").video, cache.get("a24").video)


def test_split_filter_names_available_splits(mixed, tmp_path):
    _, manifest = mixed
    with pytest.raises(ValueError, match="train"):
        run(cfg_for(manifest, tmp_path / "f.zarr", split="nope"))


class _FakeEnc:
    def __init__(self, name, dim, fail_on_len=None):
        self.info = EncoderInfo(name, dim, stand_in=True)
        self.dim, self.fail_on_len = dim, fail_on_len

    def encode(self, x):
        if self.fail_on_len is not None and len(x) == self.fail_on_len:
            raise RuntimeError("boom")
        steps = len(x) if x.ndim == 4 else max(1, len(x) // 2560)
        return np.full((steps, self.dim), float(len(x) % 7), np.float32)


def test_encoder_mismatch_is_refused(mixed, tmp_path, monkeypatch):
    _, manifest = mixed
    out = tmp_path / "f.zarr"
    rows = tuple(r for r in __import__("scav.data_manifests.manifest", fromlist=["x"]).load_manifest(manifest)[:1])
    run(ExtractConfig(manifest=manifest, rows=rows, out=out, progress=False))
    monkeypatch.setattr(runner, "build_encoders", lambda spec, device="cpu": (_FakeEnc("other", 8), _FakeEnc("fbank", 4)))
    with pytest.raises(CacheError, match="other"):
        run(cfg_for(manifest, out))


def test_a_failing_encode_is_a_failure_row(mixed, tmp_path, monkeypatch):
    _, manifest = mixed
    n_frames_a24 = 12  # 0.5 s at 24 fps: the fake video encoder fails on this clip only
    monkeypatch.setattr(
        runner, "build_encoders",
        lambda spec, device="cpu": (_FakeEnc("v", 8, fail_on_len=n_frames_a24), _FakeEnc("a", 4)),
    )
    summary = run(cfg_for(manifest, tmp_path / "f.zarr"))
    assert [(f["clip_id"], f["stage"]) for f in summary["failures"]] == [("a24", "encode")]
    assert "boom" in summary["failures"][0]["reason"]
    assert summary["extracted"] == len(MIXED)




def test_dask_scheduler_path_matches_in_process(mixed, tmp_path):
    from distributed import LocalCluster

    _, manifest = mixed
    run(cfg_for(manifest, tmp_path / "ref.zarr"))
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=2, dashboard_address=None) as cluster:
        summary = run(cfg_for(manifest, tmp_path / "dask.zarr", scheduler=cluster.scheduler_address, shards=3, part_clips=2))
    assert summary["extracted"] == len(MIXED) + 1
    assert_same_contents(cache_contents(tmp_path / "ref.zarr"), cache_contents(tmp_path / "dask.zarr"))
    parts = FeatureCache.open(tmp_path / "dask.zarr").parts
    assert len(parts) >= 3  # every shard wrote its own parts


@pytest.mark.slow
def test_two_worker_processes_match_in_process(mixed, tmp_path):
    _, manifest = mixed
    run(cfg_for(manifest, tmp_path / "ref.zarr"))
    summary = run(cfg_for(manifest, tmp_path / "mp.zarr", devices=("cpu", "cpu"), part_clips=2))
    assert summary["extracted"] == len(MIXED) + 1
    assert_same_contents(cache_contents(tmp_path / "ref.zarr"), cache_contents(tmp_path / "mp.zarr"))


def test_shards_are_disjoint_and_cover():
    rows = [ManifestRow(f"c{i}", "x.mp4") for i in range(11)]
    shards = runner._shards(rows, 4)
    ids = [r.clip_id for s in shards for r in s]
    assert sorted(ids) == sorted(r.clip_id for r in rows) and len(ids) == len(set(ids))
    assert runner._shards(rows, 4) == shards  # deterministic


def test_window_past_the_end_stores_the_end_decoded_and_all_failed_is_said(mixed, tmp_path):
    folder, _ = mixed
    rows = (ManifestRow("late", "media/b25.mp4", start=0.5, end=9.0, split="train"),
            ManifestRow("inside", "media/c30.mp4", start=0.5, end=1.5, split="train"))
    s = run(ExtractConfig(manifest=None, rows=rows, media_root=folder, out=tmp_path / "f.zarr", progress=False))
    assert s["extracted"] == 2 and s["clipped_to_file_end"] == 1 and not s["all_failed"]
    cache = FeatureCache.open(tmp_path / "f.zarr")
    late, inside = cache.info("late"), cache.info("inside")
    assert late.start == 0.5 and late.end == pytest.approx(1.3, abs=0.05)  # b25 is 1.3 s long: what was decoded
    assert late.end == pytest.approx(late.start + late.duration)
    assert (inside.start, inside.end) == (0.5, 1.5)  # a window inside the file keeps what was asked
    bad = (ManifestRow("x", "missing.mp4", split="train"), ManifestRow("y", "missing2.mp4", split="train"))
    s = run(ExtractConfig(manifest=None, rows=bad, media_root=folder, out=tmp_path / "g.zarr", progress=False))
    assert s["all_failed"] and s["extracted"] == 0 and s["failed"] == 2
