"""Encoders over many clips at once (``encode_many``) give each clip's features as if it ran alone.

CLIP: frames of several clips packed into ``frame_batch``-frame batches. On CPU
the packed result equals ``encode`` per clip within float32 rounding (matrix
kernels round differently for other batch shapes: measured max |diff| ~1e-6,
often exactly 0); unpacked (the CPU default) it is bit-identical.
BEATs: only clips of equal sample count share a batch; equal to each clip alone
within float32 rounding (bit-identical for the tiny model here; a full-size
iter3 on CPU measured max |diff| 4e-6, bench/bench_encoders.py prints it).
"""

from __future__ import annotations

import numpy as np
import pytest

from scav.extract.batching import group_equal_lengths, pack_frames
from scav.extract.encoders import EncodeError, audio_steps, build_audio_encoder, build_video_encoder
from tiny_models import TINY_CLIP_HIDDEN, make_tiny_beats_ckpt, make_tiny_clip_dir

RNG = np.random.default_rng(3)


# ---------------------------------------------------------------- pure batching rules


@pytest.mark.parametrize("lengths,fb", [([5, 0, 3, 9, 1], 4), ([1] * 7, 3), ([10], 10), ([10], 1), ([], 8), ([2, 3], 100)])
def test_pack_frames_covers_every_frame_once_in_order(lengths, fb):
    batches = pack_frames(lengths, fb)
    sizes = [sum(b - a for _, a, b in batch) for batch in batches]
    assert all(s == fb for s in sizes[:-1]) and all(0 < s <= fb for s in sizes)
    flat = [(i, f) for batch in batches for i, a, b in batch for f in range(a, b)]  # every frame, in order
    assert flat == [(i, f) for i, n in enumerate(lengths) for f in range(n)]
    assert sum(sizes) == sum(lengths)


def test_group_equal_lengths_never_mixes_lengths():
    lengths = [160000, 48000, 160000, 160000, 48001, 160000, 48000]
    groups = group_equal_lengths(lengths, max_batch=3)
    assert groups == [[0, 2, 3], [5], [1, 6], [4]]
    for g in groups:
        assert len({lengths[i] for i in g}) == 1 and len(g) <= 3
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    with pytest.raises(ValueError):
        group_equal_lengths(lengths, 0)
    with pytest.raises(ValueError):
        pack_frames(lengths, 0)


# ---------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def clip_dir(tiny_dir):
    return make_tiny_clip_dir(tiny_dir)


def clips_of_mixed_sizes() -> list[np.ndarray]:
    shapes = [(7, 24, 32), (1, 40, 30), (12, 32, 32), (5, 17, 61), (3, 360, 640)]  # (T, H, W)
    return [RNG.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]


@pytest.mark.parametrize("preprocess", ["pil", "tensor"])
@pytest.mark.parametrize("frame_batch", [4, 10, 1024])
def test_clip_packed_equals_each_clip_alone(clip_dir, preprocess, frame_batch):
    enc = build_video_encoder("clip-vit-b32", clip_dir, preprocess=preprocess, frame_batch=frame_batch, pack=True)
    clips = clips_of_mixed_sizes()
    many = enc.encode_many(clips)
    assert len(many) == len(clips)
    worst = 0.0
    for c, out in zip(clips, many):
        alone = enc.encode(c)
        assert out.shape == alone.shape == (len(c), TINY_CLIP_HIDDEN) and out.dtype == np.float32
        np.testing.assert_allclose(out, alone, rtol=1e-5, atol=1e-6)  # float32 rounding, not a different result
        worst = max(worst, float(np.abs(out - alone).max()))
    assert worst < 1e-5


def test_clip_unpacked_is_bit_identical_and_the_cpu_default(clip_dir):
    enc = build_video_encoder("clip-vit-b32", clip_dir, preprocess="tensor")
    assert enc.pack is False and enc.frame_batch == 1024  # CPU: per-clip batches keep caches bit-identical
    clips = clips_of_mixed_sizes()
    for c, out in zip(clips, enc.encode_many(clips)):
        np.testing.assert_array_equal(out, enc.encode(c))


@pytest.mark.parametrize("pack", [True, False])
def test_clip_invalid_clip_fails_alone(clip_dir, pack):
    enc = build_video_encoder("clip-vit-b32", clip_dir, frame_batch=5, pack=pack)
    good = clips_of_mixed_sizes()[:2]
    bad = [np.zeros((0, 8, 8, 3), np.uint8), np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8, 3), np.float32)]
    out = enc.encode_many([good[0], bad[0], good[1], bad[1], bad[2]])
    assert [type(o).__name__ for o in out] == ["ndarray", "EncodeError", "ndarray", "EncodeError", "EncodeError"]
    assert all(o.stage == "encode" for o in out if isinstance(o, EncodeError))
    np.testing.assert_allclose(out[2], enc.encode(good[1]), rtol=1e-5, atol=1e-6)
    assert enc.encode_many([]) == []


def test_clip_frame_batch_counts_frames_across_clips(clip_dir, monkeypatch):
    enc = build_video_encoder("clip-vit-b32", clip_dir, frame_batch=8, pack=True)
    seen = []
    forward = enc._forward
    monkeypatch.setattr(enc, "_forward", lambda pix: seen.append(len(pix)) or forward(pix))
    clips = clips_of_mixed_sizes()  # 7 + 1 + 12 + 5 + 3 = 28 frames
    enc.encode_many(clips)
    assert seen == [8, 8, 8, 4]


def test_stand_ins_have_encode_many():
    frames = [RNG.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8), np.zeros((0, 4, 4, 3), np.uint8)]
    v = build_video_encoder("pixels")
    out = v.encode_many(frames)
    np.testing.assert_array_equal(out[0], v.encode(frames[0]))
    assert isinstance(out[1], EncodeError)
    a = build_audio_encoder("fbank")
    x = (0.1 * RNG.standard_normal(16000)).astype(np.float32)
    out = a.encode_many([x, np.zeros(100, np.float32)])
    np.testing.assert_array_equal(out[0], a.encode(x))
    assert isinstance(out[1], EncodeError)


# ---------------------------------------------------------------- BEATs


@pytest.fixture(scope="module")
def beats(tiny_dir):
    return build_audio_encoder("beats-iter3-as2m", make_tiny_beats_ckpt(tiny_dir), clip_batch=3)


def noise(n: int) -> np.ndarray:
    return (0.1 * RNG.standard_normal(n)).astype(np.float32)


def test_beats_equal_lengths_batched_equal_each_clip_alone(beats, monkeypatch):
    n = 16000 * 2
    clips = [noise(n) for _ in range(5)]
    calls = []
    forward = beats._forward
    monkeypatch.setattr(beats, "_forward", lambda wavs: calls.append([len(w) for w in wavs]) or forward(wavs))
    many = beats.encode_many(clips)
    assert calls == [[n] * 3, [n] * 2]  # batched, at most clip_batch
    for c, out in zip(clips, many):
        assert out.shape == (audio_steps(n), beats.info.dim)
        np.testing.assert_allclose(out, beats.encode(c), rtol=1e-5, atol=1e-5)  # float32 rounding at most


def test_beats_unequal_lengths_are_never_padded_together(beats, monkeypatch):
    lengths = [32000, 20000, 32000, 20001, 20000, 32000, 32000]
    clips = [noise(n) for n in lengths]
    calls = []
    forward = beats._forward
    monkeypatch.setattr(beats, "_forward", lambda wavs: calls.append([len(w) for w in wavs]) or forward(wavs))
    many = beats.encode_many(clips, clip_batch=8)
    assert all(len(set(c)) == 1 for c in calls)  # one length per batch
    assert sorted(map(tuple, calls)) == sorted([(32000,) * 4, (20000,) * 2, (20001,)])
    for c, out in zip(clips, many):
        np.testing.assert_allclose(out, beats.encode(c), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="equal length"):
        forward([noise(3000), noise(3001)])


def test_beats_short_clip_fails_alone(beats):
    good = noise(16000)
    out = beats.encode_many([good, np.zeros(100, np.float32), np.full(16000, np.nan, np.float32), good])
    assert isinstance(out[1], EncodeError) and "too short" in str(out[1])
    assert isinstance(out[2], EncodeError) and "NaN" in str(out[2])
    np.testing.assert_array_equal(out[0], out[3])
    np.testing.assert_allclose(out[0], beats.encode(good), rtol=1e-5, atol=1e-5)
    assert beats.clip_batch == 3
    assert "equal sample count" in beats.info.preprocessing["batching"]
