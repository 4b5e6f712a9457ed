"""Audio encoders over a clip given in pieces (``encode_chunks``): fbank exactly as over the whole
track; BEATs window by window on step boundaries, whole (bit for bit as before) when the clip fits."""

from __future__ import annotations

import numpy as np
import pytest
from scav.extract.encoders import EncodeError, audio_steps, build_audio_encoder
from scav.extract.encoders.beats import BEATS_WINDOW_STEPS
from scav.extract.encoders.fbank import SampleBuffer, fbank_features, fbank_step_blocks
from tiny_models import make_tiny_beats_ckpt

RNG = np.random.default_rng(22)


def noise(n: int) -> np.ndarray:
    return (0.2 * RNG.standard_normal(n)).astype(np.float32)


def pieces(x: np.ndarray, sizes) -> list[np.ndarray]:
    """x cut into consecutive pieces of the given sizes (cycled), the last one whatever is left."""
    out, a, k = [], 0, 0
    while a < len(x):
        n = sizes[k % len(sizes)]
        out.append(x[a : a + n])
        a, k = a + n, k + 1
    return out


@pytest.fixture(scope="module")
def beats_ckpt(tmp_path_factory):
    return make_tiny_beats_ckpt(tmp_path_factory.mktemp("beats"))


# ---------------------------------------------------------------- fbank


LENGTHS = [2800, 2800 + 2559, 2800 + 2560, 160_000, 161_613, 16000 * 90 + 77]
# one sample per piece only on the short tracks (a piece per sample of 90 s takes minutes)
CASES = [(n, sizes) for n in LENGTHS for sizes in ([1], [399, 2561], [16000], [10**9])
         if not (sizes == [1] and n > 20_000)]


@pytest.mark.parametrize("n, sizes", CASES)
def test_fbank_in_pieces_is_the_whole_track_bit_for_bit(n, sizes):
    """Reference: torchaudio's kaldi.fbank over the whole track in one call (the pre-chunking code)."""
    x = noise(n)
    whole = fbank_features(x).numpy()  # (n_fbank, 128)
    s = whole.shape[0] // 16
    ref = whole[: 16 * s].reshape(s, 2048)
    enc = build_audio_encoder("fbank")
    got = np.concatenate(list(enc.encode_chunks(pieces(x, sizes))))
    assert got.shape == (audio_steps(n), 2048) == ref.shape
    # Kaldi frames are computed independently (per-frame DC removal and pre-emphasis, dither 0):
    # measured equal to the bit, so the test asks for that
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(enc.encode(x), ref)


def test_fbank_blocks_are_bounded_and_cut_on_steps():
    x = noise(16000 * 100)  # 625 steps
    blocks = [b.shape[0] for b in fbank_step_blocks([x], block_steps=64)]
    assert all(b % 16 == 0 and b <= 64 * 16 for b in blocks)
    assert sum(blocks) == 16 * audio_steps(len(x))


def test_fbank_pieces_errors():
    enc = build_audio_encoder("fbank")
    with pytest.raises(EncodeError, match="too short"):
        list(enc.encode_chunks([noise(1000), noise(1799)]))  # 2799 samples: one short of a step
    assert [len(b) for b in enc.encode_chunks([noise(1000), noise(1800)])] == [1]
    with pytest.raises(EncodeError, match="NaN"):
        list(enc.encode_chunks([noise(3000), np.array([np.nan], np.float32)]))
    with pytest.raises(EncodeError, match="too short"):
        list(enc.encode_chunks([]))


def test_sample_buffer_head_and_drop():
    x = np.arange(100, dtype=np.float32)
    buf = SampleBuffer()
    for p in pieces(x, [7, 30, 1]):
        buf.push(p)
    buf.push(x[:0])
    assert buf.n == 100
    np.testing.assert_array_equal(buf.head(50), x[:50])
    buf.drop(45)
    assert buf.n == 55
    np.testing.assert_array_equal(buf.head(55), x[45:])


# ---------------------------------------------------------------- BEATs


def _reference_windows(enc, x: np.ndarray, w: int) -> list[np.ndarray]:
    """Naive loop: greedy windows of w steps while at least 1.5 w remain, each on its own samples."""
    s, a, out = audio_steps(len(x)), 0, []
    while 2 * (s - a) >= 3 * w:
        out.append(enc._forward([x[2560 * a : 2560 * a + 2560 * (w - 1) + 2800]])[0])
        a += w
    out.append(enc._forward([x[2560 * a :]])[0])
    return out


@pytest.mark.parametrize("seconds", [0.2, 1.0, 3.3, 10.0, 10.1])
def test_beats_clip_that_fits_runs_whole_bit_for_bit(beats_ckpt, seconds):
    """Default W: VGGSound's clips (10.0-10.1 s decoded) run whole, exactly as one forward pass."""
    enc = build_audio_encoder("beats-iter3-as2m", beats_ckpt)
    assert enc.window_steps == BEATS_WINDOW_STEPS and "window_steps" not in enc.info.preprocessing
    x = noise(int(seconds * 16000))
    whole = enc._forward([x])[0]  # what encode did before windows existed
    for sizes in ([10**9], [4000, 333], [16000]):
        blocks = list(enc.encode_chunks(pieces(x, sizes)))
        assert len(blocks) == 1
        np.testing.assert_array_equal(blocks[0], whole)
    np.testing.assert_array_equal(enc.encode(x), whole)
    np.testing.assert_array_equal(enc.encode_many([x, x[:-1]])[0], whole)


@pytest.mark.parametrize("n_steps,w", [(12, 8), (13, 8), (20, 8), (23, 8), (24, 8), (40, 8), (4, 1)])
def test_beats_long_clip_runs_in_windows_with_the_whole_step_count(beats_ckpt, n_steps, w):
    enc = build_audio_encoder("beats-iter3-as2m", beats_ckpt, window_steps=w)
    assert enc.info.preprocessing["window_steps"] == w  # not the default: part of the identity
    x = noise(2560 * n_steps + 240 + int(RNG.integers(0, 2560)))  # n_steps steps and a tail
    assert audio_steps(len(x)) == n_steps
    ref = _reference_windows(enc, x, w)
    blocks = list(enc.encode_chunks(pieces(x, [3000, 17, 9000])))
    assert [len(b) for b in blocks] == [len(r) for r in ref]
    assert sum(len(b) for b in blocks) == n_steps
    assert all(2 * len(b) >= w for b in blocks[1:]) and all(2 * len(b) < 3 * w for b in blocks)
    for b, r in zip(blocks, ref):
        np.testing.assert_array_equal(b, r)
    np.testing.assert_array_equal(enc.encode(x), np.concatenate(ref))
    # encode_many: the long clip alone in windows, a short one beside it untouched
    short = x[: 2560 * (w - 1) + 2800]
    many = enc.encode_many([x, short])
    np.testing.assert_array_equal(many[0], np.concatenate(ref))
    np.testing.assert_array_equal(many[1], enc._forward([short])[0])


def test_beats_window_is_in_the_identity_only_when_not_the_default(beats_ckpt):
    from scav.core.cache import new_meta
    from scav.extract.encoders import build_video_encoder

    v = build_video_encoder("pixels").info
    default = new_meta(v, build_audio_encoder("beats-iter3-as2m", beats_ckpt).info)
    same = new_meta(v, build_audio_encoder("beats-iter3-as2m", beats_ckpt, window_steps=BEATS_WINDOW_STEPS).info)
    other = new_meta(v, build_audio_encoder("beats-iter3-as2m", beats_ckpt, window_steps=32).info)
    assert default.fingerprint() == same.fingerprint()
    assert default.identity_diff(other) == [("audio.preprocessing.window_steps", "<missing>", 32)]
    with pytest.raises(ValueError, match="window"):
        build_audio_encoder("beats-iter3-as2m", beats_ckpt, window_steps=0)


def test_beats_too_short_in_pieces(beats_ckpt):
    enc = build_audio_encoder("beats-iter3-as2m", beats_ckpt)
    with pytest.raises(EncodeError, match="too short"):
        list(enc.encode_chunks([noise(2000), noise(799)]))
