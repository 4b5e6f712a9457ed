"""Voice conversion towards the original speaker (dubs paper §6, step 5).

The paper uses LVC-VC, a trained model. :class:`PitchShiftConverter` is the weightless
approximation that runs anywhere: it moves the synthetic voice's median pitch to the
original speaker's (the most audible speaker trait a formant synthesiser gets wrong), and
nothing else. :class:`ModelVoiceConverter` is the slot for a real model, loaded only from
a local directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import librosa
import numpy as np
from scipy.signal import resample_poly

from .stages import Audio, MissingWeights, StageError

log = logging.getLogger(__name__)

STAGE = "voice"
FMIN, FMAX = 60.0, 400.0  # Hz: the f0 range of adult speech
MAX_SEMITONES = 12.0  # more than an octave is no longer the same kind of voice
ANALYSIS_RATE = 16000  # f0 <= 400 Hz needs no more; pyin's cost grows with the rate
MIN_VOICED_FRAMES = 5  # 5 x 16 ms: fewer voiced frames make a median pitch meaningless
MIN_SHIFT_SAMPLES = 256  # one STFT frame at least


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x
    g = gcd(int(rate), int(target))
    return resample_poly(x, target // g, rate // g)


def median_f0(audio: Audio) -> float:
    """Median f0 (Hz) of the voiced frames of ``audio`` (librosa.pyin, 60-400 Hz, 64 ms frames, 16 ms
    hop at 16 kHz); nan when fewer than MIN_VOICED_FRAMES frames are voiced (silence, noise, too short)."""
    x = _resample(np.asarray(audio.samples, np.float64), audio.sample_rate, ANALYSIS_RATE)
    if len(x) < 1024 or not np.any(x):
        return float("nan")
    f0, voiced, _ = librosa.pyin(x, fmin=FMIN, fmax=FMAX, sr=ANALYSIS_RATE, frame_length=1024, hop_length=256)
    f0 = f0[voiced & np.isfinite(f0)]
    return float(np.median(f0)) if len(f0) >= MIN_VOICED_FRAMES else float("nan")


@dataclass(frozen=True)
class Shift:
    """A converted segment and how it was made."""

    audio: Audio
    semitones: float  # applied (0 when unchanged)
    wanted_semitones: float  # before clamping to ±MAX_SEMITONES; nan when a pitch was not found
    note: str  # "" or why the audio was left unchanged / the shift clamped


class PitchShiftConverter:
    """Shift ``audio`` so its median f0 is the reference's (librosa.effects.pitch_shift), within ±12 semitones.

    An unvoiced reference (or audio) leaves the audio unchanged, with a log line saying so.
    """

    name = "pitch-shift"

    def convert(self, audio: Audio, reference: Audio) -> Audio:
        return self.shift(audio, reference).audio

    def shift(self, audio: Audio, reference: Audio) -> Shift:
        f_ref, f_audio = median_f0(reference), median_f0(audio)
        if not (np.isfinite(f_ref) and np.isfinite(f_audio)):
            which = "reference" if not np.isfinite(f_ref) else "audio"
            note = f"voice unchanged: no pitch found in the {which} (unvoiced, silent or too short)"
            log.info(note)
            return Shift(audio, 0.0, float("nan"), note)
        wanted = 12.0 * float(np.log2(f_ref / f_audio))
        steps = float(np.clip(wanted, -MAX_SEMITONES, MAX_SEMITONES))
        note = "" if steps == wanted else f"shift of {wanted:+.1f} semitones clamped to {steps:+.0f}"
        if note:
            log.warning(note)
        x = np.asarray(audio.samples, np.float32)
        if abs(steps) < 0.01 or len(x) < MIN_SHIFT_SAMPLES:  # < 0.01 semitone is inaudible: keep the original
            return Shift(audio, 0.0, wanted, note or "shift below 0.01 semitone or audio too short")
        n_fft = min(2 ** int(round(np.log2(0.046 * audio.sample_rate))), 2 ** int(np.floor(np.log2(len(x)))))
        y = librosa.effects.pitch_shift(x, sr=audio.sample_rate, n_steps=steps, n_fft=n_fft, hop_length=n_fft // 4)
        return Shift(Audio(np.clip(y, -1.0, 1.0).astype(np.float32), audio.sample_rate), steps, wanted, note)


MODEL_FILE = "model.pt"  # TorchScript (torch.jit.save)
WEIGHTS_HINT = ("give --voice-weights DIR: a local folder with model.pt (TorchScript, called as "
                "model(audio (1, n), reference (1, m)) -> (1, n') float32) and optionally config.json "
                "{\"sample_rate\": Hz} (the rate it works at); nothing is downloaded")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ModelVoiceConverter:
    """A voice-conversion model from local weights, run on the CPU.

    ``weights_dir`` holds ``model.pt``, a TorchScript module (``torch.jit.save``; deprecated in
    torch 2.11 but what released VC models ship). Not ``torch.export`` programs:
    ``torch.export.load`` falls back to unpickling with ``weights_only=False``. TorchScript is
    code, so load only models you trust; ``sha256`` (optional) pins the file, and its hash is
    in ``name`` so every output records which model made it. ``config.json`` may give
    ``sample_rate``: audio and reference are resampled to it and the output back. The output
    keeps the input's length (frame-based models return a few samples more or less: padded
    or cut); a length off by more than 10% is an error.
    """

    def __init__(self, weights_dir: str | Path | None, sha256: str | None = None):
        path = Path(weights_dir) / MODEL_FILE if weights_dir else None
        if path is None or not path.is_file():
            raise MissingWeights(STAGE, f"no {MODEL_FILE} in {str(weights_dir)!r}; {WEIGHTS_HINT}")
        digest = _sha256(path)
        if sha256 and digest != sha256.lower():
            raise StageError(STAGE, f"{path} has sha256 {digest}, expected {sha256}")
        config_path = path.parent / "config.json"
        try:
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
            self.model_rate = int(config["sample_rate"]) if config.get("sample_rate") else None
        except (ValueError, TypeError, AttributeError) as e:
            raise StageError(STAGE, f"bad {config_path}: {e}") from e
        self.path, self.sha256 = path, digest
        self.name = f"model-vc:{digest[:12]}"
        self._model = self._load(path)

    @staticmethod
    def _load(path: Path):
        import torch  # only this plug-in needs torch

        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # a corrupt or foreign file: say which and why
            raise StageError(STAGE, f"cannot load {path} as TorchScript: {type(e).__name__}: {e}") from e
        return model.eval()

    def convert(self, audio: Audio, reference: Audio) -> Audio:
        import torch

        if len(audio.samples) == 0:
            return audio
        rate = self.model_rate or audio.sample_rate
        x = _resample(np.asarray(audio.samples, np.float64), audio.sample_rate, rate).astype(np.float32)
        r = _resample(np.asarray(reference.samples, np.float64), reference.sample_rate, rate).astype(np.float32)
        try:
            with torch.inference_mode():
                out = self._model(torch.from_numpy(x)[None], torch.from_numpy(r)[None])  # (1, n), (1, m) -> (1, n')
        except Exception as e:  # TorchScript raises torch.jit.Error and others: one failure row per clip
            raise StageError(STAGE, f"{self.name} failed: {type(e).__name__}: {str(e)[-500:]}") from e
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
            raise StageError(STAGE, f"{self.name} returned {getattr(out, 'shape', type(out))}, expected (1, n)")
        y = out[0].detach().to(torch.float64).numpy()
        if not np.all(np.isfinite(y)):
            raise StageError(STAGE, f"{self.name} returned non-finite samples")
        y = _resample(y, rate, audio.sample_rate)
        n = len(audio.samples)
        if abs(len(y) - n) > 0.1 * max(n, 1):
            raise StageError(STAGE, f"{self.name} returned {len(y)} samples for {n}: not a timing-preserving converter")
        y = np.concatenate([y[:n], np.zeros(max(0, n - len(y)))])
        return Audio(np.clip(y, -1.0, 1.0).astype(np.float32), audio.sample_rate)
