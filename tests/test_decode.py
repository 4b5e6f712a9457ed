"""decode_clip against independent counts (PyAV demux packets), known content, and bad files."""

from __future__ import annotations

import numpy as np
import pytest

from scav.data_manifests.media import AudioSpec, write_media
from scav.extract.decode import DecodeError, decode_clip

H, W = 24, 32
VFR_TIMES = [0.48, 0.5, 0.6, 0.65, 0.9, 1.0, 1.1, 1.3, 1.31, 1.5, 1.9]


def code(k: int) -> np.ndarray:
    """RGB colour of frame k (3 base-8 digits, 28 levels apart): identifiable after lossy H.264."""
    return 16 + 28 * np.array([k % 8, (k // 8) % 8, k // 64])


def coded_frames(n: int) -> np.ndarray:
    return np.stack([np.broadcast_to(code(k), (H, W, 3)).astype(np.uint8) for k in range(n)])


def frame_ids(frames: np.ndarray, n: int) -> list[int]:
    """Index of each decoded frame, by nearest colour among n written frames."""
    codes = np.stack([code(k) for k in range(n)]).astype(float)  # (n, 3)
    means = frames.reshape(len(frames), -1, 3).mean(1)  # (T, 3)
    return [int(np.argmin(np.abs(codes - m).sum(1))) for m in means]


def sine(freq: float, sr: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return np.repeat((0.4 * np.sin(2 * np.pi * freq * t))[None], channels, 0).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


def packet_times(path, lo=-np.inf, hi=np.inf) -> list[float]:
    """Independent count: demux (no decoding) the video packets, keep pts in [lo, hi)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        origin = (c.start_time or 0) / 1e6
        ts = sorted(float(p.pts * s.time_base) - origin for p in c.demux(s) if p.pts is not None)
    return [t for t in ts if lo - 1e-6 <= t < hi - 1e-6]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    files = {}
    for fps, seconds in [(24, 1.5), (25, 2.0), (30, 1.0), (30000 / 1001, 1.0), (25, 0.5), (24, 12.0)]:
        n = int(round(fps * seconds))
        files[f"cfr{fps:.2f}-{seconds}"] = (
            write_media(d / f"cfr{fps:.2f}-{seconds}.mp4", coded_frames(n), fps, audio=[AudioSpec(sine(440, 16000, seconds), 16000)]),
            n,
        )
    # variable frame rate, video starting 0.48 s after the audio
    files["vfr"] = (
        write_media(d / "vfr.mp4", coded_frames(len(VFR_TIMES)), 25, audio=[AudioSpec(sine(440, 44100, 2.0), 44100)], frame_times=VFR_TIMES),
        len(VFR_TIMES),
    )
    return files


@pytest.mark.parametrize("key", ["cfr24.00-1.5", "cfr25.00-2.0", "cfr30.00-1.0", "cfr29.97-1.0", "cfr25.00-0.5", "cfr24.00-12.0", "vfr"])
def test_whole_file_frame_count_matches_container(media, key):
    import av

    path, n_written = media[key]
    clip = decode_clip(path, None, None)
    with av.open(str(path)) as c:
        n_decoded = len(list(c.decode(video=0)))
    assert len(clip.frames) == n_decoded == len(packet_times(path)) == n_written
    assert clip.frames.shape[1:] == (H, W, 3) and clip.frames.dtype == np.uint8
    np.testing.assert_allclose(clip.frame_times, packet_times(path), atol=1e-9)
    assert frame_ids(clip.frames, n_written) == list(range(n_written))


@pytest.mark.parametrize("key,lo,hi", [("cfr25.00-2.0", 0.5, 1.2), ("cfr30.00-1.0", 0.1, 0.9), ("cfr29.97-1.0", 1 / 3, 2 / 3), ("vfr", 0.55, 1.31), ("vfr", 1.0, 5.0), ("cfr24.00-12.0", 9.7, 11.4)])
def test_range_selects_exactly_frames_with_pts_inside(media, key, lo, hi):
    path, n = media[key]
    clip = decode_clip(path, lo, hi)
    expected = packet_times(path, lo, hi)
    assert len(clip.frames) == len(expected) > 0
    np.testing.assert_allclose(clip.frame_times, expected, atol=1e-9)
    # the pixels are the frames at those times (seeking did not shift the content)
    all_times = packet_times(path)
    assert frame_ids(clip.frames, n) == [all_times.index(t) for t in expected]


def test_range_end_past_file_is_clipped_and_vfr_times_keep_offset(media):
    path, _ = media["vfr"]
    clip = decode_clip(path, 1.0, 5.0)
    assert clip.duration == pytest.approx(1.0)  # container ends at 2.0 s
    assert clip.audio[0].samples.shape == (16000,)
    whole = decode_clip(path)
    assert whole.frame_times[0] == pytest.approx(0.48)  # pts, not re-based to 0


def test_fps_of_cfr_file_is_native(media):
    assert decode_clip(media["cfr24.00-1.5"][0]).fps == pytest.approx(24.0)
    assert decode_clip(media["cfr29.97-1.0"][0]).fps == pytest.approx(30000 / 1001, rel=1e-3)


def test_max_side_downscales(media):
    clip = decode_clip(media["cfr25.00-2.0"][0], 0, 0.2, max_side=16)
    assert clip.frames.shape == (5, 12, 16, 3)
    assert frame_ids(clip.frames, 50) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------ audio


@pytest.mark.parametrize("sr", [8000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_audio_resampled_to_16k_mono(tmp_path, sr, channels):
    seconds = 1.0
    path = write_media(tmp_path / "a.mp4", coded_frames(10), 10, audio=[AudioSpec(sine(440, sr, seconds, channels), sr)])
    clip = decode_clip(path)
    (track,) = clip.audio
    assert track.samples.dtype == np.float32 and track.samples.ndim == 1
    assert len(track.samples) == int(seconds * 16000)  # nominal length, not the padded decode
    assert np.abs(track.samples).max() <= 1.0
    assert abs(peak_hz(track.samples[1600:-1600]) - 440) < 16000 / 12800 * 2
    assert track.index == 0 and track.language is None


def test_audio_range_is_cut_by_sample_time(tmp_path):
    sr = 48000
    x = np.zeros((1, 2 * sr), np.float32)
    x[0, int(1.25 * sr)] = 0.9  # a click at 1.25 s
    path = write_media(tmp_path / "click.mp4", coded_frames(20), 10, audio=[AudioSpec(x, sr)])
    whole = decode_clip(path).audio[0].samples
    part = decode_clip(path, 1.0, 1.5).audio[0].samples
    assert len(whole) == 32000 and len(part) == 8000
    assert abs(int(np.argmax(np.abs(whole))) - 20000) <= 2
    assert abs(int(np.argmax(np.abs(part))) - 4000) <= 2  # 0.25 s into the range
    np.testing.assert_allclose(part[1000:7000], whole[17000:23000], atol=1e-3)


def test_each_audio_stream_is_its_own_track(tmp_path):
    path = write_media(
        tmp_path / "two.mp4",
        coded_frames(10),
        10,
        audio=[AudioSpec(sine(440, 16000, 1.0), 16000, "eng"), AudioSpec(sine(1000, 44100, 1.0, 2), 44100, "fra")],
    )
    clip = decode_clip(path)
    assert [(a.index, a.language) for a in clip.audio] == [(0, "eng"), (1, "fra")]
    assert abs(peak_hz(clip.audio[0].samples) - 440) < 3
    assert abs(peak_hz(clip.audio[1].samples) - 1000) < 3


def test_decord_defects_that_rule_it_out(tmp_path, media):
    """Measured reason for PyAV over decord 0.6.0 (see extract/decode.py)."""
    decord = pytest.importorskip("decord")
    path = write_media(
        tmp_path / "two.mp4",
        coded_frames(10),
        10,
        audio=[AudioSpec(sine(440, 16000, 1.0), 16000, "eng"), AudioSpec(sine(1000, 16000, 1.0), 16000, "fra")],
    )
    x = decord.AudioReader(str(path), sample_rate=16000, mono=True)[:].asnumpy()
    assert x.shape[0] == 1 and abs(peak_hz(x[0]) - 440) < 3  # the 1000 Hz track is unreachable
    assert len(decode_clip(path).audio) == 2

    vfr_path, _ = media["vfr"]
    vr = decord.VideoReader(str(vfr_path))
    assert vr.get_frame_timestamp(0)[0] == pytest.approx(0.0)  # real first pts is 0.48 s
    assert decode_clip(vfr_path).frame_times[0] == pytest.approx(VFR_TIMES[0])


# ------------------------------------------------------------------ bad files


def _stage(path, *args):
    with pytest.raises(DecodeError) as e:
        decode_clip(path, *args)
    assert e.value.reason
    return e.value.stage


def test_missing_and_empty_and_garbage(tmp_path):
    assert _stage(tmp_path / "nope.mp4") == "open"
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert _stage(tmp_path / "empty.mp4") == "open"
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    assert _stage(tmp_path / "junk.mp4") in ("open", "decode-video")


def test_truncated_file(tmp_path, media):
    data = media["cfr25.00-2.0"][0].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert _stage(cut) in ("open", "decode-video")


def test_truncated_faststart_file_is_not_silently_short(tmp_path, media):
    """moov at the front: the file opens, the demuxer just hits EOF half way; must not pass as whole."""
    import av

    src = media["cfr25.00-2.0"][0]
    fast = tmp_path / "fast.mp4"
    with av.open(str(src)) as i, av.open(str(fast), "w", options={"movflags": "faststart"}) as o:
        out = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for p in i.demux():
            if p.dts is not None:
                p.stream = out[p.stream.index]
                o.mux(p)
    assert len(decode_clip(fast).frames) == 50
    data = fast.read_bytes()
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    assert _stage(cut) in ("decode-video", "decode-audio")
    assert len(decode_clip(cut, 0.0, 0.4).frames) == 10  # the intact head still decodes


def test_missing_streams(tmp_path):
    video_only = write_media(tmp_path / "v.mp4", coded_frames(5), 10)
    audio_only = write_media(tmp_path / "a.mp4", None, audio=[AudioSpec(sine(440, 16000, 1.0), 16000)])
    with pytest.raises(DecodeError, match="no audio stream") as e:
        decode_clip(video_only)
    assert e.value.stage == "decode-audio"
    with pytest.raises(DecodeError, match="no video stream") as e:
        decode_clip(audio_only)
    assert e.value.stage == "decode-video"


def test_range_outside_file(media):
    path, _ = media["cfr30.00-1.0"]
    assert _stage(path, 5.0, 6.0) == "range"
    assert _stage(path, 0.5, 0.5) == "range"
    assert _stage(path, -1.0, 0.5) == "range"
    assert _stage(path, 0.51, 0.52) == "range"  # no frame pts in a 10 ms window between frames
