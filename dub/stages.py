"""The stages of the counterfactual-pair pipeline (dubs paper §6, Fig. 5, Appendix C).

Every stage is a small interface (a Protocol) with implementations that run here and
plug-ins for the paper's heavy models, loaded only from local weights. Audio is mono float32
in [-1, 1] at a sample rate given with it; times are seconds from the clip's start.

    original track ──separate──> speech + background
    speech ──segment/transcribe──> segments (start, end, text)
    text ──translate──> text in the target language
    text ──synthesize──> speech in the target language, per segment
    segment audio ──fit to the original segment's duration──> timed segment
    ──convert voice towards the original speaker──> ──match loudness and spectrum──>
    remix with the background ──mux──> a new, language-tagged audio track
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


class StageError(Exception):
    """A stage could not process a clip; ``stage`` names it (it becomes a failure row)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


class MissingWeights(StageError):
    """A plug-in was asked for without the weights it needs (not given, not found, not in the cache)."""


def call_stage(stage: str, fn: Callable, *args):
    """``fn(*args)``; any error becomes a StageError naming ``stage`` (a failure row, not a traceback)."""
    try:
        return fn(*args)
    except StageError:
        raise
    except Exception as e:  # noqa: BLE001 - a stage's library error is that stage's failure
        raise StageError(stage, f"{type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class Audio:
    """Mono samples (n,) float32 in [-1, 1] and their rate."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class Stems:
    speech: Audio
    background: Audio  # same length and rate as speech; speech + background ~ the original


@dataclass(frozen=True)
class Segment:
    """One stretch of speech: [start, end) seconds, its text (None before transcription)."""

    start: float
    end: float
    text: str | None = None
    language: str | None = None  # ISO 639-2 tag of the text, e.g. 'eng'

    @property
    def seconds(self) -> float:
        return self.end - self.start


@runtime_checkable
class Separator(Protocol):
    name: str

    def separate(self, audio: Audio) -> Stems: ...


@runtime_checkable
class Segmenter(Protocol):
    """Speech segments of a speech stem, with text when the segmenter transcribes."""

    name: str

    def segment(self, speech: Audio, language: str | None) -> list[Segment]: ...


@runtime_checkable
class Transcriber(Protocol):
    """Text of given segments (a segmenter that finds times without words needs one)."""

    name: str

    def transcribe(self, speech: Audio, segments: list[Segment], language: str | None) -> list[Segment]: ...


@runtime_checkable
class Translator(Protocol):
    name: str

    def translate(self, text: str, source: str, target: str) -> str: ...


@runtime_checkable
class Synthesizer(Protocol):
    """Speech for a text in a language, at ``sample_rate``."""

    name: str

    def synthesize(self, text: str, language: str, sample_rate: int) -> Audio: ...


@runtime_checkable
class Stretcher(Protocol):
    """The audio time-stretched (pitch kept) to exactly ``seconds``."""

    name: str

    def fit(self, audio: Audio, seconds: float) -> Audio: ...


@runtime_checkable
class VoiceConverter(Protocol):
    """``audio`` spoken with a voice closer to ``reference``'s speaker."""

    name: str

    def convert(self, audio: Audio, reference: Audio) -> Audio: ...


@runtime_checkable
class Matcher(Protocol):
    """``audio`` with the loudness (and long-term spectrum) of ``reference``."""

    name: str

    def match(self, audio: Audio, reference: Audio) -> Audio: ...


# Per-file context: a stage that needs to know which media it is working on (the synthetic
# build's known stems and script) has ``for_media(info) -> bound stage``; the pipeline calls
# it once per media file (``dub.registry.bind_stages``) and uses what it returns.


@dataclass
class DubStages:
    """The stage implementations one scav-dub run uses (``dub.registry.build_stages`` builds them from options)."""

    separator: Separator
    segmenter: Segmenter
    transcriber: Transcriber | None
    translator: Translator
    synthesizer: Synthesizer
    stretcher: Stretcher
    voice: VoiceConverter
    matcher: Matcher
    extra: dict = field(default_factory=dict)

    def names(self) -> dict[str, str]:
        """Stage -> implementation name, recorded with every output."""
        return {k: getattr(v, "name", type(v).__name__) for k, v in vars(self).items() if v is not None and k != "extra"}
