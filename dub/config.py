"""What one scav-dub run is made of: its options (:class:`DubConfig`), the stage choices and
their plug-in registry (:data:`IMPLEMENTATIONS`), and what a stage may know about the file it
works on (:class:`MediaInfo`). Validated, never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data_manifests.manifest import ManifestRow
from .languages import is_stored_tag
from .stages import MissingWeights

# option -> implementation: (stage, choice) -> (module, class, weights option or None). Imported
# only when chosen, so `scav-dub --help` and the tests of other stages need none of them.
IMPLEMENTATIONS: dict[tuple[str, str], tuple[str, str, str | None]] = {
    ("separator", "known"): ("scav.dub.separate", "KnownStemsSeparator", None),
    ("separator", "spectral"): ("scav.dub.separate", "SpectralMaskSeparator", None),
    ("separator", "demucs"): ("scav.dub.separate", "DemucsSeparator", "demucs_weights"),
    ("segmenter", "known"): ("scav.dub.segment", "KnownScriptSegmenter", None),
    ("separator", "torchscript"): ("scav.dub.separate", "TorchScriptSeparator", "separator_model"),
    ("segmenter", "vad"): ("scav.dub.segment", "VadSegmenter", None),
    ("segmenter", "subtitles"): ("scav.dub.subtitles", "Subtitles", "subtitles"),
    ("transcriber", "known"): ("scav.dub.segment", "KnownScriptTranscriber", None),
    ("transcriber", "subtitles"): ("scav.dub.subtitles", "Subtitles", "subtitles"),
    ("transcriber", "whisper"): ("scav.dub.segment", "WhisperTranscriber", "whisper_model"),
    ("translator", "dictionary"): ("scav.dub.translate", "DictionaryTranslator", None),
    ("translator", "seamless"): ("scav.dub.translate", "SeamlessTranslator", "seamless_model"),
    ("synthesizer", "espeak"): ("scav.dub.tts", "EspeakSynthesizer", None),
    ("stretcher", "librosa"): ("scav.dub.timing", "LibrosaStretcher", None),
    ("stretcher", "rubberband"): ("scav.dub.timing", "RubberbandStretcher", None),
    ("voice", "pitch"): ("scav.dub.voice", "PitchShiftConverter", None),
    ("voice", "model"): ("scav.dub.voice", "ModelVoiceConverter", "voice_weights"),
    ("matcher", "loudness"): ("scav.dub.loudness", "LoudnessMatcher", None),
}
# the verb a failure row names for each DubStages field
STAGE_VERBS = {"separator": "separate", "segmenter": "segment", "transcriber": "transcribe",
               "translator": "translate", "synthesizer": "synthesize", "stretcher": "stretch",
               "voice": "voice", "matcher": "match"}
# options a name the library resolves may fill instead of a local path: a Hugging Face hub id (transformers
# downloads it, or reads its cache when HF_HUB_OFFLINE is set), a Demucs model name (torch hub's cache)
HUB_OPTIONS = {"whisper_model", "seamless_model", "demucs_weights"}
_WHAT = {"subtitles": "a folder of subtitle files", "whisper_model": "a local folder or a hub id",
         "seamless_model": "a local folder or a hub id"}


def is_hub_id(name: str) -> bool:
    """True for what a Hugging Face hub id looks like ('openai/whisper-small', 'gpt2'), not a path."""
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") and "\\" not in p and "~" not in p
                                        for p in parts) and not name.startswith("/")


@dataclass(frozen=True)
class StageOptions:
    """Which implementation each stage uses, the plug-ins' weights and the subtitles folder."""

    separator: str = "known"
    segmenter: str = "known"
    transcriber: str | None = None  # None: with the VAD segmenter 'subtitles' if given, else 'known'; else none
    translator: str = "dictionary"
    synthesizer: str = "espeak"
    stretcher: str = "librosa"
    voice: str = "pitch"
    matcher: str = "loudness"
    demucs_weights: Path | None = None
    separator_model: Path | None = None  # a TorchScript separator (plugins.TorchScriptSeparator)
    whisper_model: str | Path | None = None  # a save_pretrained folder or a hub id
    seamless_model: str | Path | None = None  # a save_pretrained folder or a hub id
    voice_weights: Path | None = None
    subtitles: Path | None = None  # a folder of subtitle files, one per media (dub/subtitles.py)

    def choices(self) -> dict[str, str]:
        """Stage -> chosen option (the transcriber resolved)."""
        default = "subtitles" if self.subtitles is not None else "known"
        transcriber = self.transcriber or (default if self.segmenter == "vad" else None)
        d = {k: getattr(self, k) for k in STAGE_VERBS if k != "transcriber"}
        if transcriber:
            d["transcriber"] = transcriber
        return d

    def validate(self) -> None:
        for stage, choice in self.choices().items():
            if (stage, choice) not in IMPLEMENTATIONS:
                known = sorted(c for s, c in IMPLEMENTATIONS if s == stage)
                raise ValueError(f"unknown {stage} {choice!r}; choose one of {', '.join(known)}")
            weights = IMPLEMENTATIONS[(stage, choice)][2]
            if weights is not None:
                path = getattr(self, weights)
                flag = "--" + weights.replace("_", "-")
                if path is None:
                    raise MissingWeights(STAGE_VERBS[stage], f"{stage} {choice!r} needs {flag} "
                                                             f"({_WHAT.get(weights, 'a local file')})")
                if not Path(path).exists() and not (weights in HUB_OPTIONS and is_hub_id(str(path))):
                    raise MissingWeights(STAGE_VERBS[stage], f"{flag} {path} does not exist")
        if self.subtitles is not None and "subtitles" not in self.choices().values():
            raise ValueError("--subtitles is used by --segmenter subtitles or --segmenter vad (its transcriber)")


@dataclass(frozen=True)
class DubConfig:
    """Everything one scav-dub run needs; validated by :meth:`validate`, never changed."""

    manifest: Path
    out: Path
    targets: tuple[str, ...]  # ISO 639-2 tags of the new tracks, e.g. ('spa', 'fra')
    source_language: str | None = None  # default: the segment's language, else the original track's tag
    media_root: Path | None = None  # default: the manifest's folder
    stages: StageOptions = field(default_factory=StageOptions)
    keep_stages: Path | None = None  # write every stage's audio and the segments here
    sample_rate: int = 16000  # Hz of the decoded original, every stage and the new tracks
    bit_rate: int = 96_000  # of each new AAC track
    limit: int | None = None  # only the first N media files of the manifest
    retry_failed: bool = False
    onset_tolerance: float = 0.1  # s
    loudness_tolerance: float = 0.5  # LU, whole track (quality.py)
    min_background_correlation: float = 0.9
    progress: bool = True

    def validate(self) -> None:
        if not self.targets:
            raise ValueError("give at least one target language (--target spa)")
        for t in self.targets:
            if not is_stored_tag(t):
                raise ValueError(f"target language {t!r} is not a three-letter ISO 639-2 code in lower case "
                                 "(e.g. spa, fra, deu): mp4 stores only those")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"a target language is given twice: {list(self.targets)}")
        if self.source_language is not None:
            if not is_stored_tag(self.source_language):
                raise ValueError(f"source language {self.source_language!r} is not a three-letter ISO 639-2 code")
            if self.source_language in self.targets:
                raise ValueError(f"target {self.source_language!r} is the source language")
        if self.sample_rate < 8000 or self.sample_rate > 48000:
            raise ValueError(f"sample_rate must be within 8000..48000 Hz, got {self.sample_rate}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.onset_tolerance <= 0 or self.loudness_tolerance <= 0:
            raise ValueError("tolerances must be > 0")
        if not -1.0 <= self.min_background_correlation <= 1.0:
            raise ValueError("min_background_correlation must be within [-1, 1]")
        out = Path(self.out).resolve()
        if self.keep_stages is not None and Path(self.keep_stages).resolve() == out:
            raise ValueError("--keep-stages must not be the output folder itself (use a subfolder or another one)")
        self.stages.validate()

    def job_key(self, stage_names: dict[str, str]) -> dict:
        """What a track must have been made with to be kept as done on a rerun (recorded per language)."""
        return {"source_language": self.source_language,
                "stages": stage_names, "sample_rate": self.sample_rate, "bit_rate": self.bit_rate}


@dataclass(frozen=True)
class MediaInfo:
    """One media file as the stages may need it (``for_media``)."""

    path: Path  # the input media file
    rows: tuple[ManifestRow, ...]  # manifest rows cut from it (clips are windows of it)
    media_root: Path  # relative manifest paths are resolved against this (the manifest's folder by default)
    language: str | None  # the original track's language tag, if it has one
    seconds: float  # length of the decoded original track
