"""Speech segments and their text (dubs paper §6 step 2): VAD, the synthetic script, Whisper.

- :class:`VadSegmenter`: where the speech stem has voice (webrtcvad), as segments without
  text. Measured on the synthetic build's true speech layer (tests/test_dub_stages_text.py):
  it covers ~99 % of the syllable time, and its segments lie ~90 % inside the syllables'
  phrases (webrtcvad holds its decision a little after speech ends). It also calls harmonic
  notes speech (all of their time, on the build's background alone): run it on a separated
  speech stem, never on the mixture.
- :class:`KnownScriptSegmenter` / :class:`KnownScriptTranscriber`: for media of a synthetic
  dubbed build, the generator's syllables (regenerated from the build's config, as in
  events.json) grouped into phrases, with a deterministic script: one word per syllable
  from a small fixed vocabulary (``translate.SCRIPT_WORDS``), so that translation and
  synthesis get real words. The script is a stand-in: the syllables are not those words.
- :class:`WhisperTranscriber`: the paper's model, from a local transformers folder.

Times are seconds from the start of the audio the stage is given (the pipeline: the file).
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .plugins import from_pretrained, optional_import, pretrained_source, resample
from .stages import Audio, Segment, StageError
from .languages import iso639_1, language_tag, tag_or_none
from .translate import script_vocabulary

VAD_RATE = 16000  # webrtcvad takes 8/16/32/48 kHz; one rate keeps its behaviour the same everywhere


def merge_spans(spans: list[tuple[float, float]], gap: float, min_length: float = 0.0) -> list[tuple[float, float]]:
    """Sorted spans with those less than ``gap`` s apart joined, then those shorter than ``min_length`` dropped."""
    out: list[list[float]] = []
    for s, e in sorted(spans):
        if out and s - out[-1][1] < gap:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out if e - s >= min_length]


class VadSegmenter:
    """Voice activity (webrtcvad) -> runs of voiced frames, close runs merged, short ones dropped.

    aggressiveness: webrtcvad's mode 0-3 (3 = fewest frames called speech); frame_ms: 10, 20
    or 30; min_speech: s, shorter segments are dropped (after merging); merge_gap: s, runs
    closer than this become one segment (a phrase rather than its syllables).
    """

    name = "webrtcvad"

    def __init__(self, aggressiveness: int = 2, frame_ms: int = 30, min_speech: float = 0.1, merge_gap: float = 0.25):
        if aggressiveness not in (0, 1, 2, 3) or frame_ms not in (10, 20, 30):
            raise ValueError("aggressiveness must be 0..3 and frame_ms 10, 20 or 30 (webrtcvad's choices)")
        if min_speech < 0 or merge_gap < 0:
            raise ValueError("min_speech and merge_gap must be >= 0")
        self.aggressiveness, self.frame_ms = aggressiveness, frame_ms
        self.min_speech, self.merge_gap = min_speech, merge_gap
        self.name = f"webrtcvad:{aggressiveness}"

    def voiced_frames(self, audio: Audio) -> tuple[np.ndarray, float]:
        """(F,) bool webrtcvad decision per frame, and the frame length in s (frame i starts at i * that)."""
        import webrtcvad

        x = resample(audio.samples, audio.sample_rate, VAD_RATE)
        pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")
        step = VAD_RATE * self.frame_ms // 1000
        vad = webrtcvad.Vad(self.aggressiveness)  # new per call: its state must not carry across files
        n = len(pcm) // step  # the last partial frame is not speech-tested
        frames = pcm[: n * step].reshape(n, step)
        return np.array([vad.is_speech(f.tobytes(), VAD_RATE) for f in frames], dtype=bool), step / VAD_RATE

    def segment(self, speech: Audio, language: str | None) -> list[Segment]:
        voiced, dt = self.voiced_frames(speech)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]])))
        runs = [(float(a * dt), float(b * dt)) for a, b in zip(edges[::2], edges[1::2])]
        return [Segment(s, e, None, language) for s, e in merge_spans(runs, self.merge_gap, self.min_speech)]


# -- the synthetic build's script -----------------------------------------------------------------


@dataclass(frozen=True)
class ScriptWord:
    """One syllable of the generator with its script word: [start, end) s from the file start."""

    start: float
    end: float
    concept: int  # row of the script vocabulary; the word in any language is SCRIPT_WORDS[lang][concept]


def known_script(media, track: str) -> list[ScriptWord]:
    """Every syllable of ``track`` in a synthetic source (a ``separate.SyntheticMedia``), with its word.

    The word of syllable i is drawn from crc32(source, track, i): fixed per syllable, the
    same in every run and for every window of the file.
    """
    from ..data_manifests.synthetic import plan_speech

    n_words = len(script_vocabulary("eng"))
    flat = [s for clip in plan_speech(media.cfg, media.plan, track) for s in clip]
    return [ScriptWord(s.start, s.end, zlib.crc32(f"{media.plan.name}/{track.lower()}/{i}".encode()) % n_words)
            for i, s in enumerate(flat)]


def _sentence(words: list[str]) -> str:
    text = " ".join(words)
    return text[:1].upper() + text[1:] + "."


class _KnownScript:
    """Binding shared by the known-script stages: which file, window and track they describe."""

    stage = "segment"

    def __init__(self, build: str | os.PathLike | None = None, phrase_gap: float = 0.25):
        self.build, self.phrase_gap = build, phrase_gap
        self._words: list[ScriptWord] | None = None  # of the bound window, times from its start
        self._track: str | None = None

    def for_media(self, info):
        """Bound to a whole media file and its original track (``info``: pipeline.MediaInfo)."""
        return self.for_clip(info.path, 0.0, None, info.language)

    def for_clip(self, media: str | os.PathLike, start: float = 0.0, end: float | None = None,
                 language: str | None = None):
        """Bound to ``[start, end)`` s of ``media`` and its ``language`` track (None: the original)."""
        from .separate import synthetic_media

        src = synthetic_media(Path(media), self.build, stage=self.stage)
        track = src.language(language, stage=self.stage)
        hi = math.inf if end is None else end
        bound = type(self)(self.build, self.phrase_gap)
        bound._track = track
        bound._words = [ScriptWord(round(max(w.start, start) - start, 6), round(min(w.end, hi) - start, 6), w.concept)
                        for w in known_script(src, track) if w.end > start and w.start < hi]
        return bound

    def _text_language(self, language: str | None) -> str:
        if self._words is None:
            raise StageError(self.stage, f"{type(self).__name__} reads a synthetic build's script: bind it with "
                                         "for_media(info) or for_clip(path, start, end, language) first")
        try:
            return language_tag(language or self._track)
        except ValueError as e:
            raise StageError(self.stage, str(e)) from None

    def _text(self, words: list[ScriptWord], lang: str) -> str:
        vocab = script_vocabulary(lang, self.stage)
        return _sentence([vocab[w.concept] for w in words]) if words else ""


class KnownScriptSegmenter(_KnownScript):
    """The generator's syllables grouped into phrases (gaps < ``phrase_gap`` s), with the script.

    The text is in ``language`` (what the pipeline says the speech is in; default the bound
    track's language): the same concepts, that language's words.
    """

    name = "known-script"

    def segment(self, speech: Audio, language: str | None) -> list[Segment]:
        lang = self._text_language(language)
        phrases = merge_spans([(w.start, w.end) for w in self._words], self.phrase_gap)
        out = []
        for s, e in phrases:
            words = [w for w in self._words if s <= w.start and w.end <= e]
            out.append(Segment(s, e, self._text(words, lang), lang))
        return out


class KnownScriptTranscriber(_KnownScript):
    """The script of given segments (e.g. from :class:`VadSegmenter`): the words of the
    syllables whose midpoint lies in each segment; "" for a segment with none."""

    name = "known-script"
    stage = "transcribe"

    def transcribe(self, speech: Audio, segments: list[Segment], language: str | None) -> list[Segment]:
        lang = self._text_language(language)
        out = []
        for seg in segments:
            words = [w for w in self._words if seg.start <= (w.start + w.end) / 2 < seg.end]
            out.append(replace(seg, text=self._text(words, lang), language=lang))
        return out


# -- Whisper (plug-in) ----------------------------------------------------------------------------


class WhisperTranscriber:
    """Whisper (transformers' WhisperForConditionalGeneration), loaded as transformers loads it.

    ``model``: a folder that ``save_pretrained`` wrote for the model and its processor, or a
    hub id (e.g. ``openai/whisper-small``): downloaded on a machine with internet, read from
    the local cache alone when ``HF_HUB_OFFLINE=1``. As a transcriber it gives the text of
    each given segment; as a segmenter it finds timestamped segments itself (Whisper's
    timestamp tokens, in 30 s windows: a word cut by a window boundary is cut in two).
    Audio is resampled to 16 kHz (Whisper's rate); a language the model has a token for is
    forced, otherwise Whisper detects it.
    """

    RATE = 16000
    WINDOW = 30.0  # s: Whisper's input length
    HINT = ("give a folder that transformers' save_pretrained wrote for the model and its processor, or a hub "
            "id such as openai/whisper-small (downloaded with internet; with HF_HUB_OFFLINE=1 read from the "
            "local cache: `hf download openai/whisper-small` first)")

    def __init__(self, model: str | os.PathLike, device: str = "cpu", max_new_tokens: int = 128,
                 batch_size: int = 8):
        source = pretrained_source(model, "Whisper model", self.HINT, stage="transcribe")
        transformers = optional_import("transformers", "Whisper transcriber", "pip install 'scav[extract]'",
                                       stage="transcribe")
        what = "Whisper model and processor"
        self.processor = from_pretrained(transformers.WhisperProcessor, source, what, self.HINT, stage="transcribe")
        self.model = from_pretrained(transformers.WhisperForConditionalGeneration, source, what, self.HINT,
                                     stage="transcribe").to(device).eval()
        self.name = f"whisper:{Path(source).name if Path(source).exists() else source}"
        self.device, self.max_new_tokens, self.batch_size = device, max_new_tokens, batch_size

    def _language_kwargs(self, language: str | None, stage: str) -> dict:
        gen = self.model.generation_config
        lang_to_id = getattr(gen, "lang_to_id", None) or {}
        if not lang_to_id or not getattr(gen, "is_multilingual", True):
            return {}  # an English-only model takes neither language nor task
        kwargs = {"task": "transcribe"}
        if language is not None:
            try:
                code = iso639_1(language)
            except ValueError as e:
                raise StageError(stage, str(e)) from None
            if code is None or f"<|{code}|>" not in lang_to_id:
                raise StageError(stage, f"the Whisper model has no language token for {language!r}")
            kwargs["language"] = code
        return kwargs

    def _generate(self, pieces: list[np.ndarray], language: str | None, timestamps: bool, stage: str) -> list:
        """Token ids per piece (each <= 30 s at 16 kHz), in batches."""
        import torch

        kwargs = self._language_kwargs(language, stage)
        out = []
        for i in range(0, len(pieces), self.batch_size):
            feats = self.processor.feature_extractor(pieces[i: i + self.batch_size], sampling_rate=self.RATE,
                                                     return_tensors="pt", return_attention_mask=True)
            with torch.inference_mode():
                ids = self.model.generate(feats.input_features.to(self.device),
                                          attention_mask=feats.attention_mask.to(self.device),
                                          max_new_tokens=self.max_new_tokens, return_timestamps=timestamps, **kwargs)
            out.extend(ids.cpu())
        return out

    def _pieces(self, x: np.ndarray) -> list[tuple[float, np.ndarray]]:
        step = int(self.WINDOW * self.RATE)
        return [(i / self.RATE, x[i: i + step]) for i in range(0, len(x), step)]

    def transcribe(self, speech: Audio, segments: list[Segment], language: str | None) -> list[Segment]:
        x = resample(speech.samples, speech.sample_rate, self.RATE)
        pieces, owner = [], []
        for k, seg in enumerate(segments):
            cut = x[int(round(seg.start * self.RATE)): int(round(seg.end * self.RATE))]
            for _, p in self._pieces(cut):
                pieces.append(p)
                owner.append(k)
        texts = [[] for _ in segments]
        if pieces:
            ids = self._generate(pieces, language, timestamps=False, stage="transcribe")
            for k, t in zip(owner, self.processor.batch_decode(ids, skip_special_tokens=True)):
                texts[k].append(t.strip())
        lang = tag_or_none(language)
        return [replace(seg, text=" ".join(t for t in texts[k] if t), language=lang or seg.language)
                for k, seg in enumerate(segments)]

    def segment(self, speech: Audio, language: str | None) -> list[Segment]:
        x = resample(speech.samples, speech.sample_rate, self.RATE)
        if len(x) == 0:
            return []
        pieces = self._pieces(x)
        ids = self._generate([p for _, p in pieces], language, timestamps=True, stage="segment")
        lang = tag_or_none(language)
        out = []
        for (t0, piece), seq in zip(pieces, ids):
            decoded = self.processor.tokenizer.decode(seq.tolist(), skip_special_tokens=True, output_offsets=True)
            for off in decoded.get("offsets", []):
                s, e = off.get("timestamp", (None, None))
                if s is None or e is None or not (math.isfinite(s) and math.isfinite(e)):
                    continue  # an unterminated segment at the window's end
                s, e = min(float(s), len(piece) / self.RATE), min(float(e), len(piece) / self.RATE)
                if e > s and off["text"].strip():
                    out.append(Segment(round(t0 + s, 3), round(t0 + e, 3), off["text"].strip(), lang))
        return out


