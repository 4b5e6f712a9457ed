"""The scav-dub pipeline: media files -> the same files with new, dub-like audio tracks.

Dubs paper §6, Fig. 5. The unit of work is one **media file** (every manifest row that
uses it: clips are windows of one file). For each file, one fixed sequence::

    skip if done -> decode the original track -> separate speech / background
    -> segment (+ transcribe) -> per target language, per segment:
         translate -> synthesize -> stretch to the segment's duration
         -> convert the voice towards the original segment -> match it to the original segment
       placed at the segment's original start in a silent track of the original's length
    -> remix with the background -> mux (every original stream copied, one AAC dub per
       language) -> check (dub/quality.py, on the tracks read back from the new file)
    -> record

- **Original track**: the container's audio stream that extract/decode.py calls original
  (flagged ``original``, else the first not flagged ``dub``), decoded mono at
  ``DubConfig.sample_rate`` over the whole file. New tracks are written at that rate, mono.
- **Outputs** (``out``): ``media/<the row's relative path>`` (``.mp4`` appended unless it is
  one; absolute or ``..`` paths go under ``media/external/``), ``manifest.csv`` (the input rows
  of every finished file, pointing at the new files: ``scav-extract out/manifest.csv`` reads
  every track with its language), ``dub_report.json`` (stage implementations, quality checks
  per file and language, timings, failures), ``failures.csv`` and ``records/`` (one JSON per
  file: what a rerun trusts). Nothing is written outside ``out`` (and ``keep_stages``).
- **Resuming**: a file whose record says done, with the same targets, stage implementations
  and rate, and whose output exists, is skipped. Files that failed are recorded too and not
  retried unless ``retry_failed`` (as scav-extract). Every file is written to a temporary name
  and renamed (core/files.py), so a killed run leaves no half file; a rerun redoes only the
  unfinished files and removes temporaries left by dead processes.
- **Failures** never stop the run: a file that cannot be dubbed (undecodable, a stage error,
  a target language the file already has) becomes a row ``path, language, stage, reason``.
  A file is all or nothing: it is written only when every target language succeeded.
- **Quality checks** (dub/quality.py) are reported, never enforced: a file that fails a check
  is still written (the CLI's ``--strict`` turns them into exit code 1).

Stages that must know which file they work on (the synthetic benchmark's known stems and
known script) implement ``for_media(info: MediaInfo) -> stage``; the pipeline calls it once
per file and uses the stage it returns.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..data_manifests.manifest import ManifestRow, load_manifest, write_manifest
from .stages import Audio, MissingWeights, Segment, StageError, Stages, Stems

log = logging.getLogger(__name__)

MEDIA_DIR = "media"
RECORDS_DIR = "records"
MANIFEST_NAME = "manifest.csv"
REPORT_NAME = "dub_report.json"
FAILURES_NAME = "failures.csv"
REPORT_VERSION = 1
LANGUAGE = re.compile(r"^[a-z]{3}$")  # ISO 639-2, what mp4 stores
_LENGTH_SLACK = 0.002  # s: a stage may return this much more or less than asked (rounding); more is an error

# option -> implementation: (stage, choice) -> (module, class, weights option or None). Imported
# only when chosen, so `scav-dub --help` and the tests of other stages need none of them.
IMPLEMENTATIONS: dict[tuple[str, str], tuple[str, str, str | None]] = {
    ("separator", "known"): ("scav.dub.separate", "KnownStemsSeparator", None),
    ("separator", "spectral"): ("scav.dub.separate", "SpectralMaskSeparator", None),
    ("separator", "demucs"): ("scav.dub.separate", "DemucsSeparator", "demucs_weights"),
    ("segmenter", "known"): ("scav.dub.segment", "KnownScriptSegmenter", None),
    ("segmenter", "vad"): ("scav.dub.segment", "VadSegmenter", None),
    ("transcriber", "known"): ("scav.dub.segment", "KnownScriptTranscriber", None),
    ("transcriber", "whisper"): ("scav.dub.segment", "WhisperTranscriber", "whisper_dir"),
    ("translator", "dictionary"): ("scav.dub.translate", "DictionaryTranslator", None),
    ("translator", "seamless"): ("scav.dub.translate", "SeamlessTranslator", "seamless_dir"),
    ("synthesizer", "espeak"): ("scav.dub.tts", "EspeakSynthesizer", None),
    ("stretcher", "librosa"): ("scav.dub.timing", "LibrosaStretcher", None),
    ("voice", "pitch"): ("scav.dub.voice", "PitchShiftConverter", None),
    ("voice", "model"): ("scav.dub.voice", "ModelVoiceConverter", "voice_weights"),
    ("matcher", "loudness"): ("scav.dub.loudness", "LoudnessMatcher", None),
}
# the verb a failure row names for each Stages field
STAGE_VERBS = {"separator": "separate", "segmenter": "segment", "transcriber": "transcribe",
               "translator": "translate", "synthesizer": "synthesize", "stretcher": "stretch",
               "voice": "voice", "matcher": "match"}


@dataclass(frozen=True)
class StageOptions:
    """Which implementation each stage uses, and the local weights of the plug-ins."""

    separator: str = "known"
    segmenter: str = "known"
    transcriber: str | None = None  # None: 'known' with the VAD segmenter, else the segmenter's own text
    translator: str = "dictionary"
    synthesizer: str = "espeak"
    stretcher: str = "librosa"
    voice: str = "pitch"
    matcher: str = "loudness"
    demucs_weights: Path | None = None
    whisper_dir: Path | None = None
    seamless_dir: Path | None = None
    voice_weights: Path | None = None

    def choices(self) -> dict[str, str]:
        """Stage -> chosen option (the transcriber resolved)."""
        transcriber = self.transcriber or ("known" if self.segmenter == "vad" else None)
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
                    raise MissingWeights(STAGE_VERBS[stage], f"{stage} {choice!r} needs local weights: give {flag} "
                                                             "(nothing is downloaded)")
                if not Path(path).exists():
                    raise MissingWeights(STAGE_VERBS[stage], f"{flag} {path} does not exist")


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
    loudness_tolerance: float = 1.0  # LU
    min_background_correlation: float = 0.9
    progress: bool = True

    def validate(self) -> None:
        if not self.targets:
            raise ValueError("give at least one target language (--target spa)")
        for t in self.targets:
            if not isinstance(t, str) or not LANGUAGE.match(t):
                raise ValueError(f"target language {t!r} is not a three-letter ISO 639-2 code in lower case "
                                 "(e.g. spa, fra, deu): mp4 stores only those")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"a target language is given twice: {list(self.targets)}")
        if self.source_language is not None:
            if not LANGUAGE.match(self.source_language):
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

    def fingerprint(self, stage_names: dict[str, str]) -> dict:
        """What a finished file must have been made with to be skipped on a rerun."""
        return {"targets": list(self.targets), "source_language": self.source_language,
                "stages": stage_names, "sample_rate": self.sample_rate, "bit_rate": self.bit_rate}


@dataclass(frozen=True)
class MediaInfo:
    """One media file as the stages may need it (``for_media``)."""

    path: Path  # the input media file
    rows: tuple[ManifestRow, ...]  # manifest rows cut from it (clips are windows of it)
    media_root: Path  # relative manifest paths are resolved against this (the manifest's folder by default)
    language: str | None  # the original track's language tag, if it has one
    seconds: float  # length of the decoded original track


@dataclass
class MediaJob:
    key: str  # output path relative to out/media (posix)
    source: Path  # resolved input path
    rows: list[ManifestRow]

    @property
    def path(self) -> str:
        return self.rows[0].path


# -- stages -------------------------------------------------------------------------


def build_stages(options: StageOptions) -> Stages:
    """Stages from options, importing only the chosen implementations (MissingWeights, ValueError)."""
    import importlib

    options.validate()
    built: dict[str, Any] = {"transcriber": None}
    for stage, choice in options.choices().items():
        module, cls, weights = IMPLEMENTATIONS[(stage, choice)]
        try:
            impl = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"{stage} {choice!r} is not available: {module}.{cls} ({e})") from None
        built[stage] = impl(getattr(options, weights)) if weights else impl()
    return Stages(**built)


def bind_stages(stages: Stages, info: MediaInfo) -> Stages:
    """The stages for one file: each one with ``for_media`` replaced by what it returns."""
    bound = {}
    for name in STAGE_VERBS:
        st = getattr(stages, name)
        hook = getattr(st, "for_media", None)
        if st is not None and callable(hook):
            bound[name] = _call(STAGE_VERBS[name], hook, info)
        else:
            bound[name] = st
    return Stages(**bound, extra=stages.extra)


def check_languages(stages: Stages, targets: Sequence[str]) -> None:
    """ValueError for a target the synthesizer or translator says it cannot do (when they can say)."""
    for t in targets:
        voice_for = getattr(stages.synthesizer, "voice_for", None)
        if callable(voice_for):
            try:
                voice_for(t)
            except (StageError, ValueError, KeyError) as e:
                raise ValueError(f"unknown target language {t!r} for {stages.names()['synthesizer']}: "
                                 f"{getattr(e, 'reason', e)}") from None
        supports = getattr(stages.translator, "supports_target", None)
        if callable(supports) and not supports(t):
            raise ValueError(f"unknown target language {t!r} for {stages.names()['translator']}")


def _call(stage: str, fn: Callable, *args):
    """``fn(*args)``; any error becomes a StageError naming ``stage`` (a failure row, not a traceback)."""
    try:
        return fn(*args)
    except StageError:
        raise
    except Exception as e:  # noqa: BLE001 - a stage's library error is that stage's failure
        raise StageError(stage, f"{type(e).__name__}: {e}") from None


def _checked(stage: str, audio: Any, sr: int, n: int | None = None) -> np.ndarray:
    """A stage's Audio output as (n,) float32 at ``sr``; StageError when it is not that."""
    if not isinstance(audio, Audio):
        raise StageError(stage, f"returned {type(audio).__name__}, not Audio")
    if audio.sample_rate != sr:
        raise StageError(stage, f"returned {audio.sample_rate} Hz audio, asked for {sr} Hz")
    x = np.asarray(audio.samples, dtype=np.float32).reshape(-1)
    if not np.isfinite(x).all():
        raise StageError(stage, "returned non-finite samples")
    if n is not None and len(x) != n:
        if abs(len(x) - n) > max(1, int(_LENGTH_SLACK * sr)):
            raise StageError(stage, f"returned {len(x)} samples, expected {n} ({len(x) / sr:.3f} s vs {n / sr:.3f} s)")
        x = np.pad(x, (0, n - len(x))) if len(x) < n else x[:n]
    return x


# -- reading -------------------------------------------------------------------------


def read_audio(path: str | os.PathLike, sample_rate: int):
    """Every audio stream of a container over the whole file, as scav's decoder reads them
    (:func:`scav.extract.decode.read_audio_tracks`: samples mono at ``sample_rate``,
    language, original flag; tests check it equals ``decode_clip``'s audio)."""
    from ..extract import decode

    return decode.read_audio_tracks(path, sample_rate)


def original_index(tracks) -> int:
    """Position of the original track (flagged by the decoder's rule), else 0."""
    return next((k for k, t in enumerate(tracks) if t.original), 0)


# -- planning ------------------------------------------------------------------------


def output_key(row_path: str, resolved: Path) -> str:
    """Where a media file's dub goes, relative to ``out/media``: the row's relative path (``.mp4``
    appended unless it ends so); an absolute or ``..`` path goes to ``external/<hash>-<name>``."""
    p = PurePosixPath(row_path.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
        p = PurePosixPath("external") / f"{digest}-{resolved.name}"
    return str(p if p.suffix.lower() == ".mp4" else p.with_name(p.name + ".mp4"))


def plan_jobs(rows: Sequence[ManifestRow], media_root: Path) -> list[MediaJob]:
    """Rows grouped by media file, in the order files first appear."""
    jobs: dict[Path, MediaJob] = {}
    used: set[str] = set()
    for r in rows:
        src = r.resolve(media_root).resolve()
        if src not in jobs:
            key = output_key(r.path, src)
            if key in used:  # 'x' and 'x.mp4' are two files: the second gets a name of its own
                p = PurePosixPath(key)
                key = str(p.with_name(f"{hashlib.sha1(str(src).encode()).hexdigest()[:10]}-{p.name}"))
            used.add(key)
            jobs[src] = MediaJob(key, src, [])
        jobs[src].rows.append(r)
    return list(jobs.values())


# -- one file ------------------------------------------------------------------------


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


class _Keep:
    """Writes stage audio and segment JSON under keep_stages/<file key>/ (or nothing)."""

    def __init__(self, root: Path | None, key: str, sr: int):
        self.dir = None if root is None else Path(root) / key
        self.sr = sr

    def wav(self, name: str, x: np.ndarray) -> None:
        if self.dir is not None:
            write_wav(self.dir / f"{name}.wav", x, self.sr)

    def json(self, name: str, payload: Any) -> None:
        if self.dir is not None:
            from ..core.files import atomic_path

            with atomic_path(self.dir / f"{name}.json") as tmp:
                tmp.write_text(json.dumps(payload, indent=1) + "\n")


def write_wav(path: Path, x: np.ndarray, sr: int) -> None:
    """16-bit PCM mono WAV, atomically."""
    import wave

    from ..core.files import atomic_path

    pcm = np.round(np.clip(np.asarray(x, np.float64), -1.0, 1.0) * 32767.0).astype("<i2")
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sr)
            w.writeframes(pcm.tobytes())


def _segments(raw: Any, seconds: float, stage: str = "segment") -> list[Segment]:
    """Segments sorted by start, clipped to the track, empty ones dropped (StageError if not segments)."""
    if not isinstance(raw, (list, tuple)) or not all(isinstance(s, Segment) for s in raw):
        raise StageError(stage, "did not return a list of Segments")
    out = []
    for s in sorted(raw, key=lambda s: (s.start, s.end)):
        start, end = max(0.0, float(s.start)), min(seconds, float(s.end))
        if not (math.isfinite(start) and math.isfinite(end)):
            raise StageError(stage, f"segment with non-finite times {s}")
        if end > start:
            out.append(dataclasses.replace(s, start=start, end=end))
    return out


def _place(track: np.ndarray, x: np.ndarray, i0: int) -> None:
    """Add ``x`` into ``track`` starting at sample ``i0`` (what falls past the end is dropped)."""
    i1 = min(len(track), i0 + len(x))
    if i1 > i0:
        track[i0:i1] += x[: i1 - i0]


def dub_language(stages: Stages, stems: Stems, segments: Sequence[Segment], source: str | None, target: str,
                 timer: _Timer, keep: _Keep) -> tuple[np.ndarray, list[dict]]:
    """The new speech track (n,) for ``target`` and a log entry per segment."""
    sr = stems.speech.sample_rate
    n_total = len(stems.speech.samples)
    speech = np.zeros(n_total, np.float32)
    stage_tracks = {k: np.zeros(n_total, np.float32) for k in ("synthesized", "stretched", "voiced")} \
        if keep.dir is not None else None
    entries = []
    for seg in segments:
        i0, i1 = int(round(seg.start * sr)), int(round(seg.end * sr))
        n = i1 - i0
        entry = {"start": seg.start, "end": seg.end, "text": seg.text,
                 "language": seg.language or source, "translation": None}
        entries.append(entry)
        if n <= 0 or not (seg.text or "").strip():
            entry["skipped"] = "no text" if n > 0 else "shorter than one sample"
            continue
        src = seg.language or source
        if src is None:
            raise StageError("translate", "the source language is unknown (the original track has no language "
                                          "tag and the segments none): give --source-language")
        ref = Audio(np.ascontiguousarray(stems.speech.samples[i0:i1], dtype=np.float32), sr)
        with timer("translate"):
            text = _call("translate", stages.translator.translate, seg.text, src, target)
        if not isinstance(text, str):
            raise StageError("translate", f"returned {type(text).__name__}, not text")
        entry["translation"] = text
        if not text.strip():
            entry["skipped"] = "empty translation"
            continue
        with timer("synthesize"):
            syn = _checked("synthesize", _call("synthesize", stages.synthesizer.synthesize, text, target, sr), sr)
        with timer("stretch"):
            fit = _checked("stretch", _call("stretch", stages.stretcher.fit, Audio(syn, sr), n / sr), sr, n)
        with timer("voice"):
            voiced = _checked("voice", _call("voice", stages.voice.convert, Audio(fit, sr), ref), sr, n)
        with timer("match"):
            matched = _checked("match", _call("match", stages.matcher.match, Audio(voiced, sr), ref), sr, n)
        entry.update(synthesized_seconds=round(len(syn) / sr, 4),
                     stretch_rate=round(len(syn) / n, 4) if len(syn) else None)
        _place(speech, matched, i0)
        if stage_tracks is not None:
            _place(stage_tracks["synthesized"], syn, i0)
            _place(stage_tracks["stretched"], fit, i0)
            _place(stage_tracks["voiced"], voiced, i0)
    if stage_tracks is not None:
        for name, x in stage_tracks.items():
            keep.wav(f"{target}/{name}", x)
    return speech, entries


def check_language(cfg: DubConfig, original, new, speech: np.ndarray, background: np.ndarray, made: dict) -> dict:
    """The quality record of one new track: ``original``/``new`` as read back from the new file
    (extract/decode.py's DecodedAudio), the stems and what :func:`dub_language` made."""
    from . import quality

    if new.language != made["language"] or new.original:
        raise StageError("check", f"the new file's track reads back as {new.language!r} (original={new.original}), "
                                  f"not as the {made['language']!r} dub")
    dubbed = [(e["start"], e["end"]) for e in made["entries"] if e.get("translation") and "skipped" not in e]
    checks = quality.track_checks(
        original_track=original.samples, new_track=new.samples, original_speech=speech, new_speech=made["speech"],
        background=background, sr=cfg.sample_rate, segments=dubbed, onset_tolerance=cfg.onset_tolerance,
        loudness_tolerance=cfg.loudness_tolerance, min_background_correlation=cfg.min_background_correlation)
    rates = [e["stretch_rate"] for e in made["entries"] if e.get("stretch_rate")]
    return {
        "checks": {k: c.to_dict() for k, c in checks.items()},
        "passed": quality.all_passed(checks),
        "segments": len(made["entries"]),
        "dubbed_segments": len(dubbed),
        # synthesised / original duration per segment (> 1: the dub had to be sped up)
        "stretch_rate": {"min": min(rates), "median": float(np.median(rates)), "max": max(rates)} if rates else None,
        "clipped_fraction": made["clipped_fraction"],
    }


def dub_media(job: MediaJob, stages: Stages, cfg: DubConfig, media_root: Path, out_path: Path) -> dict:
    """Dub one media file to ``out_path``; returns its record (raises StageError on failure)."""
    from ..extract.decode import DecodeError
    from .mux import MuxError, NewTrack, mux_tracks

    sr = cfg.sample_rate
    timer = _Timer()
    keep = _Keep(cfg.keep_stages, job.key, sr)
    with timer("decode"):
        try:
            tracks = read_audio(job.source, sr)
        except DecodeError as e:
            raise StageError("decode", f"{e.stage}: {e.reason}") from None
    k_orig = original_index(tracks)
    original = tracks[k_orig]
    have = {(t.language or "").lower() for t in tracks} | {
        t.language.lower() for r in job.rows for t in r.audio_tracks}
    if any(t.original for r in job.rows for t in r.audio_tracks):
        raise StageError("plan", "the manifest marks an original track in a separate file; scav-dub reads the "
                                 "original from the media file itself (mux that track into it first)")
    present = [t for t in cfg.targets if t in have]
    if present:
        raise StageError("plan", f"the file already has a track in {', '.join(present)}; drop that --target")
    x = np.asarray(original.samples, np.float32)
    if len(x) == 0:
        raise StageError("decode", "the original track is empty")
    info = MediaInfo(job.source, tuple(job.rows), media_root, original.language, len(x) / sr)
    bound = bind_stages(stages, info)
    keep.wav("original", x)

    with timer("separate"):
        stems = _call("separate", bound.separator.separate, Audio(x, sr))
    if not isinstance(stems, Stems):
        raise StageError("separate", f"returned {type(stems).__name__}, not Stems")
    speech = _checked("separate", stems.speech, sr, len(x))
    background = _checked("separate", stems.background, sr, len(x))
    stems = Stems(Audio(speech, sr), Audio(background, sr))
    keep.wav("speech", speech)
    keep.wav("background", background)

    source = cfg.source_language or original.language
    with timer("segment"):
        segments = _segments(_call("segment", bound.segmenter.segment, stems.speech, source), len(x) / sr)
    if bound.transcriber is not None:
        with timer("transcribe"):
            segments = _segments(_call("transcribe", bound.transcriber.transcribe, stems.speech, segments, source),
                                 len(x) / sr, "transcribe")
    elif segments and all(s.text is None for s in segments):
        raise StageError("transcribe", f"segmenter {bound.names()['segmenter']} gives no text and no transcriber "
                                       "was chosen (--transcriber known|whisper)")
    if not segments:
        log.warning("%s: no speech segments found; the new tracks are the background alone", job.path)
    if cfg.source_language:  # the user's word overrides whatever the segmenter guessed
        segments = [dataclasses.replace(s, language=cfg.source_language) for s in segments]
    keep.json("segments", [dataclasses.asdict(s) for s in segments])

    new_tracks, per_language = [], {}
    for target in cfg.targets:
        try:
            new_speech, entries = dub_language(bound, stems, segments, source, target, timer, keep)
        except StageError as e:
            e.language = target  # the failure row says which language
            raise
        with timer("remix"):
            mix = new_speech + background
            clipped = float(np.mean(np.abs(mix) > 1.0))
            mix = np.clip(mix, -1.0, 1.0)
        keep.wav(f"{target}/matched", new_speech)
        keep.wav(f"{target}/mix", mix)
        keep.json(f"{target}/segments", entries)
        new_tracks.append(NewTrack(mix, sr, target, cfg.bit_rate))
        per_language[target] = {"language": target, "speech": new_speech, "entries": entries,
                                 "clipped_fraction": clipped}

    with timer("mux"):
        from ..core.files import remove_stale_tmp

        remove_stale_tmp(out_path)
        try:
            mux = mux_tracks(job.source, out_path, new_tracks)
        except (MuxError, ValueError) as e:
            raise StageError("mux", str(e)) from None

    with timer("check"):
        try:
            written = read_audio(out_path, sr)
        except DecodeError as e:
            raise StageError("check", f"the new file does not decode: {e}") from None
        languages = {target: check_language(cfg, written[k_orig], written[len(tracks) + j], speech, background,
                                            per_language[target])
                     for j, target in enumerate(cfg.targets)}
    return {
        "status": "done",
        "path": job.path,
        "output": f"{MEDIA_DIR}/{job.key}",
        "clip_ids": [r.clip_id for r in job.rows],
        "seconds_of_audio": round(len(x) / sr, 3),
        "original_track": {"index": k_orig, "language": original.language},
        "segments": len(segments),
        "languages": languages,
        "mux": mux.to_dict() | {"path": f"{MEDIA_DIR}/{job.key}"},
        "timings": {k: round(v, 4) for k, v in timer.seconds.items()},
    }


# -- the run -------------------------------------------------------------------------


def _record_path(out: Path, key: str) -> Path:
    return out / RECORDS_DIR / (key + ".json")


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, payload: Any) -> None:
    from ..core.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1) + "\n")


def _failure_row(job: MediaJob, e: StageError) -> dict:
    return {"path": job.path, "language": getattr(e, "language", "") or "", "stage": e.stage,
            "reason": e.reason, "clip_ids": ";".join(r.clip_id for r in job.rows)}


def run(cfg: DubConfig, stages: Stages | None = None) -> dict:
    """Dub every pending media file of the manifest into ``cfg.out``; returns a summary dict.

    ``stages``: the implementations to use (tests pass doubles); default built from
    ``cfg.stages``. Raises ValueError / ManifestError / MissingWeights for bad input before
    anything is written; a file that fails is a failure row, never an exception.
    """
    t0 = time.perf_counter()
    cfg.validate()
    rows = load_manifest(cfg.manifest)
    media_root = Path(cfg.media_root) if cfg.media_root is not None else Path(cfg.manifest).resolve().parent
    stages = stages if stages is not None else build_stages(cfg.stages)
    check_languages(stages, cfg.targets)
    names = stages.names()
    fingerprint = cfg.fingerprint(names)
    out = Path(cfg.out)
    jobs = plan_jobs(rows, media_root)
    if cfg.limit is not None:
        jobs = jobs[: cfg.limit]

    records: dict[str, dict] = {}
    pending: list[MediaJob] = []
    for job in jobs:
        rec = _read_record(_record_path(out, job.key))
        same = rec is not None and rec.get("fingerprint") == fingerprint and rec.get("path") == job.path
        if same and rec["status"] == "done" and (out / rec["output"]).is_file():
            records[job.key] = rec
        elif same and rec["status"] == "failed" and not cfg.retry_failed:
            records[job.key] = rec
        else:
            pending.append(job)
    log.info("%d media files, %d already done or failed earlier, %d to dub", len(jobs), len(jobs) - len(pending),
             len(pending))

    from tqdm.auto import tqdm

    new_failures: list[dict] = []
    dubbed = 0
    with tqdm(total=len(pending), unit="file", desc="dub", dynamic_ncols=True, disable=not cfg.progress) as bar:
        for job in pending:
            t_file = time.perf_counter()
            try:
                rec = dub_media(job, stages, cfg, media_root, out / MEDIA_DIR / job.key)
                dubbed += 1
            except StageError as e:
                row = _failure_row(job, e)
                log.warning("%s: %s failed: %s", job.path, e.stage, e.reason)
                rec = {"status": "failed", "path": job.path, "failure": row}
                new_failures.append(row)
            rec["fingerprint"] = fingerprint
            rec["seconds"] = round(time.perf_counter() - t_file, 3)
            _write_json(_record_path(out, job.key), rec)
            records[job.key] = rec
            bar.update(1)

    done = [job for job in jobs if records[job.key]["status"] == "done"]
    failures = [records[job.key]["failure"] for job in jobs if records[job.key]["status"] == "failed"]
    manifest_path = _write_outputs(cfg, out, media_root, done, failures)
    quality_rows = [{"path": records[j.key]["path"], "output": records[j.key]["output"], "language": lang,
                     "passed": v["passed"], "checks": v["checks"]}
                    for j in done for lang, v in records[j.key]["languages"].items()]
    timings: Counter = Counter()
    for j in jobs:
        timings.update(records[j.key].get("timings", {}))
    seconds = time.perf_counter() - t0
    summary = {
        "stages": names,
        "targets": list(cfg.targets),
        "sample_rate": cfg.sample_rate,
        "files": len(jobs),
        "clips": sum(len(j.rows) for j in jobs),
        "already_done": len(jobs) - len(pending),
        "dubbed": dubbed,
        "done": len(done),
        "failed": len(failures),
        "failed_now": len(new_failures),
        "failed_by_stage": dict(sorted(Counter(f["stage"] for f in failures).items())),
        "failures": failures,
        "quality": quality_rows,
        "quality_failed": sum(not q["passed"] for q in quality_rows),
        "timings": {k: round(v, 3) for k, v in sorted(timings.items())},
        "seconds": round(seconds, 3),
        "out": str(out),
        "manifest": str(manifest_path),
        "report": str(out / REPORT_NAME),
    }
    report = {"version": REPORT_VERSION, **{k: summary[k] for k in ("stages", "targets", "sample_rate")},
              "config": {"source_language": cfg.source_language, "bit_rate": cfg.bit_rate,
                         "onset_tolerance": cfg.onset_tolerance, "loudness_tolerance": cfg.loudness_tolerance,
                         "min_background_correlation": cfg.min_background_correlation,
                         "options": {k: str(v) if isinstance(v, Path) else v
                                     for k, v in dataclasses.asdict(cfg.stages).items()}},
              "summary": {k: v for k, v in summary.items() if k not in ("failures", "quality")},
              "files": {j.key: records[j.key] for j in jobs}, "failures": failures}
    _write_json(out / REPORT_NAME, report)
    return summary


def _write_outputs(cfg: DubConfig, out: Path, media_root: Path, done: list[MediaJob], failures: list[dict]) -> Path:
    """out/manifest.csv (rows of finished files, new paths) and out/failures.csv."""
    from ..core.files import atomic_path

    rows = []
    out_abs = out.resolve()
    for job in done:
        for r in job.rows:
            tracks = tuple(dataclasses.replace(t, path=os.path.relpath(t.resolve(media_root).resolve(), out_abs))
                           for t in r.audio_tracks)
            rows.append(dataclasses.replace(r, path=f"{MEDIA_DIR}/{job.key}", audio_tracks=tracks))
    manifest_path = out / MANIFEST_NAME
    if rows:
        write_manifest(rows, manifest_path)
    elif manifest_path.exists():
        manifest_path.unlink()  # no finished file: no manifest, rather than an empty one scav-extract rejects
    with atomic_path(out / FAILURES_NAME) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["path", "language", "stage", "reason", "clip_ids"])
            w.writeheader()
            w.writerows(failures)
    return manifest_path
