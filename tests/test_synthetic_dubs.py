"""Synthetic dubs: tracks that differ only by speech, a mouth that follows the original only.

Checked on the decoded media (PyAV through ``decode_clip``) against the
ground truth written to events.json, with masks, correlations and spectra
computed here; the generator's layers are used only where the claim is about
them (the pre-codec mix).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from scav.data_manifests import speech
from scav.data_manifests.manifest import load_manifest
from scav.data_manifests.synthetic import (
    SyntheticConfig,
    build_synthetic,
    load_events,
    load_speech,
    mouth_box,
    plan_sources,
    render_dubbed_source,
    render_source,
    _shape_mask,
    _SHAPES,
)
from scav.extract.decode import decode_clip
from scav.extract.encoders import build_audio_encoder

SR = 16000
LANGS = ("eng", "spa", "fra")
DUBBED = SyntheticConfig(seed=2, classes=2, sources_per_class=2, val_sources_per_class=0, test_sources_per_class=1,
                         clips_per_source=3, clip_seconds=2.4, events_per_clip=2, dub_languages=LANGS)
# sha256[:16] of what this config gave before dubs existed: the default path must not move. Not the
# mp4 bytes: x264 does not give the same bytes for 32-px frames from run to run (measured; see
# write_media in data_manifests/media.py), so the frames and samples handed to it are compared instead.
PLAIN = dataclasses.replace(DUBBED, seed=5, clips_per_source=2, dub_languages=())
PLAIN_TEXT = {"events.json": "7f04242c83f84d4c", "manifest.csv": "a1762d1a94df27db"}
PLAIN_ARRAYS = {  # source -> (frames uint8, audio as int16) of render_source
    "disc-s0": ("f4f742b6e07699d6", "cb056d31b2c57241"), "disc-s1": ("e6797e50eac4b0b0", "a386e9093c961af5"),
    "square-s0": ("55ba532f9f4301d8", "7949e5402d538ae3"), "square-s1": ("3bb24dda37d2ac3a", "1426d81538b00544"),
}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:16]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("dubbed")
    manifest = build_synthetic(out, DUBBED)
    rows = load_manifest(manifest)
    clips = {r.clip_id: decode_clip(out / r.path, r.start, r.end) for r in rows}
    return out, rows, clips, load_speech(out)


def _mask(n: int, spans, pad: float = 0.0) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    for s, e in spans:
        m[max(0, int((s - pad) * SR)): int((e + pad) * SR)] = True
    return m


# -- the default path is what it was ------------------------------------------------


def test_no_dubs_output_unchanged(tmp_path):
    import av

    build_synthetic(tmp_path, PLAIN)
    assert {k: _sha((tmp_path / k).read_bytes()) for k in PLAIN_TEXT} == PLAIN_TEXT
    with av.open(str(tmp_path / "media/disc-s0.mp4")) as c:  # one stream, no dispositions, as before
        assert len(c.streams.audio) == 1 and c.streams.audio[0].metadata.get("language") in (None, "und")
        assert not int(c.streams.audio[0].disposition) & 0x6  # neither original nor dub
    for plan in plan_sources(PLAIN):
        frames, audio = render_source(PLAIN, plan)
        got = (_sha(frames.tobytes()), _sha(np.round(audio * 32767).astype(np.int16).tobytes()))
        assert got == PLAIN_ARRAYS[plan.name], plan.name
    assert "speech" not in json.loads((tmp_path / "events.json").read_text())
    assert "dub_languages" not in SyntheticConfig().to_dict() and load_speech(tmp_path) == {}


def test_dubbed_build_deterministic_and_reused(built, tmp_path):
    out, _, clips, _ = built
    again = tmp_path / "again"
    build_synthetic(again, DUBBED)
    for name in ("manifest.csv", "events.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    plan = plan_sources(DUBBED)[1]
    a, b = render_dubbed_source(DUBBED, plan), render_dubbed_source(DUBBED, plan)
    assert np.array_equal(a.frames, b.frames) and all(np.array_equal(a.track(x), b.track(x)) for x in LANGS)
    clip = decode_clip(again / "media/disc-s1.mp4", 2.72, 5.12)  # disc-s1-c01, decoded again
    for x, y in zip(clip.audio, clips["disc-s1-c01"].audio):
        np.testing.assert_allclose(x.samples, y.samples, atol=2e-3)  # the codec's part, not ours
    mtime = (again / "media/disc-s0.mp4").stat().st_mtime_ns
    build_synthetic(again, DUBBED)  # the config in events.json (lists) matches the tuples: reused
    assert (again / "media/disc-s0.mp4").stat().st_mtime_ns == mtime
    assert json.loads((out / "events.json").read_text())["config"]["dub_languages"] == list(LANGS)


def test_config_validation():
    for bad in (dict(dub_languages=("eng", "ENG")), dict(dub_languages=("e n",)), dict(dub_languages="eng"),
                dict(dub_languages=("eng",), speech_db=0.0), dict(dub_languages=("eng",), clip_seconds=0.8)):
        with pytest.raises(ValueError):
            dataclasses.replace(DUBBED, **bad).validate()


# -- tracks: same notes, different speech ----------------------------------------------


def test_tracks_tagged_original_first(built):
    _, rows, clips, _ = built
    for r in rows:
        a = clips[r.clip_id].audio
        assert [t.language for t in a] == list(LANGS) and [t.original for t in a] == [True, False, False]


def test_premix_tracks_differ_exactly_by_speech(built):
    """Before the codec: every track is one shared layer plus its language's speech, nothing else."""
    out, _, _, _ = built
    onsets, segs = load_events(out), load_speech(out)
    for plan in plan_sources(DUBBED):
        dub = render_dubbed_source(DUBBED, plan)
        plain_frames, plain_audio = render_source(dataclasses.replace(DUBBED, dub_languages=()), plan)
        np.testing.assert_array_equal(dub.notes, plain_audio[0])  # the notes are today's, sample for sample
        for a in LANGS:
            for b in LANGS:
                np.testing.assert_allclose(dub.track(a) - dub.track(b), (dub.speech[a] - dub.speech[b])[None],
                                           rtol=0, atol=1e-7)
        # speech sits exactly in the syllables of events.json (clip-relative there)
        n = len(dub.notes)
        for lang in LANGS:
            spans = [(plan.clip_start(DUBBED, k) + s, plan.clip_start(DUBBED, k) + e)
                     for k in range(DUBBED.clips_per_source)
                     for s, e in segs[f"{plan.name}-c{k:02d}"][lang]]
            inside = _mask(n, spans, pad=1 / SR)  # a sample of slack: times were rounded to 1 us
            assert not dub.speech[lang][~inside].any()
            assert all(np.abs(dub.speech[lang][_mask(n, [sp])]).max() > 0.01 for sp in spans)
            # level: speech_db (-6 dB) below the notes, RMS over syllables vs over notes
            note_spans = [(plan.clip_start(DUBBED, k) + t, plan.clip_start(DUBBED, k) + t + DUBBED.note_seconds)
                          for k in range(DUBBED.clips_per_source) for t in onsets[f"{plan.name}-c{k:02d}"]]
            rms = lambda x, m: np.sqrt(np.mean(np.square(x[m], dtype=np.float64)))  # noqa: E731
            ratio_db = 20 * np.log10(rms(dub.speech[lang], inside) / rms(dub.notes, _mask(n, note_spans)))
            assert ratio_db == pytest.approx(DUBBED.speech_db, abs=0.01)
        # the picture: today's frames, except the mouth
        rows, cols = mouth_box(DUBBED.frame_size)
        keep = np.ones(dub.frames.shape[1:3], bool)
        keep[rows, cols] = False
        np.testing.assert_array_equal(dub.frames[:, keep], plain_frames[:, keep])


def test_decoded_difference_is_the_speech(built):
    """Decoded: track_a - track_b carries energy only where a or b speaks, and it is their speech."""
    out, rows, clips, segs = built
    layers = {p.name: render_dubbed_source(DUBBED, p) for p in plan_sources(DUBBED)}
    ratios, residuals = [], []
    for r in rows:
        x = {t.language: t.samples.astype(np.float64) for t in clips[r.clip_id].audio}
        n = len(x["eng"])
        i0 = int(round(r.start * SR))
        for a, b in (("eng", "spa"), ("eng", "fra"), ("spa", "fra")):
            d = x[a] - x[b]
            want = (layers[r.source].speech[a] - layers[r.source].speech[b])[i0: i0 + n].astype(np.float64)
            speaking = _mask(n, segs[r.clip_id][a] + segs[r.clip_id][b])
            ratios.append(np.mean(d[~speaking] ** 2) / np.mean(d[speaking] ** 2))
            residuals.append(np.sum((d - want) ** 2) / np.sum(want ** 2))
            # every 10 ms frame with difference energy lies in a syllable of a or b (20 ms of codec spread)
            frame_e = (d[: n // 160 * 160].reshape(-1, 160) ** 2).mean(axis=1)
            loud = np.flatnonzero(frame_e > 0.05 * np.mean(d[speaking] ** 2))
            near = _mask(n, segs[r.clip_id][a] + segs[r.clip_id][b], pad=0.02)
            assert near[loud * 160 + 80].all(), (r.clip_id, a, b)
    assert max(ratios) < 1e-3, max(ratios)  # notes cancel: what differs is speech
    assert max(residuals) < 0.05, max(residuals)  # and it is the generator's speech, up to AAC noise


def test_speech_changes_the_fbank_steps(built):
    """The stand-in audio encoder sees the dub: steps with speech differ between tracks, others do not."""
    _, rows, clips, segs = built
    enc = build_audio_encoder("fbank")
    with_speech, without = [], []
    for r in rows:
        feats = {t.language: enc.encode(t.samples) for t in clips[r.clip_id].audio}
        diff = np.abs(feats["eng"] - feats["spa"]).mean(axis=1)  # (S,) in BEATs-normalised units
        spans = segs[r.clip_id]["eng"] + segs[r.clip_id]["spa"]
        for s, dv in enumerate(diff):
            lo, hi = 0.16 * s, 0.16 * s + 0.175  # the step's 16 fbank windows of 25 ms
            overlap = sum(max(0.0, min(hi, e) - max(lo, st)) for st, e in spans)
            (with_speech if overlap > 0.05 else without if overlap == 0 else []).append(dv)
    assert len(without) >= len(rows) and len(with_speech) > 5 * len(rows)
    assert np.median(with_speech) > 0.05 > 10 * np.median(without)  # 0.05 ~ 3 dB mean over all bins


def test_mouth_follows_the_original_only(built):
    _, rows, clips, segs = built
    r_box, c_box = mouth_box(DUBBED.frame_size)
    bright, speaking = [], {lang: [] for lang in LANGS}
    for r in rows:
        clip = clips[r.clip_id]
        bright.append(clip.frames[:, r_box, c_box].astype(np.float64).mean(axis=(1, 2, 3)))
        t = clip.frame_times - r.start
        for lang in LANGS:
            speaking[lang].append(np.array([any(s <= x < e for s, e in segs[r.clip_id][lang]) for x in t], float))
        per_clip = {lang: np.corrcoef(bright[-1], speaking[lang][-1])[0, 1] for lang in LANGS}
        assert per_clip["eng"] > 0.7 and per_clip["eng"] > max(per_clip["spa"], per_clip["fra"]) + 0.2, per_clip
    corr = {lang: np.corrcoef(np.concatenate(bright), np.concatenate(speaking[lang]))[0, 1] for lang in LANGS}
    assert corr["eng"] > 0.8 and corr["spa"] < 0.35 and corr["fra"] < 0.35, corr


def test_mouth_clear_of_every_object():
    for size in (16, 32, 64):
        rows, cols = mouth_box(size)
        for shape in _SHAPES:
            assert not _shape_mask(shape, size)[rows, cols].any(), (shape, size)


# -- the speech layer itself ---------------------------------------------------------------


def test_voices_are_per_language_and_stable():
    assert speech.voice_for("spa") == speech.voice_for("SPA")
    voices = [speech.voice_for(x) for x in LANGS]
    assert len({v.rate for v in voices}) == 3 and all(100 <= v.pitch <= 220 for v in voices)


def test_syllables_inside_window_apart_and_at_the_language_rate():
    for lang in LANGS:
        voice = speech.voice_for(lang)
        syl = speech.sample_syllables(np.random.default_rng(0), voice, 1.0, 301.0)
        starts, ends = np.array([s.start for s in syl]), np.array([s.end for s in syl])
        assert starts[0] >= 1.0 and ends[-1] <= 301.0 and np.all(starts[1:] - ends[:-1] >= 0.04 - 1e-6)
        assert len(syl) / 300.0 == pytest.approx(voice.rate, rel=0.15)
        assert {s.vowel for s in syl} == set(voice.vowels)


def test_vowels_differ_where_their_formants_are():
    """A syllable is shaped by its vowel: around a vowel's F2 it has far more energy than a vowel
    without a formant within 400 Hz (same pitch), measured on the rendered spectrum."""
    def band_energy(vowel: str, centre: float) -> float:
        s = speech.Syllable(0.0, 0.25, 120.0, vowel)
        x = speech.render_syllable(s, np.arange(int(0.25 * SR)) / SR, SR)
        assert np.abs(x).max() <= 1.0
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / SR)
        return float(spec[np.abs(freqs - centre) < 100].sum())

    pairs = 0
    for v, (_, f2) in speech.VOWELS.items():
        for w, formants in speech.VOWELS.items():
            if all(abs(f - f2) > 400 for f in formants):
                assert band_energy(v, f2) > 3 * band_energy(w, f2), (v, w)
                pairs += 1
    assert pairs > 25
