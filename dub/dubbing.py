"""Dub one media file: decode -> separate -> segment (+ transcribe) -> per language: translate,
synthesize, stretch, convert the voice, match -> remix -> mux -> check (see dub/pipeline.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .audio_io import original_index, read_audio, write_wav
from .config import DubConfig, MediaInfo
from .languages import same_language
from .plan import MediaJob
from .records import MEDIA_DIR
from .registry import bind_stages
from .stages import Audio, DubStages, Segment, StageError, Stems, call_stage

log = logging.getLogger(__name__)

_LENGTH_SLACK = 0.002  # s: a stage may return this much more or less than asked (rounding); more is an error


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
            from ..core.files import write_json_atomic

            write_json_atomic(self.dir / f"{name}.json", payload, indent=1)


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


def dub_language(stages: DubStages, stems: Stems, segments: Sequence[Segment], source: str | None, target: str,
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
            text = call_stage("translate", stages.translator.translate, seg.text, src, target)
        if not isinstance(text, str):
            raise StageError("translate", f"returned {type(text).__name__}, not text")
        entry["translation"] = text
        if not text.strip():
            entry["skipped"] = "empty translation"
            continue
        with timer("synthesize"):
            syn = _checked("synthesize", call_stage("synthesize", stages.synthesizer.synthesize, text, target, sr), sr)
        with timer("stretch"):
            fit = _checked("stretch", call_stage("stretch", stages.stretcher.fit, Audio(syn, sr), n / sr), sr, n)
        with timer("voice"):
            voiced = _checked("voice", call_stage("voice", stages.voice.convert, Audio(fit, sr), ref), sr, n)
        with timer("match"):
            matched = _checked("match", call_stage("match", stages.matcher.match, Audio(voiced, sr), ref), sr, n)
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
        "remix_gain_db": {"speech": made["speech_gain_db"], "track": made["track_gain_db"]},
    }


def dub_media(job: MediaJob, stages: DubStages, cfg: DubConfig, media_root: Path, out_path: Path,
              previous: dict | None = None) -> dict:
    """Dub one media file to ``out_path``; returns its record (raises StageError on failure).

    ``previous``: the record of an earlier run whose output (``out_path``) holds tracks in other
    languages: the new file is then made from that output (its tracks in this run's targets
    dropped), so that the earlier languages are kept; the input media file is read, never written.
    """
    from ..extract.decode import DecodeError
    from .loudness import remix_to_loudness
    from .mux import MuxError, NewTrack, mux_tracks

    sr = cfg.sample_rate
    timer = _Timer()
    keep = _Keep(cfg.keep_stages, job.key, sr)
    kept = {k: v for k, v in (previous or {}).get("languages", {}).items() if k not in cfg.targets}
    base = out_path if kept else job.source  # the file whose streams are copied
    with timer("decode"):
        try:
            tracks = read_audio(base, sr)
        except DecodeError as e:
            raise StageError("decode", f"{e.stage}: {e.reason}") from None
    # an earlier run's dub in one of this run's targets is made again: its stream is not copied
    drop = [k for k, t in enumerate(tracks) if kept and not t.original and any(same_language(t.language, x) for x in cfg.targets)]
    tracks = [t for k, t in enumerate(tracks) if k not in drop]
    k_orig = original_index(tracks)
    original = tracks[k_orig]
    have = [t.language for t in tracks] + [t.language for r in job.rows for t in r.audio_tracks]
    if any(t.original for r in job.rows for t in r.audio_tracks):
        raise StageError("plan", "the manifest marks an original track in a separate file; scav-dub reads the "
                                 "original from the media file itself (mux that track into it first)")
    present = [t for t in cfg.targets if any(same_language(t, h) for h in have)]
    if present:
        raise StageError("plan", f"the file already has a track in {', '.join(present)}; drop that --target")
    x = np.asarray(original.samples, np.float32)
    if len(x) == 0:
        raise StageError("decode", "the original track is empty")
    info = MediaInfo(job.source, tuple(job.rows), media_root, original.language, len(x) / sr)
    bound = bind_stages(stages, info)
    keep.wav("original", x)

    with timer("separate"):
        stems = call_stage("separate", bound.separator.separate, Audio(x, sr))
    if not isinstance(stems, Stems):
        raise StageError("separate", f"returned {type(stems).__name__}, not Stems")
    speech = _checked("separate", stems.speech, sr, len(x))
    background = _checked("separate", stems.background, sr, len(x))
    stems = Stems(Audio(speech, sr), Audio(background, sr))
    keep.wav("speech", speech)
    keep.wav("background", background)

    source = cfg.source_language or original.language
    with timer("segment"):
        segments = _segments(call_stage("segment", bound.segmenter.segment, stems.speech, source), len(x) / sr)
    if bound.transcriber is not None:
        with timer("transcribe"):
            segments = _segments(call_stage("transcribe", bound.transcriber.transcribe, stems.speech, segments, source),
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
            # the whole track to the original's loudness: the stems alone lose what the separated
            # speech and background share (dub/loudness.py, remix_to_loudness)
            remix = remix_to_loudness(background, new_speech, x, sr)
            new_speech = remix.speech
            mix = remix.track
            clipped = float(np.mean(np.abs(mix) > 1.0))
            mix = np.clip(mix, -1.0, 1.0)
        keep.wav(f"{target}/matched", new_speech)
        keep.wav(f"{target}/mix", mix)
        keep.json(f"{target}/segments", entries)
        new_tracks.append(NewTrack(mix, sr, target, cfg.bit_rate))
        per_language[target] = {"language": target, "speech": new_speech, "entries": entries,
                                 "clipped_fraction": clipped, "speech_gain_db": round(remix.speech_gain_db, 3),
                                 "track_gain_db": round(remix.track_gain_db, 3)}

    with timer("mux"):
        try:
            mux = mux_tracks(base, out_path, new_tracks, drop_audio=drop)
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
    languages = kept | languages
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


