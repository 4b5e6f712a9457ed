"""A synthetic audio-visual benchmark where *when* things happen is all that tells clips apart.

Built to need what MUSIC needs (paper §V): many clips with the same global
content that differ only in their timing.

- A **class** is an "instrument": a coloured shape at a fixed place in the
  frame (the visual object) and a harmonic tone with its own spectrum and
  decay (the timbre).
- A **source** is one long recording of an instrument (its own background
  tint and a slight detune, like another player or room). Several clips are
  cut from it: the manifest's ``start``/``end`` are windows into one file.
- An **event** is a note: at its onset the tone starts (short attack,
  exponential decay) and, at the same instant, the object lights up with the
  *same* envelope. Seen and heard are the same events.
- Every clip has exactly ``events_per_clip`` notes, all starting and ending
  inside the clip, at random times (no fixed beat) on a grid of
  ``grid_seconds`` (160 ms = one BEATs/fbank step, a whole number of frames at
  25 or 12.5 fps) with at least ``min_gap_seconds`` between onsets. Clip
  windows start on the same grid, so every event is sampled at the same phase
  by every clip's frames and audio steps.

So the time average of any per-step feature is (up to codec noise) the same
for every clip of a source: mean-pooling loses exactly the onset times, which
are what separate the clips; the sequences differ. Splits are by source (no
source in two splits). The ground-truth onsets are written to ``events.json``.

**Dubs** (``dub_languages``, e.g. ``("eng", "spa", "fra")``; empty = none, and
then manifest, events and every frame and sample handed to the encoders are
what they were before dubs existed): every
source's mp4 carries one AAC stream per language, tagged with it; the first is
the original (disposition ``original``), the others are dubs (``dub``). All
tracks share every note sample for sample and differ only by a speech-like
layer per language (``speech.py``: syllables at language-specific times and
rates, ``speech_db`` below the notes). A small "mouth" at the bottom left of
the frame is lit by the *original* language's speech envelope, as lips follow
the original dialogue of a film; a dub's syllables fall elsewhere. Speech
stays inside each clip (from one grid step after its start to one before its
end), and its syllables are written to ``events.json``.

Output (``out_dir``)::

    manifest.csv          clip_id,path,start,end,split,label,source
    media/<source>.mp4    H.264 + AAC, one per source (one AAC stream per language with dubs)
    events.json           {"config": ..., "clips": {clip_id: [onset seconds from clip start]},
                           with dubs also "speech": {clip_id: {language: [[start, end], ...]}}}
                          (speech: one [start, end) per syllable, seconds from the clip start)

``build_synthetic`` is deterministic for a config (seed included) and reuses
an existing build with the same config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import speech
from .manifest import ManifestRow, write_manifest
from .media import AudioSpec, write_media

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
EVENTS_NAME = "events.json"
MEDIA_DIR = "media"

# (name, RGB colour, shape) of each instrument's visual object; (f0 Hz,
# harmonic roll-off, odd-harmonics-only, decay s) of its timbre.
_SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond", "hbar", "vbar")
_COLOURS = (
    (0.95, 0.25, 0.20), (0.20, 0.75, 0.30), (0.25, 0.40, 0.95), (0.95, 0.80, 0.15),
    (0.80, 0.30, 0.85), (0.15, 0.85, 0.85), (0.95, 0.55, 0.15), (0.85, 0.85, 0.85),
)
_TIMBRES = (
    (220.0, 1.0, False, 0.12), (294.0, 2.0, True, 0.10), (349.0, 0.6, False, 0.14),
    (415.0, 1.5, True, 0.09), (262.0, 0.8, True, 0.13), (523.0, 1.2, False, 0.10),
    (196.0, 2.5, False, 0.11), (370.0, 0.5, True, 0.12),
)
MAX_CLASSES = len(_SHAPES)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and content of the benchmark (defaults: the demo's budget, 2 CPU cores).

    Defaults give 6 classes x 6 sources x 10 clips of 4 s = 360 clips, split by
    source 4/1/1 per class: 240 train, 60 val, 60 test clips (10 per class
    and source in the test split, so within-class chance R@1 is 1/10).
    """

    seed: int = 0
    classes: int = 6
    sources_per_class: int = 6
    val_sources_per_class: int = 1
    test_sources_per_class: int = 1
    clips_per_source: int = 10
    clip_seconds: float = 4.0
    events_per_clip: int = 4
    fps: float = 25.0
    sample_rate: int = 16000
    frame_size: int = 32  # pixels (square frames)
    grid_seconds: float = 0.16  # onset grid = one fbank/BEATs step
    min_gap_seconds: float = 0.48  # between onsets of a clip
    note_seconds: float = 0.40  # a note (and its flash) lasts this long
    lead_seconds: float = 0.32  # silence before the first clip of a source
    tail_seconds: float = 0.48  # after the last clip (AAC end padding stays outside clips)
    crf: int = 18
    # dubs (module docstring); the first language is the original. Empty: no speech, no mouth.
    dub_languages: tuple[str, ...] = ()
    speech_db: float = -6.0  # speech RMS over its syllables relative to the notes' RMS over the notes

    def validate(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        check(1 <= self.classes <= MAX_CLASSES, f"classes must be in 1..{MAX_CLASSES}, got {self.classes}")
        check(self.sources_per_class >= 1, "sources_per_class must be >= 1")
        check(self.val_sources_per_class >= 0 and self.test_sources_per_class >= 0, "split counts must be >= 0")
        check(
            self.val_sources_per_class + self.test_sources_per_class < self.sources_per_class,
            "at least one source per class must be left for train "
            f"(sources_per_class={self.sources_per_class}, val={self.val_sources_per_class}, "
            f"test={self.test_sources_per_class})",
        )
        check(self.clips_per_source >= 1, "clips_per_source must be >= 1")
        check(self.events_per_clip >= 1, "events_per_clip must be >= 1")
        check(self.fps > 0 and self.sample_rate >= 8000, "fps must be > 0 and sample_rate >= 8000")
        check(self.frame_size >= 16 and self.frame_size % 2 == 0, "frame_size must be even and >= 16")
        check(self.grid_seconds > 0 and self.note_seconds > 0, "grid_seconds and note_seconds must be > 0")
        check(self.min_gap_seconds >= self.note_seconds,
              "min_gap_seconds must be >= note_seconds (notes must not overlap, or time-averages "
              "would depend on the onset times)")
        for name in ("clip_seconds", "lead_seconds"):
            v = getattr(self, name)
            check(abs(v / self.grid_seconds - round(v / self.grid_seconds)) < 1e-6,
                  f"{name} ({v}) must be a multiple of grid_seconds ({self.grid_seconds})")
        n = self.onset_slots
        gap = self.gap_slots
        check(n - (self.events_per_clip - 1) * (gap - 1) >= self.events_per_clip,
              f"{self.events_per_clip} events with {self.min_gap_seconds} s gaps do not fit in a "
              f"{self.clip_seconds} s clip")
        check(isinstance(self.dub_languages, (tuple, list)), "dub_languages must be a tuple of language tags")
        langs = list(self.dub_languages)
        check(all(isinstance(x, str) and _LANGUAGE.match(x) for x in langs),
              f"dub_languages must be language tags (letters, digits, '-', '_'), got {langs}")
        check(len({x.lower() for x in langs}) == len(langs), f"dub_languages has a language twice: {langs}")
        check(math.isfinite(self.speech_db) and self.speech_db < 0,
              f"speech_db must be < 0 (speech quieter than the notes), got {self.speech_db}")
        check(not langs or self.clip_seconds - 2 * self.grid_seconds >= 0.5,
              "with dubs a clip needs >= 0.5 s between its first and last grid step for speech")

    @property
    def gap_slots(self) -> int:
        return int(math.ceil(self.min_gap_seconds / self.grid_seconds - 1e-9))

    @property
    def onset_slots(self) -> int:
        """Grid positions an onset may take: from one grid step after the clip start to the
        last one whose note ends before the last *complete* 160 ms step (the fbank/BEATs
        step rule drops the tail), so every note is fully seen and heard."""
        last = self.clip_seconds - self.grid_seconds - self.note_seconds
        return int(math.floor(last / self.grid_seconds + 1e-9))  # slots 1..n

    def to_dict(self) -> dict:
        """JSON-ready fields. Without dubs the dub fields are left out: they change nothing then,
        and a build from before dubs existed (events.json holds this dict) is still reused."""
        d = dataclasses.asdict(self)
        if not self.dub_languages:
            for name in _DUB_FIELDS:
                del d[name]
        else:
            d["dub_languages"] = list(self.dub_languages)
        return d


_DUB_FIELDS = ("dub_languages", "speech_db")
_LANGUAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class SourcePlan:
    """One long recording: which instrument, which split, and each clip's onsets."""

    name: str
    class_index: int
    source_index: int
    split: str
    clip_onsets: tuple[tuple[float, ...], ...]  # per clip, seconds from the clip start

    def clip_start(self, cfg: SyntheticConfig, k: int) -> float:
        return round(cfg.lead_seconds + k * cfg.clip_seconds, 6)


def class_name(c: int) -> str:
    return f"{_SHAPES[c]}"


def sample_onsets(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[float, ...]:
    """Uniform over onset sets on the grid with at least ``gap_slots`` between onsets.

    Stars and bars: choose E of the n - (E-1)(gap-1) compressed slots, then
    spread them back out by (gap - 1) per earlier onset.
    """
    e, gap, n = cfg.events_per_clip, cfg.gap_slots, cfg.onset_slots
    free = n - (e - 1) * (gap - 1)
    chosen = np.sort(rng.choice(free, size=e, replace=False))
    slots = 1 + chosen + np.arange(e) * (gap - 1)
    return tuple(round(float(s) * cfg.grid_seconds, 6) for s in slots)


def plan_sources(cfg: SyntheticConfig) -> list[SourcePlan]:
    """Every source's class, split and clip onsets; depends only on the config."""
    cfg.validate()
    plans = []
    for c in range(cfg.classes):
        order = np.random.default_rng([cfg.seed, c, 0]).permutation(cfg.sources_per_class)
        split_of = {}
        for rank, s in enumerate(order):
            if rank < cfg.test_sources_per_class:
                split_of[int(s)] = "test"
            elif rank < cfg.test_sources_per_class + cfg.val_sources_per_class:
                split_of[int(s)] = "val"
            else:
                split_of[int(s)] = "train"
        for s in range(cfg.sources_per_class):
            rng = np.random.default_rng([cfg.seed, c, s + 1, 1])
            onsets = tuple(sample_onsets(rng, cfg) for _ in range(cfg.clips_per_source))
            plans.append(SourcePlan(f"{class_name(c)}-s{s}", c, s, split_of[s], onsets))
    return plans


def envelope(t: np.ndarray, decay: float, note_seconds: float, attack: float = 0.003) -> np.ndarray:
    """A note's amplitude at times ``t`` after its onset: linear attack, exponential decay, 0 outside.

    ``attack=0``: full amplitude at the onset itself (the video's flash, so the
    frame at the onset instant is the brightest; the audio keeps a 3 ms ramp
    against clicks).
    """
    t = np.asarray(t, dtype=np.float64)
    t = np.where(np.abs(t) < 1e-7, 0.0, t)  # a frame at the onset instant, up to float round-off
    ramp = np.clip(t / attack, 0, 1) if attack > 0 else 1.0
    env = np.exp(-np.clip(t, 0, None) / decay) * ramp
    return np.where((t >= 0) & (t < note_seconds), env, 0.0)


def _shape_mask(shape: str, size: int) -> np.ndarray:
    """(size, size) float mask in [0, 1] of the instrument's object, centred."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    c = (size - 1) / 2.0
    dy, dx = (y - c) / size, (x - c) / size
    r = np.hypot(dx, dy)
    masks = {
        "disc": r < 0.28,
        "square": (abs(dx) < 0.24) & (abs(dy) < 0.24),
        "triangle": (dy > -0.26) & (dy < 0.26) & (abs(dx) < (dy + 0.26) * 0.55),
        "ring": (r < 0.32) & (r > 0.18),
        "cross": ((abs(dx) < 0.08) | (abs(dy) < 0.08)) & (abs(dx) < 0.32) & (abs(dy) < 0.32),
        "diamond": abs(dx) + abs(dy) < 0.32,
        "hbar": (abs(dx) < 0.36) & (abs(dy) < 0.10),
        "vbar": (abs(dx) < 0.10) & (abs(dy) < 0.36),
    }
    return masks[shape].astype(np.float64)


def _source_style(cfg: SyntheticConfig, plan: SourcePlan) -> tuple[np.ndarray, float]:
    """Per-source global content: background tint and detune (fixed for the whole recording)."""
    rng = np.random.default_rng([cfg.seed, plan.class_index, plan.source_index + 1, 2])
    background = rng.uniform(0.03, 0.18, size=3)
    detune = float(rng.uniform(-0.03, 0.03))
    return background, detune


def source_onsets(cfg: SyntheticConfig, plan: SourcePlan) -> np.ndarray:
    """All onsets of a source, seconds from the file start."""
    return np.array(
        [plan.clip_start(cfg, k) + t for k, ons in enumerate(plan.clip_onsets) for t in ons], dtype=np.float64
    )


def source_seconds(cfg: SyntheticConfig) -> float:
    return cfg.lead_seconds + cfg.clips_per_source * cfg.clip_seconds + cfg.tail_seconds


def render_source(cfg: SyntheticConfig, plan: SourcePlan) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and audio (1, N) float32 of one source.

    The object's brightness and the tone's amplitude follow the same envelope
    from the same onsets, so every event is seen and heard at the same instant.
    """
    f0, rolloff, odd_only, decay = _TIMBRES[plan.class_index]
    colour = np.array(_COLOURS[plan.class_index])
    background, detune = _source_style(cfg, plan)
    onsets = source_onsets(cfg, plan)
    duration = source_seconds(cfg)

    # video: background + object at 30% brightness, flashing to 100% on each note
    n_frames = int(round(duration * cfg.fps))
    t_frames = np.arange(n_frames) / cfg.fps
    light = np.zeros(n_frames)
    for t0 in onsets:
        light += envelope(t_frames - t0, decay, cfg.note_seconds, attack=0.0)
    mask = _shape_mask(_SHAPES[plan.class_index], cfg.frame_size)[None, :, :, None]  # (1, H, W, 1)
    level = (0.3 + 0.7 * np.clip(light, 0, 1))[:, None, None, None]  # (T, 1, 1, 1)
    frames = background[None, None, None, :] * (1 - mask) + colour[None, None, None, :] * mask * level
    frames = np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8)

    # audio: a harmonic tone per note (same envelope) over a faint noise floor
    sr = cfg.sample_rate
    n = int(round(duration * sr))
    t = np.arange(n) / sr
    wave = np.zeros(n)
    base = f0 * (1 + detune)
    harmonics = [h for h in range(1, 16) if (not odd_only or h % 2 == 1) and h * base < 0.45 * sr]
    span = int(math.ceil(cfg.note_seconds * sr))
    for t0 in onsets:
        i0 = int(round(t0 * sr))
        seg = t[i0 : i0 + span] - t0
        tone = sum(h ** (-rolloff) * np.sin(2 * np.pi * h * base * seg) for h in harmonics)
        wave[i0 : i0 + span] += envelope(seg, decay, cfg.note_seconds) * tone
    wave *= 0.5 / sum(h ** (-rolloff) for h in harmonics)
    noise_rng = np.random.default_rng([cfg.seed, plan.class_index, plan.source_index + 1, 3])
    wave += 0.002 * noise_rng.standard_normal(n)
    return frames, wave[None, :].astype(np.float32)


# -- dubs: a speech layer per language, a mouth that follows the original --------------------


@dataclass
class DubbedSource:
    """One source rendered with dubs: the layers apart, so tests can check the mix."""

    frames: np.ndarray  # (T, H, W, 3) uint8, the mouth lit by the original's speech
    notes: np.ndarray  # (N,) float32: everything all tracks share (notes + noise floor)
    speech: dict[str, np.ndarray]  # language -> (N,) float32 speech layer
    syllables: dict[str, list[list[speech.Syllable]]]  # language -> per clip, times from the file start

    def track(self, language: str) -> np.ndarray:
        """(1, N) float32: the shared layer plus this language's speech."""
        return (self.notes + self.speech[language])[None, :]


def mouth_box(size: int) -> tuple[slice, slice]:
    """(rows, cols) of the mouth: bottom left, clear of every instrument's object."""
    return slice(int(0.78 * size), int(0.91 * size)), slice(int(0.06 * size), int(0.28 * size))


_MOUTH_COLOUR = np.array([1.0, 0.55, 0.55])


def plan_speech(cfg: SyntheticConfig, plan: SourcePlan, language: str) -> list[list[speech.Syllable]]:
    """Per clip, the language's syllables (seconds from the file start), inside the clip's inner steps."""
    voice = speech.voice_for(language)
    out = []
    for k in range(len(plan.clip_onsets)):
        rng = np.random.default_rng([cfg.seed, plan.class_index, plan.source_index + 1, 4, k,
                                     zlib.crc32(language.lower().encode())])
        start = plan.clip_start(cfg, k)
        out.append(speech.sample_syllables(rng, voice, start + cfg.grid_seconds,
                                           start + cfg.clip_seconds - cfg.grid_seconds))
    return out


def span_mask(n: int, sample_rate: int, spans) -> np.ndarray:
    """(n,) bool: samples inside any [start, end) s of ``spans``."""
    mask = np.zeros(n, dtype=bool)
    for start, end in spans:
        mask[int(round(start * sample_rate)): int(round(end * sample_rate))] = True
    return mask


def _rms(x: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x[mask], dtype=np.float64)))) if mask.any() else 0.0


def render_dubbed_source(cfg: SyntheticConfig, plan: SourcePlan) -> DubbedSource:
    """:func:`render_source` plus a speech layer per language and the original's mouth.

    Each language's layer is scaled so that its RMS over its syllables is
    ``speech_db`` below the notes' RMS over the notes (a note decays, a
    syllable is sustained: peaks would make speech the louder of the two).
    """
    frames, audio = render_source(cfg, plan)
    n, sr = audio.shape[1], cfg.sample_rate
    notes_rms = _rms(audio[0], span_mask(n, sr, [(t, t + cfg.note_seconds) for t in source_onsets(cfg, plan)]))
    syllables = {lang: plan_speech(cfg, plan, lang) for lang in cfg.dub_languages}
    layers = {}
    for lang, per_clip in syllables.items():
        flat = [s for clip in per_clip for s in clip]
        raw = speech.render_speech(flat, n, sr)
        raw_rms = _rms(raw, span_mask(n, sr, [(s.start, s.end) for s in flat]))
        gain = 10.0 ** (cfg.speech_db / 20.0) * notes_rms / raw_rms if raw_rms > 0 else 0.0
        layers[lang] = (gain * raw).astype(np.float32)
    original = [s for clip in syllables[cfg.dub_languages[0]] for s in clip]
    open_ = speech.speech_envelope(np.arange(len(frames)) / cfg.fps, original)  # (T,)
    level = 0.1 + 0.85 * np.clip(open_, 0.0, 1.0)
    frames = frames.copy()
    rows, cols = mouth_box(cfg.frame_size)
    frames[:, rows, cols] = np.round(level[:, None, None, None] * _MOUTH_COLOUR * 255).astype(np.uint8)
    return DubbedSource(frames, audio[0], layers, syllables)


def _clip_speech(cfg: SyntheticConfig, plan: SourcePlan, dub: DubbedSource, k: int) -> dict[str, list]:
    start = plan.clip_start(cfg, k)
    return {lang: [[round(s.start - start, 6), round(s.end - start, 6)] for s in syl[k]]
            for lang, syl in dub.syllables.items()}


def _write_source(cfg: SyntheticConfig, plan: SourcePlan, path: Path) -> DubbedSource | None:
    """Render and write one source's mp4; the dubbed layers when there are dubs."""
    if not cfg.dub_languages:
        frames, audio = render_source(cfg, plan)
        write_media(path, frames, fps=cfg.fps, audio=[AudioSpec(audio, cfg.sample_rate)], crf=cfg.crf)
        return None
    dub = render_dubbed_source(cfg, plan)
    specs = [AudioSpec(dub.track(lang), cfg.sample_rate, lang, original=j == 0, dub=j > 0)
             for j, lang in enumerate(cfg.dub_languages)]
    write_media(path, dub.frames, fps=cfg.fps, audio=specs, crf=cfg.crf)
    return dub


def _config_matches(out_dir: Path, cfg: SyntheticConfig) -> bool:
    ev = out_dir / EVENTS_NAME
    if not (ev.is_file() and (out_dir / MANIFEST_NAME).is_file()):
        return False
    try:  # compared in JSON form (tuples were written as lists)
        return json.loads(ev.read_text())["config"] == json.loads(json.dumps(cfg.to_dict()))
    except (ValueError, KeyError):
        return False


def build_synthetic(
    out_dir: str | os.PathLike,
    cfg: SyntheticConfig = SyntheticConfig(),
    *,
    fresh: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the benchmark's media, manifest and events under ``out_dir``; return the manifest path.

    Reuses an existing build with the same config unless ``fresh``. Files are
    written atomically (media first, the manifest and events last), so an
    interrupted build is redone, never half-used. ``progress(done, total)`` is
    called after each source file.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    manifest = out_dir / MANIFEST_NAME
    if not fresh and _config_matches(out_dir, cfg):
        log.info("synthetic benchmark already built in %s (same config): reusing it", out_dir)
        return manifest
    plans = plan_sources(cfg)
    rows: list[ManifestRow] = []
    events: dict[str, list[float]] = {}
    speech_events: dict[str, dict[str, list]] = {}
    for i, plan in enumerate(plans):
        rel = f"{MEDIA_DIR}/{plan.name}.mp4"
        dub = _write_source(cfg, plan, out_dir / rel)
        for k, onsets in enumerate(plan.clip_onsets):
            start = plan.clip_start(cfg, k)
            clip_id = f"{plan.name}-c{k:02d}"
            rows.append(
                ManifestRow(
                    clip_id=clip_id,
                    path=rel,
                    start=start,
                    end=round(start + cfg.clip_seconds, 6),
                    split=plan.split,
                    label=class_name(plan.class_index),
                    source=plan.name,
                )
            )
            events[clip_id] = list(onsets)
            if dub is not None:
                speech_events[clip_id] = _clip_speech(cfg, plan, dub, k)
        if progress is not None:
            progress(i + 1, len(plans))
    tmp = out_dir / (EVENTS_NAME + ".tmp")
    doc = {"config": cfg.to_dict(), "clips": events}
    if cfg.dub_languages:
        doc["speech"] = speech_events
    tmp.write_text(json.dumps(doc, indent=1))
    write_manifest(rows, manifest)
    os.replace(tmp, out_dir / EVENTS_NAME)
    log.info("synthetic benchmark: %d clips from %d sources in %s", len(rows), len(plans), out_dir)
    return manifest


def load_events(out_dir: str | os.PathLike) -> dict[str, list[float]]:
    """Ground-truth onsets per clip (seconds from the clip start)."""
    return json.loads((Path(out_dir) / EVENTS_NAME).read_text())["clips"]


def load_speech(out_dir: str | os.PathLike) -> dict[str, dict[str, list[list[float]]]]:
    """Ground-truth syllables: {clip_id: {language: [[start, end], ...]}}, seconds from the clip
    start; {} for a build without dubs."""
    return json.loads((Path(out_dir) / EVENTS_NAME).read_text()).get("speech", {})


# ---------------------------------------------------------------------------
# Oracle check: does the data have the property? (no learning involved)
# ---------------------------------------------------------------------------


def video_onset_curve(frames: np.ndarray) -> np.ndarray:
    """Frame-difference energy (T,): rectified increase of each frame over the previous one.

    frames: (T, D) per-frame features (e.g. the ``pixels`` stand-in) or (T, H, W, 3).
    """
    x = np.asarray(frames, dtype=np.float64).reshape(len(frames), -1)
    d = np.clip(np.diff(x, axis=0, prepend=x[:1]), 0, None)
    return d.sum(axis=1)


def audio_onset_curve(fbank_frames: np.ndarray) -> np.ndarray:
    """Spectral flux (F,): rectified increase of each log-mel frame over the previous one.

    fbank_frames: (F, bins) log-mel frames (25 ms window, 10 ms hop).
    """
    x = np.asarray(fbank_frames, dtype=np.float64)
    d = np.clip(np.diff(x, axis=0, prepend=x[:1]), 0, None)
    return d.sum(axis=1)


def resample_curve(curve: np.ndarray, times: np.ndarray, rate: float, duration: float, sigma: float = 1.0) -> np.ndarray:
    """Bin a curve sampled at ``times`` (seconds) onto a grid at ``rate`` Hz, then Gaussian-smooth.

    Summing into bins (not picking samples) keeps the energy of a 10 ms audio
    spike; smoothing by ``sigma`` bins forgives the half-window offset
    between an fbank frame and a video frame.
    """
    n = int(round(duration * rate))
    idx = np.clip(np.floor(np.asarray(times) * rate + 1e-9).astype(int), 0, n - 1)
    out = np.bincount(idx, weights=curve, minlength=n)[:n]
    if sigma > 0:
        k = np.arange(-3 * int(math.ceil(sigma)), 3 * int(math.ceil(sigma)) + 1)
        kern = np.exp(-0.5 * (k / sigma) ** 2)
        out = np.convolve(out, kern / kern.sum(), mode="same")
    return out


def recall_at_1(scores: np.ndarray) -> float:
    """R@1 (a fraction) of a square score matrix, higher = closer, query i's correct item is i.

    Ranked by ``scav.sequence.metrics`` (ties broken by candidate index), as
    validation and retrieval rank, so the oracle's numbers compare with theirs.
    """
    import torch

    from scav.sequence.metrics import ranks_from_scores, recall_at

    return recall_at(ranks_from_scores(torch.as_tensor(np.asarray(scores, dtype=np.float64))), 1) / 100.0


def zscore_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def oracle_scores(video_curves: np.ndarray, audio_curves: np.ndarray) -> np.ndarray:
    """(N_video, N_audio) Pearson correlation of onset curves on a common grid (known alignment)."""
    return zscore_rows(video_curves) @ zscore_rows(audio_curves).T


def ridge_agg_scores(
    train_video: np.ndarray, train_audio: np.ndarray, video: np.ndarray, audio: np.ndarray, alpha: float = 1.0
) -> np.ndarray:
    """Best linear aggregation baseline: (N_video, N_audio) cosine after mapping mean-pooled video into
    the audio's mean-pooled space with ridge regression fitted on train pairs.

    train_video (N, Dv), train_audio (N, Da): time-averaged features of training clips.
    """
    mv, ma = train_video.mean(0), train_audio.mean(0)
    sv, sa = train_video.std(0) + 1e-6, train_audio.std(0) + 1e-6
    xv, xa = (train_video - mv) / sv, (train_audio - ma) / sa
    # dual form: cheap when N << D
    k = xv @ xv.T
    w = xv.T @ np.linalg.solve(k + alpha * np.eye(len(k)), xa)  # (Dv, Da)
    pv = ((video - mv) / sv) @ w
    pa = (audio - ma) / sa
    pv /= np.linalg.norm(pv, axis=1, keepdims=True) + 1e-12
    pa /= np.linalg.norm(pa, axis=1, keepdims=True) + 1e-12
    return pv @ pa.T
