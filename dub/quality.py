"""Quality checks of a new (dubbed) track against the original: pure functions on arrays.

Every check returns a :class:`Check` ``{value, threshold, passed}`` (plus unit and detail);
``passed`` is None when the check does not apply (e.g. a silent background). All arrays are
mono float at one sample rate ``sr``; times are seconds from the track's start.

- ``duration``: ``|n_new - n_original|`` in samples of the *decoded* tracks (both read back
  from their containers by scav's decoder); threshold one AAC frame (1024 samples at the new
  stream's rate, expressed at ``sr``).
- ``onsets``: for each dubbed segment, the start of the first 10 ms frame of the new speech
  stem whose RMS is within ``threshold_db`` (default 30 dB) of the stem's loudest frames (their
  99th percentile), among the frames that start after the previous segment's end (and at most
  ``search`` s before this segment's start) and before this segment's end. Value:
  the largest ``|onset - segment start|`` over segments (a segment with no sound: infinite);
  threshold ``tolerance`` (default 0.1 s).
- ``loudness``: ``|L(new track) - L(original track)|`` in LU, integrated loudness (ITU-R
  BS.1770, gated) of the two *whole tracks as stored* (decoded from the new file): what a
  listener hears, not the stems (the speech stems' difference is in the detail; it can be
  larger, since the remix raises the new speech by what the original's correlated speech and
  background shared, dub/loudness.py ``remix_to_loudness``); threshold 0.5 LU.
- ``background``: Pearson correlation between the new track's background, defined as *the
  decoded new track minus the new speech stem* (so it carries whatever the remix, the clipping
  guard and the AAC round trip did to the background), and the separator's background stem of
  the original. Threshold 0.9. Not applicable (passed None) when the background is silent
  (RMS below -80 dBFS), where a correlation means nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

ONSET_TOLERANCE = 0.1  # seconds
LOUDNESS_TOLERANCE = 0.5  # LU
BACKGROUND_MIN_CORRELATION = 0.9
AAC_FRAME = 1024  # samples
_FRAME = 0.01  # seconds per energy frame of the onset detector
_SILENT_RMS = 1e-4  # -80 dBFS


@dataclass(frozen=True)
class Check:
    """One measured property: ``value`` against ``threshold``; ``passed`` None = not applicable."""

    value: float | None
    threshold: float
    passed: bool | None
    unit: str = ""
    detail: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["value"] is not None and not math.isfinite(d["value"]):
            d["value"] = None if math.isnan(d["value"]) else str(d["value"])  # JSON has no inf
        return d


def duration_check(n_new: int, n_original: int, sr: int, stream_rate: int | None = None) -> Check:
    """New and original decoded track lengths (samples at ``sr``) agree within one AAC frame of the
    new stream (``stream_rate``, default ``sr``)."""
    tol = AAC_FRAME * sr / (stream_rate or sr)
    diff = abs(int(n_new) - int(n_original))
    return Check(float(diff), float(tol), diff <= tol, "samples",
                 f"new {n_new} vs original {n_original} samples at {sr} Hz")


def frame_rms(x: np.ndarray, sr: int, frame: float = _FRAME) -> np.ndarray:
    """(F,) RMS of consecutive non-overlapping frames of ``frame`` s (the last partial frame dropped)."""
    hop = max(1, int(round(frame * sr)))
    n = len(x) // hop
    blocks = np.asarray(x[: n * hop], dtype=np.float64).reshape(n, hop)
    return np.sqrt(np.mean(blocks * blocks, axis=1))


def speech_onsets(speech: np.ndarray, sr: int, segments: Sequence[tuple[float, float]], *,
                  threshold_db: float = -30.0, search: float = 0.25, frame: float = _FRAME) -> np.ndarray:
    """(S,) the measured speech onset of each (start, end) segment (rule in the module docstring);
    NaN where no frame is loud enough. Segments must be sorted by start."""
    rms = frame_rms(speech, sr, frame)
    out = np.full(len(segments), np.nan)
    if len(rms) == 0 or rms.max() <= 0:
        return out
    ref = float(np.percentile(rms[rms > 0], 99))
    active = rms >= max(ref * 10.0 ** (threshold_db / 20.0), 1e-7)
    prev_end = -math.inf
    for k, (start, end) in enumerate(segments):
        lo = max(prev_end, start - search, 0.0)
        # frames that start at or after ``lo``: none of them holds the previous segment's tail
        f0, f1 = int(math.ceil(lo / frame - 1e-9)), int(math.ceil(end / frame - 1e-9))
        hits = np.flatnonzero(active[f0:f1])
        if len(hits):
            out[k] = (f0 + hits[0]) * frame
        prev_end = end
    return out


def onset_check(new_speech: np.ndarray, sr: int, segments: Sequence[tuple[float, float]],
                tolerance: float = ONSET_TOLERANCE, **kw) -> Check:
    """Each dubbed segment's speech starts within ``tolerance`` s of the original segment's start."""
    if not segments:
        return Check(None, tolerance, None, "s", "no segments")
    starts = np.array([s for s, _ in segments])
    onsets = speech_onsets(new_speech, sr, segments, **kw)
    err = np.abs(onsets - starts)
    silent = int(np.isnan(err).sum())
    worst = math.inf if silent else float(err.max())
    detail = (f"{len(segments)} segments, median |error| {np.nanmedian(err) if silent < len(err) else math.nan:.3f} s"
              + (f", {silent} without sound" if silent else ""))
    return Check(worst, tolerance, worst <= tolerance, "s", detail)


def loudness_lufs(x: np.ndarray, sr: int) -> float:
    """Integrated loudness (LUFS, BS.1770 gated); -inf for silence or under 0.4 s of audio.

    Measured with dub/loudness.py (the matcher's own meter) when it is installed, else with
    pyloudnorm directly: the same BS.1770 meter either way.
    """
    x = np.asarray(x, dtype=np.float64)
    if len(x) < int(0.4 * sr) or not np.any(x):
        return -math.inf
    try:
        from .loudness import loudness_lufs as measure
        from .stages import Audio

        value = float(measure(Audio(x.astype(np.float32), sr)))
    except ImportError:
        import pyloudnorm

        with np.errstate(divide="ignore"):
            value = float(pyloudnorm.Meter(sr).integrated_loudness(x))
    return value if math.isfinite(value) else -math.inf


def loudness_check(new: np.ndarray, original: np.ndarray, sr: int,
                   tolerance: float = LOUDNESS_TOLERANCE, note: str = "") -> Check:
    """Integrated loudness of ``new`` within ``tolerance`` LU of ``original``'s (``note`` appended to
    the detail)."""
    a, b = loudness_lufs(new, sr), loudness_lufs(original, sr)
    if not math.isfinite(b):
        return Check(None, tolerance, None, "LU", "original silent" + note)
    diff = abs(a - b) if math.isfinite(a) else math.inf
    return Check(diff, tolerance, diff <= tolerance, "LU", f"new {a:.2f} LUFS vs original {b:.2f} LUFS" + note)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length signals (NaN if either is constant)."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else math.nan


def background_check(new_track: np.ndarray, new_speech: np.ndarray, original_background: np.ndarray,
                     min_correlation: float = BACKGROUND_MIN_CORRELATION) -> Check:
    """Pearson(new track - new speech, original background) >= ``min_correlation``."""
    n = min(len(new_track), len(new_speech), len(original_background))
    bg = np.asarray(original_background[:n], dtype=np.float64)
    rms = math.sqrt(float(np.mean(bg * bg))) if n else 0.0
    if rms < _SILENT_RMS:
        return Check(None, min_correlation, None, "r", f"background silent (RMS {rms:.1e})")
    r = pearson(np.asarray(new_track[:n], np.float64) - np.asarray(new_speech[:n], np.float64), bg)
    return Check(r, min_correlation, bool(r >= min_correlation), "r", f"{n} samples")


def track_checks(*, original_track: np.ndarray, new_track: np.ndarray, original_speech: np.ndarray,
                 new_speech: np.ndarray, background: np.ndarray, sr: int,
                 segments: Sequence[tuple[float, float]], stream_rate: int | None = None,
                 onset_tolerance: float = ONSET_TOLERANCE, loudness_tolerance: float = LOUDNESS_TOLERANCE,
                 min_background_correlation: float = BACKGROUND_MIN_CORRELATION) -> dict[str, Check]:
    """All checks of one new track: ``original_track``/``new_track`` decoded from the containers,
    the stems as the pipeline made them (all at ``sr``)."""
    return {
        "duration": duration_check(len(new_track), len(original_track), sr, stream_rate),
        "onsets": onset_check(new_speech, sr, segments, onset_tolerance),
        "loudness": loudness_check(new_track, original_track, sr, loudness_tolerance,
                                   note=f"; speech stems {_stem_difference(new_speech, original_speech, sr)}"),
        "background": background_check(new_track, new_speech, background, min_background_correlation),
    }


def _stem_difference(new_speech: np.ndarray, original_speech: np.ndarray, sr: int) -> str:
    a, b = loudness_lufs(new_speech, sr), loudness_lufs(original_speech, sr)
    return f"{a - b:+.2f} LU" if math.isfinite(a) and math.isfinite(b) else "n/a"


def all_passed(checks: dict[str, Check]) -> bool:
    """True when no applicable check failed."""
    return all(c.passed is not False for c in checks.values())
