"""Loudness and long-term-spectrum matching of a dubbed segment to the original (dubs paper §6, step 6).

The paper uses pyloudnorm (ITU-R BS.1770) and matchering. Here: loudness by pyloudnorm,
and matchering's idea reduced to its core, a smooth EQ: the ratio of the two signals'
long-term average spectra, smoothed over 1/3 octave, limited to ±12 dB, applied in the
STFT domain (librosa). The EQ runs first and matches spectral *shape* only (each spectrum
is normalised to unit power), because the loudness step after it sets the level.

BS.1770's integrated loudness gates 400 ms blocks; pyloudnorm cannot measure a clip
shorter than one block. Such clips get the K-weighted mean square of the whole clip
instead (pyloudnorm with one block as long as the clip: same weighting, no relative gate),
reported as method ``"k-rms"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from math import gcd

import librosa
import numpy as np
import pyloudnorm
from scipy.signal import resample_poly

from .stages import Audio

log = logging.getLogger(__name__)

BLOCK_SECONDS = 0.4  # BS.1770 gating block
MIN_SECONDS = 0.01  # below this even the K-weighted RMS is not a level (the weighting filter's transient)
MAX_EQ_DB = 12.0
OCTAVE_FRACTION = 3  # 1/3-octave smoothing: the resolution of hearing's critical bands, roughly
MIN_EQ_SAMPLES = 256  # one STFT frame at least


@dataclass(frozen=True)
class Loudness:
    lufs: float  # nan when undefined: empty, too short (< MIN_SECONDS), silent, or non-finite samples
    method: str  # "bs1770" (gated integrated loudness) or "k-rms" (whole clip, ungated)


def measure_loudness(audio: Audio, gated: bool | None = None) -> Loudness:
    """Loudness of ``audio`` in LUFS; never raises.

    ``gated=None`` gates when the clip is at least one 400 ms block long; ``False`` forces
    the whole-clip K-weighted RMS (to compare with a short clip on the same footing).
    """
    x = np.asarray(audio.samples, np.float64)
    sr = audio.sample_rate
    seconds = len(x) / sr
    if gated is None:
        gated = seconds >= BLOCK_SECONDS
    method = "bs1770" if gated else "k-rms"
    if seconds < max(MIN_SECONDS, BLOCK_SECONDS if gated else 0.0) or not np.all(np.isfinite(x)):
        return Loudness(float("nan"), method)
    meter = pyloudnorm.Meter(sr) if gated else pyloudnorm.Meter(sr, block_size=len(x) / sr)
    with np.errstate(divide="ignore"):  # silence: log10(0), pyloudnorm returns -inf
        value = float(meter.integrated_loudness(x))
    return Loudness(value if np.isfinite(value) else float("nan"), method)


def loudness_lufs(audio: Audio) -> float:
    """Integrated loudness (LUFS, BS.1770) of ``audio``; K-weighted RMS under 0.4 s; nan when undefined."""
    return measure_loudness(audio).lufs


def loudness_difference(a: Audio, b: Audio) -> float:
    """LU by which ``a`` is louder than ``b``, both measured the same way (ungated if either is short); nan
    when either is undefined."""
    gated = min(a.seconds, b.seconds) >= BLOCK_SECONDS
    return measure_loudness(a, gated).lufs - measure_loudness(b, gated).lufs


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x
    g = gcd(int(rate), int(target))
    return resample_poly(x, target // g, rate // g)


def _n_fft(sample_rate: int, n: int) -> int:
    """~128 ms window (power of two): fine enough bins below 200 Hz for 1/3-octave bands; <= n."""
    nominal = 2 ** int(round(np.log2(0.128 * sample_rate)))
    return int(min(nominal, 2 ** int(np.floor(np.log2(max(n, 1))))))


def _ltas(x: np.ndarray, n_fft: int) -> np.ndarray:
    """(n_fft // 2 + 1,) long-term average power spectrum, normalised to sum 1 (zeros if silent)."""
    power = (np.abs(librosa.stft(x.astype(np.float32), n_fft=n_fft, hop_length=n_fft // 4)) ** 2).mean(axis=1)
    total = power.sum()
    return power / total if total > 0 else power


def _smooth_octave(power: np.ndarray, freqs: np.ndarray, fraction: int) -> np.ndarray:
    """Mean power over [f / 2^(1/2b), f * 2^(1/2b)] around every bin (b = ``fraction``); bin 0 kept."""
    half = 2.0 ** (1.0 / (2 * fraction))
    lo = np.searchsorted(freqs, freqs / half, side="left")
    hi = np.maximum(np.searchsorted(freqs, freqs * half, side="right"), lo + 1)  # at least the bin itself
    csum = np.concatenate([[0.0], np.cumsum(power)])
    return (csum[hi] - csum[lo]) / (hi - lo)


def eq_curve(audio: Audio, reference: Audio, max_db: float = MAX_EQ_DB,
             fraction: int = OCTAVE_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(freqs (F,) Hz, gain (F,) dB) that moves ``audio``'s long-term spectral shape to ``reference``'s.

    F = n_fft // 2 + 1 of :func:`_n_fft` at the audio's rate; the reference is resampled to it.
    Gains are ``10 log10`` of the ratio of the 1/``fraction``-octave-smoothed, unit-power LTAS,
    clipped to ±``max_db``; bins where both spectra are negligible get ~0 dB.
    """
    sr = audio.sample_rate
    x = np.asarray(audio.samples, np.float64)
    r = _resample(np.asarray(reference.samples, np.float64), reference.sample_rate, sr)
    n_fft = _n_fft(sr, min(len(x), len(r)))
    freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
    floor = 1e-9  # relative power (of the unit-power spectra): -90 dB, below any real content
    p_audio = _smooth_octave(_ltas(x, n_fft), freqs, fraction) + floor
    p_ref = _smooth_octave(_ltas(r, n_fft), freqs, fraction) + floor
    return freqs, np.clip(10.0 * np.log10(p_ref / p_audio), -max_db, max_db)


def match_spectrum(audio: Audio, reference: Audio, max_db: float = MAX_EQ_DB,
                   fraction: int = OCTAVE_FRACTION) -> Audio:
    """``audio`` through the smooth EQ of :func:`eq_curve` (STFT gain, ISTFT to the same length).

    Unchanged when either signal is shorter than one frame or silent. May change loudness.
    """
    x = np.asarray(audio.samples, np.float32)
    n_ref = round(len(reference.samples) * audio.sample_rate / reference.sample_rate)
    if min(len(x), n_ref) < MIN_EQ_SAMPLES or not np.any(x) or not np.any(reference.samples):
        log.info("spectral match skipped: a signal is shorter than %d samples or silent", MIN_EQ_SAMPLES)
        return audio
    _, gain_db = eq_curve(audio, reference, max_db, fraction)
    n_fft = 2 * (len(gain_db) - 1)
    spec = librosa.stft(x, n_fft=n_fft, hop_length=n_fft // 4)  # (F, frames)
    y = librosa.istft(spec * (10.0 ** (gain_db / 20.0))[:, None].astype(np.float32), hop_length=n_fft // 4,
                      n_fft=n_fft, length=len(x))
    return Audio(y.astype(np.float32), audio.sample_rate)


@dataclass(frozen=True)
class Match:
    """A matched segment and how it was made."""

    audio: Audio
    gain_db: float  # broadband gain applied after the EQ (0 when loudness was not matched)
    method: str  # loudness method used for both signals, see :class:`Loudness`
    limited_db: float  # how far below the target loudness the output stays to keep |x| <= 1 (>= 0)
    note: str  # "" or why loudness was not matched


class LoudnessMatcher:
    """Loudness (BS.1770 via pyloudnorm) and, with ``spectral``, long-term spectrum of the reference.

    The output never exceeds full scale: when the matched gain would clip, the whole segment is
    scaled down to a peak of 1.0 and the shortfall is reported (``Match.limited_db``, a warning).
    """

    def __init__(self, spectral: bool = True, max_eq_db: float = MAX_EQ_DB):
        self.spectral = spectral
        self.max_eq_db = max_eq_db
        self.name = "loudness+eq" if spectral else "loudness"

    def match(self, audio: Audio, reference: Audio) -> Audio:
        return self.match_detail(audio, reference).audio

    def match_detail(self, audio: Audio, reference: Audio) -> Match:
        y = match_spectrum(audio, reference, self.max_eq_db) if self.spectral else audio
        gated = min(y.seconds, reference.seconds) >= BLOCK_SECONDS
        have, want = measure_loudness(y, gated), measure_loudness(reference, gated)
        if not (np.isfinite(have.lufs) and np.isfinite(want.lufs)):
            note = (f"loudness not matched: audio {have.lufs:.1f} LUFS, reference {want.lufs:.1f} LUFS "
                    f"({have.method}; nan = empty, silent or too short)")
            log.warning(note)
            return Match(y, 0.0, have.method, 0.0, note)
        if not gated:
            log.info("segment shorter than %.1f s: loudness matched by K-weighted RMS, not gated BS.1770",
                     BLOCK_SECONDS)
        gain_db = want.lufs - have.lufs
        out = np.asarray(y.samples, np.float64) * 10.0 ** (gain_db / 20.0)
        peak = float(np.max(np.abs(out)))
        limited_db = 0.0
        if peak > 1.0:
            limited_db = 20.0 * np.log10(peak)
            out /= peak
            log.warning("matched segment would clip: scaled down by %.2f dB below the reference loudness", limited_db)
        return Match(Audio(out.astype(np.float32), y.sample_rate), gain_db - limited_db, have.method, limited_db, "")


@dataclass(frozen=True)
class Remix:
    """A new track and how its level was set (:func:`remix_to_loudness`)."""

    track: np.ndarray  # (n,) background + speech * speech gain, times the track gain (may exceed full scale)
    speech: np.ndarray  # (n,) the speech as it is in ``track`` (both gains applied)
    speech_gain_db: float
    track_gain_db: float
    lufs: float  # of ``track``; nan when undefined
    target_lufs: float  # of the original track; nan when undefined


def remix_to_loudness(background: np.ndarray, speech: np.ndarray, original: np.ndarray, sr: int,
                      max_speech_gain_db: float = MAX_EQ_DB, iterations: int = 8,
                      tolerance_lu: float = 0.01) -> Remix:
    """``background + speech`` with the original track's integrated loudness (BS.1770).

    Matching each speech segment to the original *speech stem* is not enough: the separated
    speech and background of the original are correlated (what one holds of the other: held
    vowels in the background, notes in the speech), so ``|speech + background|²`` carries a
    cross term a new, independent speech lacks, and the remix comes out quieter than the
    original (measured ~1-2 LU on the synthetic dubs). The new speech is therefore raised (or
    lowered) by one gain, at most ``max_speech_gain_db``, until the whole track's loudness is the
    original's (fixed-point steps of the loudness difference: the mix moves at most 1 LU per dB
    of speech gain, so the steps never overshoot); whatever is left (no speech, gain limit) is a
    gain on the whole track. The background keeps its level unless that last gain is needed.
    All arrays (n,) at ``sr``.
    """
    b = np.asarray(background, np.float64)
    s = np.asarray(speech, np.float64)

    def lufs(x: np.ndarray) -> float:
        return measure_loudness(Audio(x, sr)).lufs

    target = lufs(np.asarray(original, np.float64))
    if not np.isfinite(target):
        return Remix((b + s).astype(np.float32), s.astype(np.float32), 0.0, 0.0, lufs(b + s), target)
    g_db = 0.0
    have = lufs(b + s)
    if np.any(s):
        for _ in range(iterations):
            if not np.isfinite(have) or abs(target - have) <= tolerance_lu:
                break
            g_db = float(np.clip(g_db + target - have, -max_speech_gain_db, max_speech_gain_db))
            have = lufs(b + s * 10.0 ** (g_db / 20.0))
    s = s * 10.0 ** (g_db / 20.0)
    t_db = float(target - have) if np.isfinite(have) and abs(target - have) > tolerance_lu else 0.0
    t = 10.0 ** (t_db / 20.0)
    track, s = (b + s) * t, s * t
    return Remix(track.astype(np.float32), s.astype(np.float32), g_db, t_db, lufs(track), target)
