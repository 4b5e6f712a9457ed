"""Temporal windows, time and frequency masks and quadruplet views (train/augment.py), by
hand-worked cases and over many seeds."""

from __future__ import annotations

import pytest
import torch

from scav.core.loader import Batch
from scav.core.schema import EncoderInfo
from scav.train.augment import (
    FreqLayout,
    QuadBatch,
    ViewMasks,
    Window,
    freq_mask,
    frequency_layout,
    make_quadruplets,
    random_crop,
    time_mask,
    window_pair,
)

RATE = 6.25  # audio steps per second of BEATs and fbank (16 frames of 10 ms)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# -- window_pair ------------------------------------------------------------------------------


def test_window_pair_hand_worked():
    # 10 s of video at 10 fps, 62 audio steps = 9.92 s: duration 9.92, starts in [0, 6.92].
    # seed 0 draws u = 0.49626 then 0.76822.
    assert float(torch.rand((), generator=gen(0))) == pytest.approx(0.49626, abs=1e-5)
    # t0 = 0.49626 * 6.92 = 3.4341 s -> video step 34, audio step floor(21.46) = 21;
    # lengths round(3 * 10) = 30 and round(3 * 6.25) = round(18.75) = 19
    p, s = window_pair(100, 62, 10.0, 3.0, gen(0), audio_rate=RATE, same_window=True)
    assert p == s == Window(34, 30, 21, 19)
    # jitter: second start 0.76822 * 6.92 = 5.3161 s -> steps 53 and floor(33.23) = 33
    p, s = window_pair(100, 62, 10.0, 3.0, gen(0), audio_rate=RATE, same_window=False)
    assert p == Window(34, 30, 21, 19) and s == Window(53, 30, 33, 19)
    # 2 s at 6.25 steps/s = 12.5 steps: Python's round, as random_crop, gives 12 (half to even).
    # t0 = 0.49626 * (4 - 2) = 0.9925 s -> steps 9 and floor(6.20) = 6
    p, _ = window_pair(40, 25, 10.0, 2.0, gen(0), audio_rate=RATE, same_window=True)
    assert p == Window(9, 20, 6, 12)


@pytest.mark.parametrize("fps", [8.0, 10.0, 25.0, 29.97])
def test_window_starts_align_in_time_and_stay_inside_the_clip(fps):
    for seed in range(200):
        g = gen(seed)
        n_video = int(torch.randint(1, int(12 * fps), (), generator=g))
        n_audio = int(torch.randint(1, 75, (), generator=g))
        for w in window_pair(n_video, n_audio, fps, 3.0, g, audio_rate=RATE, same_window=False):
            # both starts are floor(t0 * rate): each within one of its own steps of t0
            assert abs(w.v0 / fps - w.a0 / RATE) < max(1 / fps, 1 / RATE)
            assert 0 <= w.v0 and 1 <= w.v_len and w.v0 + w.v_len <= n_video
            assert 0 <= w.a0 and 1 <= w.a_len and w.a0 + w.a_len <= n_audio
            if min(n_video / fps, n_audio / RATE) <= 3.0:
                assert w == Window(0, n_video, 0, n_audio)
            else:
                assert w.v_len <= round(3.0 * fps) and w.a_len <= round(3.0 * RATE)


def test_same_window_repeats_and_jitter_draws_again():
    moved = 0
    for seed in range(100):
        same = window_pair(250, 62, 25.0, 3.0, gen(seed), audio_rate=RATE, same_window=True)
        jit = window_pair(250, 62, 25.0, 3.0, gen(seed), audio_rate=RATE, same_window=False)
        assert same[0] == same[1]
        assert jit[0] == same[0]  # the primary is the first draw either way
        moved += jit[1] != jit[0]
    assert moved >= 95


@pytest.mark.parametrize("seconds", [None, 3.0, 4.0])
def test_short_clips_and_no_window_are_whole_and_draw_nothing(seconds):
    # 3 s of video at 25 fps, 19 audio steps = 3.04 s: duration 3 s, not longer than 3 or 4
    g = gen(0)
    p, s = window_pair(75, 19, 25.0, seconds, g, audio_rate=RATE, same_window=False)
    assert p == s == Window(0, 75, 0, 19)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=gen(0)))


def test_window_pair_rejects_bad_arguments():
    with pytest.raises(ValueError, match="seconds"):
        window_pair(10, 10, 10.0, 0.0, gen(0), audio_rate=RATE, same_window=True)
    with pytest.raises(ValueError, match="fps"):
        window_pair(10, 10, 0.0, 1.0, gen(0), audio_rate=RATE, same_window=True)


# -- time_mask --------------------------------------------------------------------------------


def test_time_mask_zeroes_one_contiguous_span_within_the_fraction():
    lengths = torch.tensor([20, 7, 1, 13])
    seq = torch.full((4, 20, 3), 7.0, dtype=torch.float16)
    seq[torch.arange(20)[None] >= lengths[:, None]] = -1.0  # padding marked to see it is untouched
    before = seq.clone()
    spans = {i: set() for i in range(4)}
    for seed in range(300):
        out = time_mask(seq, lengths, 0.5, gen(seed))
        assert out.dtype == torch.float16 and torch.equal(seq, before)  # out of place
        for i, n in enumerate(lengths.tolist()):
            zero = (out[i] == 0).all(-1).nonzero().flatten().tolist()
            assert torch.equal(out[i, n:], before[i, n:])
            kept = [t for t in range(n) if t not in zero]
            assert torch.equal(out[i, kept], before[i, kept])
            if zero:
                assert zero == list(range(zero[0], zero[-1] + 1)) and zero[-1] < n  # contiguous, inside
            assert len(zero) <= 0.5 * n
            spans[i].add(len(zero))
    # every span length 0 .. floor(0.5 * n) occurs (uniform draw), none longer
    assert spans == {i: set(range(n // 2 + 1)) for i, n in enumerate(lengths.tolist())}


def test_time_mask_zero_fraction_changes_nothing_and_bad_fraction_fails():
    seq = torch.randn(2, 5, 3)
    assert torch.equal(time_mask(seq, torch.tensor([5, 3]), 0.0, gen(0)), seq)
    with pytest.raises(ValueError):
        time_mask(seq, torch.tensor([5, 3]), 1.5, gen(0))


# -- make_quadruplets -------------------------------------------------------------------------


HALF = ViewMasks(video_time=0.5, audio_time=0.5)  # time masks of up to half of each sequence
FPS = [10.0, 25.0, 10.0]
DUR = [6.0, 4.0, 2.0]  # the last clip is shorter than the 3 s window


def _batch(second_track: bool = False, dtype=torch.float16) -> Batch:
    """Features whose value is the step's time in seconds (audio track 2: minus the time)."""
    vids = [torch.arange(int(d * f))[:, None].repeat(1, 2) / f for d, f in zip(DUR, FPS)]
    auds = [torch.arange(int(d * RATE))[:, None].repeat(1, 3) / RATE for d in DUR]
    pad = torch.nn.utils.rnn.pad_sequence
    vm = torch.arange(max(map(len, vids)))[None] < torch.tensor([len(v) for v in vids])[:, None]
    am = torch.arange(max(map(len, auds)))[None] < torch.tensor([len(a) for a in auds])[:, None]
    v, a = pad(vids, batch_first=True).to(dtype), pad(auds, batch_first=True).to(dtype)
    extra = dict(audio2=-a, audio2_mask=am, tracks2=[1, 2, 1]) if second_track else {}
    return Batch(["a", "b", "c"], ["s0", "s1", "s1"], v, vm, a, am, tracks=[0, 0, 0], **extra)


def _check_prefix_and_padding(b: Batch):
    for x, m in ((b.video, b.video_mask), (b.audio, b.audio_mask)):
        n = m.sum(1)
        assert torch.equal(m, torch.arange(m.shape[1])[None] < n[:, None])
        assert (x[~m] == 0).all()


@pytest.mark.parametrize("same_window", [True, False])
def test_quadruplets_without_second_track_use_track_one_for_both(same_window):
    b = _batch(second_track=False)
    q = make_quadruplets(b, FPS, 3.0, gen(1), audio_rate=RATE, windows="same" if same_window else "jitter")
    assert isinstance(q, QuadBatch) and len(q) == 3 and q.clip_ids == b.clip_ids and q.sources == b.sources
    for view in (q.primary, q.secondary):
        _check_prefix_and_padding(view)
        assert view.tracks == [0, 0, 0] and view.audio2 is None
        assert view.video.dtype == view.audio.dtype == torch.float16
        assert (view.audio >= 0).all()  # track 1 values (times), never a second track's
        for i in range(3):
            # video and audio of one view start at the same time, within one step
            assert abs(float(view.video[i, 0, 0]) - float(view.audio[i, 0, 0])) < max(1 / FPS[i], 1 / RATE) + 1e-2
    if same_window:
        for k in ("video", "video_mask", "audio", "audio_mask"):
            assert torch.equal(getattr(q.primary, k), getattr(q.secondary, k))
    # the short clip is whole in both views
    for view in (q.primary, q.secondary):
        assert int(view.video_mask[2].sum()) == 20 and int(view.audio_mask[2].sum()) == 12


def test_quadruplets_take_the_second_track_for_the_secondary_at_the_same_time():
    b = _batch(second_track=True)
    for seed in range(20):
        q = make_quadruplets(b, FPS, 3.0, gen(seed), audio_rate=RATE, windows="same")
        assert (q.primary.audio >= 0).all() and (q.secondary.audio <= 0).all()
        assert (q.secondary.audio < 0).any()
        # the same window of the other track
        assert torch.equal(q.secondary.audio_mask, q.primary.audio_mask)
        assert torch.equal(-q.secondary.audio, q.primary.audio)
        assert torch.equal(q.secondary.video, q.primary.video)
        assert q.primary.tracks == [0, 0, 0] and q.secondary.tracks == [1, 2, 1]
        assert q.primary.audio2 is None and q.secondary.audio2 is None


def test_quadruplets_second_track_of_another_length_is_windowed_on_the_common_part():
    b = _batch(second_track=True)
    b.audio2_mask = b.audio_mask.clone()
    b.audio2_mask[0, 30:] = False  # clip a's dub ends after 30 steps (4.8 s) instead of 37
    b.audio2 = torch.where(b.audio2_mask[..., None], b.audio2, 0)
    for seed in range(50):
        q = make_quadruplets(b, FPS, 3.0, gen(seed), audio_rate=RATE, windows="jitter")
        assert q.secondary.audio_mask.sum(1).tolist()[0] == 19  # never runs past the dub's end
        last_step = round(float(-q.secondary.audio[0, 18, 0]) * RATE)
        assert (q.secondary.audio[0, :19] <= 0).all() and last_step < 30


def test_primary_is_random_crop_with_the_same_generator():
    b = _batch()
    for seed in range(10):
        crop = random_crop(b, FPS, 3.0, gen(seed), audio_rate=RATE)
        q = make_quadruplets(b, FPS, 3.0, gen(seed), audio_rate=RATE, windows="same", masks=HALF)
        assert torch.equal(q.primary.video_mask, crop.video_mask) and torch.equal(q.primary.audio_mask, crop.audio_mask)
        q = make_quadruplets(b, FPS, 3.0, gen(seed), audio_rate=RATE, windows="same")
        for k in ("video", "video_mask", "audio", "audio_mask"):
            assert torch.equal(getattr(q.primary, k), getattr(crop, k))
    # with jitter the draws interleave (two per clip), so only the first clip's primary matches
    q = make_quadruplets(b, FPS, 3.0, gen(0), audio_rate=RATE, windows="jitter")
    crop = random_crop(b, FPS, 3.0, gen(0), audio_rate=RATE)
    assert torch.equal(q.primary.video[0], crop.video[0])


def test_masks_are_drawn_per_sequence_after_the_windows():
    b = _batch(second_track=True)
    differ = 0
    for seed in range(30):
        plain = make_quadruplets(b, FPS, 3.0, gen(seed), audio_rate=RATE, windows="same")
        masked = make_quadruplets(b, FPS, 3.0, gen(seed), audio_rate=RATE, windows="same", masks=HALF)
        zeroed = []
        for p, m in ((plain.primary, masked.primary), (plain.secondary, masked.secondary)):
            for k in ("video", "audio"):
                x, y, valid = getattr(p, k), getattr(m, k), getattr(p, f"{k}_mask")
                assert torch.equal(valid, getattr(m, f"{k}_mask"))  # same windows, masks unchanged
                changed = (x != y).any(-1)
                assert (y[changed] == 0).all() and not (changed & ~valid).any()  # only real steps zeroed
                zeroed.append(changed)
        # v_p and v_s cover the same steps here, yet their masks are independent draws
        differ += not torch.equal(zeroed[0], zeroed[2])
    assert differ >= 20


def test_quadruplets_are_deterministic_for_a_generator_state():
    b = _batch(second_track=True)

    def views(q):
        return [getattr(v, k) for v in (q.primary, q.secondary) for k in ("video", "audio", "video_mask")]

    a = views(make_quadruplets(b, FPS, 3.0, gen(3), audio_rate=RATE, windows="jitter", masks=HALF))
    c = views(make_quadruplets(b, FPS, 3.0, gen(3), audio_rate=RATE, windows="jitter", masks=HALF))
    d = views(make_quadruplets(b, FPS, 3.0, gen(4), audio_rate=RATE, windows="jitter", masks=HALF))
    assert all(torch.equal(x, y) for x, y in zip(a, c))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, d))


def test_quad_batch_to_casts_both_views():
    q = make_quadruplets(_batch(second_track=True), FPS, None, gen(0), audio_rate=RATE, windows="same").to("cpu")
    for view in (q.primary, q.secondary):
        assert view.video.dtype == view.audio.dtype == torch.float32
        assert view.video_mask.dtype == torch.bool
    assert torch.equal(q.primary.video, _batch().video.float())  # seconds=None: whole clips


def test_make_quadruplets_rejects_wrong_fps_count():
    with pytest.raises(ValueError, match="fps"):
        make_quadruplets(_batch(), FPS[:2], 3.0, gen(0), audio_rate=RATE, windows="same")


# -- the audio step rate comes from the caller (the cache's), not a constant --------------------


def test_window_pair_uses_the_given_audio_rate():
    # 10 s of video at 10 fps, 400 audio steps at 50 steps/s = 8 s: duration 8, starts in [0, 5].
    # seed 0: u = 0.49626 -> t0 = 2.4813 s -> video step 24, audio step floor(124.07) = 124;
    # lengths round(3 * 10) = 30 and round(3 * 50) = 150
    p, _ = window_pair(100, 400, 10.0, 3.0, gen(0), audio_rate=50.0, same_window=True)
    assert p == Window(24, 30, 124, 150)
    with pytest.raises(ValueError, match="audio_rate"):
        window_pair(100, 400, 10.0, 3.0, gen(0), audio_rate=0.0, same_window=True)


# -- aligned windows: each contrasted cross-modal pair covers the same seconds ----------------------


def test_aligned_windows_cross_the_jittered_ones():
    """aligned = the jitter draws with the audio views swapped: (v_p, a_s) share the first
    window, (v_s, a_p) the second, while v_p != v_s and a_p != a_s."""
    b = _batch(second_track=True)  # audio track 1 = +time, track 2 = -time
    moved = 0
    for seed in range(30):
        jit = make_quadruplets(b, FPS, 3.0, gen(seed), audio_rate=RATE, windows="jitter")
        al = make_quadruplets(b, FPS, 3.0, gen(seed), audio_rate=RATE, windows="aligned")
        assert torch.equal(al.primary.video, jit.primary.video) and torch.equal(al.secondary.video, jit.secondary.video)
        assert torch.equal(al.primary.audio, -jit.secondary.audio)  # a_p: track 1 in the secondary's window
        assert torch.equal(al.secondary.audio, -jit.primary.audio)  # a_s: track 2 in the primary's window
        assert al.primary.tracks == [0, 0, 0] and al.secondary.tracks == [1, 2, 1]
        for i in range(3):
            step = max(1 / FPS[i], 1 / RATE) + 1e-2
            assert abs(float(al.primary.video[i, 0, 0]) + float(al.secondary.audio[i, 0, 0])) < step  # v_p ~ a_s
            assert abs(float(al.secondary.video[i, 0, 0]) - float(al.primary.audio[i, 0, 0])) < step  # v_s ~ a_p
        moved += not torch.equal(al.primary.video[0], al.secondary.video[0])  # clip a: 6 s, windows of 3 s
    assert moved >= 25


def test_window_mode_is_checked():
    with pytest.raises(ValueError, match="windows"):
        make_quadruplets(_batch(), FPS, 3.0, gen(0), audio_rate=RATE, windows="crossed")


# -- frequency masks --------------------------------------------------------------------------------


def test_frequency_layout_read_from_the_encoder_info():
    beats = EncoderInfo("beats-iter3-as2m", 6144, preprocessing={
        "stacking": "token t*8+p -> step t, dims [p*768:(p+1)*768]"})
    assert frequency_layout(beats) == FreqLayout(1, 8, 768)
    from scav.extract.encoders.fbank import FbankEncoder

    assert frequency_layout(FbankEncoder().info) == FreqLayout(16, 128, 1)  # the stand-in as it records itself
    # unknown: no record, another stacking, or one that does not multiply to the dim
    assert frequency_layout(EncoderInfo("audio", 16)) is None
    assert frequency_layout(EncoderInfo("x", 6144, preprocessing={"stacking": "mean over frames"})) is None
    assert frequency_layout(EncoderInfo("b", 768, preprocessing=beats.preprocessing)) is None


def test_freq_mask_hand_worked_patch_blocks_and_mel_bins():
    # seed 4 draws: clip 0 width randint(0, 3) = 1, start randint(0, 4) = 2; clip 1 width 1, start 1
    g = gen(4)
    assert [int(torch.randint(0, 3, (), generator=g)), int(torch.randint(0, 4, (), generator=g))] == [1, 2]
    assert [int(torch.randint(0, 3, (), generator=g)), int(torch.randint(0, 4, (), generator=g))] == [1, 1]
    lengths = torch.tensor([3, 2])
    seq = torch.ones(2, 3, 12)
    seq[1, 2] = -1.0  # clip 1's padding
    # BEATs-like: 4 bands of 3 dims, band k = dims [3k, 3k + 3)
    out = freq_mask(seq, lengths, 0.5, FreqLayout(1, 4, 3), gen(4))
    want = seq.clone()
    want[0, :, 6:9] = 0  # clip 0: band 2 at every step
    want[1, :2, 3:6] = 0  # clip 1: band 1 at its two real steps, not at the padded one
    assert torch.equal(out, want) and (seq[0] == 1).all()  # a copy
    # fbank-like: 3 frames x 4 bins, bin b of frame f = dim 4f + b
    out = freq_mask(seq, lengths, 0.5, FreqLayout(3, 4, 1), gen(4))
    want = seq.clone()
    want[0, :, [2, 6, 10]] = 0
    want[1, :2, [1, 5, 9]] = 0
    assert torch.equal(out, want)


def test_freq_mask_over_seeds_zeroes_one_band_range_within_the_fraction():
    layout = FreqLayout(2, 8, 3)  # 48 dims
    seq = torch.randn(3, 5, 48).abs() + 1
    lengths = torch.tensor([5, 3, 1])
    widths = set()
    for seed in range(200):
        out = freq_mask(seq, lengths, 0.5, layout, gen(seed)).view(3, 5, 2, 8, 3)
        for i, n in enumerate(lengths.tolist()):
            zero = (out[i, :n] == 0).all(-1).all(-2).all(0).nonzero().flatten().tolist()  # bands zero everywhere
            assert ((out[i, :n] == 0).sum() == len(zero) * n * 2 * 3)  # nothing else zeroed
            assert torch.equal(out[i, n:], seq.view(3, 5, 2, 8, 3)[i, n:])
            if zero:
                assert zero == list(range(zero[0], zero[-1] + 1))
            widths.add(len(zero))
    assert widths == {0, 1, 2, 3, 4}  # floor(0.5 * 8) = 4 at most, every width drawn
    with pytest.raises(ValueError, match="dim"):
        freq_mask(seq, lengths, 0.5, FreqLayout(1, 8, 3), gen(0))


def test_view_masks_apply_each_mask_to_its_modality_and_need_a_layout_for_frequency():
    with pytest.raises(ValueError, match="layout"):
        ViewMasks(audio_freq=0.5)
    b = _batch()
    b.audio = torch.ones_like(b.audio) * b.audio_mask[..., None]  # (3, 37, 3): 3 bands of 1 dim
    masks = ViewMasks(audio_time=0.5, audio_freq=0.67, freq_layout=FreqLayout(1, 3, 1))
    saw_band = 0
    for seed in range(30):
        out = masks.apply(b, gen(seed))
        assert torch.equal(out.video, b.video)  # video untouched unless asked
        n = b.audio_mask.sum(1)
        for i in range(3):
            a = out.audio[i, : n[i]]
            band_zero = (a == 0).all(0)  # a band zeroed at every step
            steps_zero = (a == 0).all(1)
            assert ((a == 0) == (band_zero[None] | steps_zero[:, None])).all()  # only those
            saw_band += bool(band_zero.any())
    assert saw_band > 20
