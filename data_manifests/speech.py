"""Speech-like sound for the synthetic dubs: syllables that differ by language, and their envelope.

Not speech, only what a dub changes: per language a run of **syllables**, each
a short voiced burst (a harmonic source at a pitch of 100-220 Hz, gliding down
a little, shaped by the two formants of one vowel of the language's vowel set)
with a smooth rise and fall. A language is its :class:`Voice` (mean pitch,
syllable rate and length, vowel set), derived from the tag alone, so "spa"
sounds alike in every build; *when* its syllables fall is drawn per clip.

The envelope (:func:`speech_envelope`) is what a mouth would follow: the
synthetic video's mouth region is lit by the original language's envelope.
Planning (random: :func:`sample_syllables`) and rendering (deterministic:
:func:`render_speech`) are separate, so a syllable list fully describes a layer.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# (F1, F2) Hz of a few vowels (adult averages, Peterson & Barney-like); a language uses 3-5.
VOWELS = {
    "i": (270.0, 2290.0), "e": (530.0, 1840.0), "a": (730.0, 1090.0), "o": (570.0, 840.0),
    "u": (300.0, 870.0), "ae": (660.0, 1720.0), "ih": (390.0, 1990.0), "uh": (520.0, 1190.0),
}
_BANDWIDTHS = (90.0, 130.0)  # Hz, of F1 and F2
_TOP_HZ = 4000.0  # harmonics above carry little of a vowel and cost time
RAMP_SECONDS = 0.03  # rise and fall of a syllable's envelope


@dataclass(frozen=True)
class Voice:
    """What makes a language sound like itself: pitch, tempo and vowels."""

    pitch: float  # Hz, mean f0
    rate: float  # syllables per second, on average
    syllable_seconds: tuple[float, float]  # shortest, longest syllable
    vowels: tuple[str, ...]  # keys of VOWELS


@dataclass(frozen=True)
class Syllable:
    """One voiced burst: [start, end) seconds, its pitch at the start and its vowel."""

    start: float
    end: float
    f0: float
    vowel: str


def voice_for(language: str) -> Voice:
    """The language's voice, from its tag only (crc32: Python's ``hash`` of a str changes per run)."""
    rng = np.random.default_rng([zlib.crc32(language.lower().encode()), 11])
    shortest = float(rng.uniform(0.08, 0.12))
    vowels = tuple(str(v) for v in rng.choice(sorted(VOWELS), size=int(rng.integers(3, 6)), replace=False))
    return Voice(pitch=float(rng.uniform(100.0, 220.0)), rate=float(rng.uniform(3.0, 5.5)),
                 syllable_seconds=(shortest, shortest + float(rng.uniform(0.08, 0.14))), vowels=vowels)


def sample_syllables(rng: np.random.Generator, voice: Voice, lo: float, hi: float) -> list[Syllable]:
    """Syllables inside [lo, hi) s at random times: a random first onset, then random gaps.

    Gaps are >= 40 ms plus an exponential part whose mean makes ``voice.rate``
    syllables per second on average. Times are rounded to 1 us, so a list
    written to JSON renders the same layer.
    """
    short, long_ = voice.syllable_seconds
    mean_gap = max(1.0 / voice.rate - (short + long_) / 2 - 0.04, 0.01)
    out: list[Syllable] = []
    t = lo + float(rng.uniform(0.0, 1.0 / voice.rate))
    while True:
        dur = float(rng.uniform(short, long_))
        if t + dur > hi:
            return out
        f0 = voice.pitch * 2.0 ** float(rng.uniform(-0.2, 0.2))
        out.append(Syllable(round(t, 6), round(t + dur, 6), round(f0, 3), str(rng.choice(voice.vowels))))
        t += dur + 0.04 + float(rng.exponential(mean_gap))


def syllable_envelope(t: np.ndarray, duration: float) -> np.ndarray:
    """Amplitude at ``t`` s after a syllable's start: raised-cosine rise and fall, flat between, 0 outside."""
    t = np.asarray(t, dtype=np.float64)
    ramp = min(RAMP_SECONDS, duration / 3)
    edge = np.clip(np.minimum(t, duration - t) / ramp, 0.0, 1.0)
    return np.where((t >= 0) & (t < duration), 0.5 - 0.5 * np.cos(np.pi * edge), 0.0)


def speech_envelope(t: np.ndarray, syllables: Sequence[Syllable | tuple[float, float]]) -> np.ndarray:
    """The layer's envelope (0..1) at times ``t`` (s); syllables are (start, end) or :class:`Syllable`."""
    t = np.asarray(t, dtype=np.float64)
    env = np.zeros_like(t)
    for s in syllables:
        start, end = (s.start, s.end) if isinstance(s, Syllable) else s
        env += syllable_envelope(t - start, end - start)  # syllables never overlap
    return env


def formant_gain(freq: np.ndarray, vowel: str) -> np.ndarray:
    """Magnitude of a two-resonance vowel filter at ``freq`` Hz (peak ~1 at each formant)."""
    f = np.asarray(freq, dtype=np.float64)
    return sum(1.0 / np.sqrt(1.0 + ((f - fc) / bw) ** 2) for fc, bw in zip(VOWELS[vowel], _BANDWIDTHS))


def render_syllable(s: Syllable, t: np.ndarray, sample_rate: int) -> np.ndarray:
    """Samples of one syllable at ``t`` s after its start (t: (n,)); |x| <= 1.

    Pitch glides down 10 % over the syllable (a falling intonation); harmonic
    amplitudes follow the vowel's formants with a -6 dB/octave source tilt and
    are normalised by their sum, so the peak can never exceed the envelope.
    """
    dur = s.end - s.start
    f0 = s.f0 * (1.0 - 0.1 * np.clip(t / dur, 0.0, 1.0))  # (n,)
    phase = 2.0 * np.pi * np.cumsum(f0) / sample_rate
    top = min(_TOP_HZ, 0.45 * sample_rate)
    h = np.arange(1, max(1, int(top // s.f0)) + 1, dtype=np.float64)  # (H,)
    amp = formant_gain(h * s.f0, s.vowel) / h
    wave = (amp[:, None] * np.sin(h[:, None] * phase[None, :])).sum(axis=0) / amp.sum()
    return syllable_envelope(t, dur) * wave


def render_speech(syllables: Sequence[Syllable], n: int, sample_rate: int, offset: float = 0.0) -> np.ndarray:
    """(n,) float64 layer with every syllable; sample i is at ``offset + i / sample_rate`` s."""
    out = np.zeros(n)
    for s in syllables:
        i0 = max(0, int(round((s.start - offset) * sample_rate)))
        i1 = min(n, int(math.ceil((s.end - offset) * sample_rate)))
        if i1 > i0:
            out[i0:i1] += render_syllable(s, offset + np.arange(i0, i1) / sample_rate - s.start, sample_rate)
    return out
