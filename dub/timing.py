"""Fitting synthesised segments to the original segments' durations (dubs paper §6, step 4).

A segment is time-stretched with its pitch kept, to exactly ``round(seconds * rate)``
samples. Stretching speech by more than about 2x either way sounds broken, so the rate is
clamped to [MIN_RATE, MAX_RATE]; past that the speech is stretched as far as allowed and
then padded with silence at the end (speech too short) or cut at the end (speech too long).
Every fit reports this in a :class:`Fit` (``clamped``, seconds padded/cut) and the
Protocol method ``fit`` logs a warning for it, so a pipeline can record or reject it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from .stages import Audio, StageError

log = logging.getLogger(__name__)

STAGE = "stretch"
MIN_RATE, MAX_RATE = 0.5, 2.0  # rate = input duration / output duration; >1 speeds up
MIN_STRETCH_SAMPLES = 256  # shorter input is padded/cut only: too few samples for one STFT frame


@dataclass(frozen=True)
class Fit:
    """A fitted segment and how it was made."""

    audio: Audio
    wanted_rate: float  # input seconds / target seconds (inf for zero target, nan for empty input)
    rate: float  # the rate actually applied (1.0 when nothing was stretched)
    padded_seconds: float  # silence added at the end
    cut_seconds: float  # audio dropped from the end
    clamped: bool  # the wanted rate could not be applied (outside the range, or input too short)


def _n_fft(sample_rate: int, n: int) -> int:
    """A ~46 ms STFT window (a power of two) that fits in n samples: speech-sized frames
    (librosa's 2048 at 16 kHz smears syllables), never longer than the input."""
    nominal = 2 ** int(round(np.log2(0.046 * sample_rate)))
    return int(min(nominal, 2 ** int(np.floor(np.log2(max(n, 1))))))


def _pad_or_cut(x: np.ndarray, n: int) -> tuple[np.ndarray, int, int]:
    """(x padded with zeros or cut at the end to n samples, samples padded, samples cut)."""
    if len(x) >= n:
        return x[:n], 0, len(x) - n
    return np.concatenate([x, np.zeros(n - len(x), x.dtype)]), n - len(x), 0


def _target_samples(audio: Audio, seconds: float) -> int:
    if not np.isfinite(seconds) or seconds < 0:
        raise StageError(STAGE, f"cannot fit audio to {seconds} s")
    return int(round(seconds * audio.sample_rate))


def _finish(audio: Audio, y: np.ndarray, n: int, wanted: float, rate: float, clamped: bool) -> Fit:
    y, padded, cut = _pad_or_cut(np.asarray(y, np.float32), n)
    sr = audio.sample_rate
    # Rounding to whole samples pads/cuts a few samples even when nothing is clamped: only
    # report what is more than one STFT hop of it.
    slack = _n_fft(sr, len(audio.samples)) // 4
    fit = Fit(Audio(np.clip(y, -1.0, 1.0), sr), wanted, rate,
              padded / sr if padded > slack else 0.0, cut / sr if cut > slack else 0.0, clamped)
    if fit.clamped:
        log.warning("segment of %.3f s fitted to %.3f s: wanted rate %.2f outside [%.1f, %.1f] or input too "
                    "short, applied %.2f, padded %.3f s, cut %.3f s", audio.seconds, n / sr, wanted,
                    MIN_RATE, MAX_RATE, rate, fit.padded_seconds, fit.cut_seconds)
    return fit


def _plan(audio: Audio, seconds: float) -> tuple[int, float, float] | None:
    """(target samples, wanted rate, rate to apply), or None when nothing can be stretched."""
    n = _target_samples(audio, seconds)
    m = len(audio.samples)
    if m == 0 or n == 0:
        return None
    wanted = m / n
    return n, wanted, float(np.clip(wanted, MIN_RATE, MAX_RATE))


class LibrosaStretcher:
    """Phase-vocoder time stretch (``librosa.effects.time_stretch``), pitch kept.

    Measured here: a plain phase vocoder has no phase locking, so the partials of a voice
    partly cancel: stretched speech comes out ~3 LU quieter (1.5x and 0.6x) and phasey.
    The loudness matcher restores the level, not the sound: prefer :class:`RubberbandStretcher`
    where its program is installed (:func:`default_stretcher`).
    """

    name = "librosa-time-stretch"

    def fit(self, audio: Audio, seconds: float) -> Audio:
        return self.stretch(audio, seconds).audio

    def stretch(self, audio: Audio, seconds: float) -> Fit:
        """``audio`` stretched to exactly ``round(seconds * sample_rate)`` samples; see the module doc."""
        plan = _plan(audio, seconds)
        x = np.asarray(audio.samples, np.float32)
        if plan is None or len(x) < MIN_STRETCH_SAMPLES:
            n = _target_samples(audio, seconds)
            wanted = (len(x) / n if n else float("inf")) if len(x) else float("nan")
            # Nothing to stretch: an empty input is no rate problem; speech dropped or padded is.
            return _finish(audio, x, n, wanted, 1.0, clamped=len(x) > 0 and abs(len(x) - n) > 1)
        n, wanted, rate = plan
        if abs(rate - 1.0) < 1e-6:
            return _finish(audio, x, n, wanted, 1.0, clamped=False)
        n_fft = _n_fft(audio.sample_rate, len(x))
        y = librosa.effects.time_stretch(x, rate=rate, n_fft=n_fft, hop_length=n_fft // 4)
        return _finish(audio, y, n, wanted, rate, clamped=rate != wanted)


class RubberbandStretcher:
    """Time stretch with the Rubber Band library's R3 engine through Debian's ``rubberband``
    program (package ``rubberband-cli``; pyrubberband would only wrap the same program).
    Keeps speech loudness within 1 LU where the phase vocoder loses ~3. Same clamping and
    exact length as :class:`LibrosaStretcher`."""

    name = "rubberband-r3"

    def __init__(self, executable: str = "rubberband", timeout_s: float = 120.0):
        self.executable = executable
        self.timeout_s = timeout_s

    def available(self) -> bool:
        return shutil.which(self.executable) is not None

    def fit(self, audio: Audio, seconds: float) -> Audio:
        return self.stretch(audio, seconds).audio

    def stretch(self, audio: Audio, seconds: float) -> Fit:
        plan = _plan(audio, seconds)
        x = np.asarray(audio.samples, np.float32)
        if plan is None or len(x) < MIN_STRETCH_SAMPLES:
            return LibrosaStretcher().stretch(audio, seconds)  # the same pad/cut, no program needed
        n, wanted, rate = plan
        exe = shutil.which(self.executable)
        if exe is None:
            raise StageError(STAGE, "the rubberband program is not installed: `apt-get install rubberband-cli`")
        with tempfile.TemporaryDirectory(prefix="scav-rb-") as tmp:
            src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
            sf.write(src, x, audio.sample_rate, subtype="FLOAT")  # float: no 16-bit rounding in between
            cmd = [exe, "-3", "-q", "--time", f"{1.0 / rate:.9f}", str(src), str(dst)]
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                raise StageError(STAGE, f"rubberband took over {self.timeout_s:.0f} s") from None
            if proc.returncode != 0 or not dst.exists():
                raise StageError(STAGE, f"rubberband failed (exit {proc.returncode}): "
                                        f"{proc.stderr.decode('utf-8', 'replace').strip()[-500:]}")
            y, _ = sf.read(dst, dtype="float32", always_2d=True)
        return _finish(audio, y.mean(axis=1), n, wanted, rate, clamped=rate != wanted)


def default_stretcher() -> RubberbandStretcher | LibrosaStretcher:
    """Rubber Band when its program is installed, else the librosa phase vocoder."""
    rb = RubberbandStretcher()
    return rb if rb.available() else LibrosaStretcher()
