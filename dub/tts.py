"""Speech synthesis with Debian's espeak-ng (the weightless stand-in for the paper's TTS step).

espeak-ng is formant synthesis: robotic, but every language the pipeline targets, no
weights, deterministic. It runs as a subprocess (no shell); the text goes in on stdin so
that nothing in it can be read as an option, and control characters are removed first
because espeak-ng reads Ctrl-A (0x01) as the start of an embedded command.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import unicodedata
import wave
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from .languages import language_tag
from .stages import Audio, StageError

STAGE = "synthesize"
INSTALL_HINT = "apt-get install espeak-ng"

# ISO 639-2/T tag (dub.languages.language_tag's form; 639-3 where espeak-ng distinguishes, e.g.
# cmn / yue) -> espeak-ng voice. The paper's seven languages first; the rest are languages
# espeak-ng speaks reasonably.
VOICES: dict[str, str] = {
    "eng": "en-us", "spa": "es", "fra": "fr-fr", "deu": "de", "ita": "it", "jpn": "ja", "kor": "ko",
    "por": "pt", "zho": "cmn", "cmn": "cmn", "yue": "yue", "rus": "ru", "nld": "nl", "pol": "pl", "tur": "tr",
    "ara": "ar", "hin": "hi", "swe": "sv", "dan": "da", "nor": "nb", "nob": "nb", "fin": "fi", "ces": "cs",
    "ell": "el", "heb": "he", "hun": "hu", "ron": "ro", "ukr": "uk", "vie": "vi", "ind": "id", "msa": "ms",
    "tha": "th", "cat": "ca", "bul": "bg", "hrv": "hr", "srp": "sr", "slk": "sk", "slv": "sl", "fas": "fa",
    "urd": "ur", "ben": "bn", "tam": "ta", "tel": "te", "isl": "is", "eus": "eu", "cym": "cy", "afr": "af",
    "swa": "sw",
}
_VOICE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_+")


def clean_text(text: str) -> str:
    """``text`` without control characters (Unicode Cc, surrogates); whitespace runs become one space."""
    kept = (" " if c.isspace() else c for c in text if c.isspace() or unicodedata.category(c) not in ("Cc", "Cs"))
    return " ".join("".join(kept).split())


def _check_voice(voice: str) -> str:
    # A voice is an argv element: one that starts with '-' or holds odd characters could be
    # read by espeak-ng as something else.
    if not voice or voice[0] == "-" or not set(voice) <= _VOICE_CHARS:
        raise ValueError(f"not an espeak-ng voice name: {voice!r}")
    return voice


class EspeakSynthesizer:
    """Speech for a text via ``espeak-ng`` (mono, resampled to the requested rate).

    ``voice_overrides`` maps language tags to espeak-ng voices (e.g. ``{"spa": "es-419",
    "eng": "en-gb+f3"}``); ``speed_wpm`` is espeak-ng's ``-s``. Empty text (after removing
    control characters) gives zero samples, not an error: the stretcher turns it into
    the segment's length of silence.
    """

    name = "espeak-ng"

    def __init__(self, voice_overrides: dict[str, str] | None = None, speed_wpm: int = 160,
                 executable: str = "espeak-ng", timeout_s: float = 120.0):
        if not 80 <= int(speed_wpm) <= 450:  # espeak-ng's own range
            raise ValueError(f"speed_wpm must be within 80..450, got {speed_wpm}")
        self.voices = dict(VOICES)
        self.voices.update({language_tag(k): _check_voice(v) for k, v in (voice_overrides or {}).items()})
        self.speed_wpm = int(speed_wpm)
        self.executable = executable
        self.timeout_s = timeout_s

    def available(self) -> bool:
        """Whether the espeak-ng program can be found."""
        return shutil.which(self.executable) is not None

    def voice_for(self, language: str) -> str:
        """The espeak-ng voice for an ISO 639-2/639-1 tag (case-insensitive; 'pt-BR' falls back to 'pt')."""
        try:
            voice = self.voices.get(language_tag(language.strip().replace("_", "-").split("-")[0]))
        except ValueError:
            voice = None
        if voice is None:
            supported = ", ".join(sorted(self.voices))
            raise StageError(STAGE, f"no espeak-ng voice for language {language!r}; supported (ISO 639-2, "
                                    f"or their 639-1 forms): {supported}; or pass voice_overrides")
        return voice

    def synthesize(self, text: str, language: str, sample_rate: int) -> Audio:
        voice = self.voice_for(language)
        words = clean_text(text)
        if not words:
            return Audio(np.zeros(0, np.float32), sample_rate)
        exe = shutil.which(self.executable)
        if exe is None:
            raise StageError(STAGE, f"espeak-ng is not installed (looked for {self.executable!r}); "
                                    f"install it with `{INSTALL_HINT}`")
        with tempfile.TemporaryDirectory(prefix="scav-tts-") as tmp:
            wav = Path(tmp) / "speech.wav"
            # -b 1: the text is UTF-8; -z: no trailing sentence pause (segments are timed by us);
            # -w: a file, because --stdout writes a WAV header with no length in it.
            cmd = [exe, "-v", voice, "-s", str(self.speed_wpm), "-b", "1", "-z", "-w", str(wav), "--stdin"]
            try:
                proc = subprocess.run(cmd, input=words.encode("utf-8"), capture_output=True, timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                raise StageError(STAGE, f"espeak-ng took over {self.timeout_s:.0f} s "
                                        f"({len(words)} characters)") from None
            if proc.returncode != 0 or not wav.exists():
                err = proc.stderr.decode("utf-8", "replace").strip()
                raise StageError(STAGE, f"espeak-ng failed (exit {proc.returncode}, voice {voice!r}): {err}")
            samples, rate = _read_wav(wav)
        return Audio(_resample(samples, rate, sample_rate), sample_rate)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(n,) float32 mono samples and rate of a 16-bit PCM WAV (what espeak-ng writes)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise StageError(STAGE, f"espeak-ng wrote {8 * w.getsampwidth()}-bit audio; expected 16-bit PCM")
        channels, rate = w.getnchannels(), w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    x = pcm.reshape(-1, channels).mean(axis=1) / 32768.0  # (n,)
    return x.astype(np.float32), rate


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """(n,) -> (~n * target / rate,) float32, polyphase (exact ratio), kept within [-1, 1]."""
    if rate != target:
        g = gcd(int(rate), int(target))
        x = resample_poly(x.astype(np.float64), target // g, rate // g)
    return np.clip(x, -1.0, 1.0).astype(np.float32)  # the anti-alias filter can overshoot a little
