"""Speech / background separation (dubs paper §6 step 1): known stems, a spectral mask, Demucs.

- :class:`KnownStemsSeparator`: for media of a synthetic dubbed build
  (``data_manifests.synthetic``), the generator's own layers, regenerated from the build's
  config: speech = the track's speech layer, background = the notes (and noise floor) all
  tracks share. Exact ground truth for tests and the synthetic demo.
- :class:`SpectralMaskSeparator`: weightless, for any media; median-filtering
  harmonic/percussive soft masks (module notes below). Crude, honest about it.
- :class:`DemucsSeparator`: the paper's model, a plug-in from one local checkpoint file.
- :class:`TorchScriptSeparator`: any separator model exported with TorchScript to the
  contract ``model(mix (1, n)) -> (2, n)`` (``--separator torchscript --separator-model``).

**The spectral mask, and its limits.** Sustained, stable-pitch partials (horizontal ridges
in a 32 ms STFT, median-filtered along 0.3 s of time) are background; whatever moves in
pitch or is short (median-filtered along 500 Hz of frequency) is speech, with a Wiener-like
soft mask (power 2, librosa.decompose.hpss) and only within 80-4000 Hz. So held notes, pads
and hum go to the background, speech goes to the speech stem; but drums, clicks and note
onsets go to the speech stem too, as do gliding or vibrato instruments and singing, while
held vowels leak into the background, and sibilants above 4 kHz stay in the background.
Measured (tests/test_dub_stages_text.py, 16 decoded synthetic tracks, speech 6 dB below the
notes): speech-to-error ratio -4.4 dB for the mixture, +3.0 dB for the speech stem (7.4 dB
better on average, at least 5.0 dB per track). Tried here and worse: nearest-neighbour
background modelling (REPET-SIM, librosa's vocal-separation recipe: +2.4 dB over the
mixture on average, worse than it on some clips), and gating by webrtcvad on the mixture
(it marks the whole of every harmonic note as speech).

Every separator returns ``background = audio - speech``, so the stems sum to the input.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .languages import same_language
from .plugins import fit_length, local_file, optional_import, resample
from .stages import Audio, MissingWeights, StageError, Stems

STAGE = "separate"


# -- the synthetic build a media file comes from ---------------------------------------------


@dataclass(frozen=True)
class SyntheticMedia:
    """One source file of a synthetic dubbed build: the build's config and the source's plan."""

    build: Path
    cfg: object  # data_manifests.synthetic.SyntheticConfig
    plan: object  # data_manifests.synthetic.SourcePlan

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.cfg.dub_languages)

    def language(self, tag: str | None, stage: str = STAGE) -> str:
        """The build's language for ``tag`` (case-insensitive); None = the original (first) one."""
        if tag is None:
            return self.languages[0]
        for lang in self.languages:
            if same_language(lang, tag):
                return lang
        raise StageError(stage, f"{self.plan.name} has no '{tag}' track; its tracks are {', '.join(self.languages)}")


def _load_config(build: Path, stage: str):
    from ..data_manifests.synthetic import EVENTS_NAME, SyntheticConfig

    try:
        stored = json.loads((build / EVENTS_NAME).read_text())["config"]
    except (OSError, ValueError, KeyError) as e:
        raise StageError(stage, f"{build} is not a synthetic build (no readable {EVENTS_NAME} config: {e})") from None
    names = {f.name for f in dataclasses.fields(SyntheticConfig)}
    if not isinstance(stored, dict) or set(stored) - names:
        raise StageError(stage, f"{build / EVENTS_NAME}: config has fields this generator does not know: "
                                f"{sorted(set(stored) - names) if isinstance(stored, dict) else stored!r}")
    cfg = SyntheticConfig(**{k: tuple(v) if k == "dub_languages" else v for k, v in stored.items()})
    # the build is regenerated from this config: it must be the very config written there
    if json.loads(json.dumps(cfg.to_dict())) != stored:
        raise StageError(stage, f"{build / EVENTS_NAME}: config does not round-trip; cannot regenerate the build")
    if not cfg.dub_languages:
        raise StageError(stage, f"{build} is a synthetic build without dubs: it has no speech layer")
    return cfg


def synthetic_media(media: str | os.PathLike, build: str | os.PathLike | None = None,
                    stage: str = STAGE) -> SyntheticMedia:
    """The synthetic source a media file is: ``<build>/media/<source>.mp4``.

    ``build`` defaults to the media file's grandparent folder (where ``build_synthetic``
    writes events.json). StageError when the file is not one of that build's sources.
    """
    from ..data_manifests.synthetic import MEDIA_DIR, plan_sources

    media = Path(media)
    build = Path(build) if build is not None else media.parent.parent
    cfg = _load_config(build, stage)
    try:
        plans = {p.name: p for p in plan_sources(cfg)}
    except ValueError as e:  # a config the generator rejects (validate)
        raise StageError(stage, f"{build}: invalid synthetic config: {e}") from None
    plan = plans.get(media.stem)
    expected = build / MEDIA_DIR / f"{media.stem}.mp4"
    if plan is None or media.suffix != ".mp4" or media.resolve() != expected.resolve():
        raise StageError(stage, f"{media} is not a source file of the synthetic build in {build} "
                                f"(expected {build / MEDIA_DIR}/<one of {', '.join(sorted(plans))}>.mp4)")
    return SyntheticMedia(build, cfg, plan)


def _window(x: np.ndarray, rate: int, start: float, n: int) -> np.ndarray:
    """``n`` samples of ``x`` from ``start`` s (zeros past its end)."""
    i0 = int(round(start * rate))
    return fit_length(np.asarray(x[i0:], dtype=np.float32), n)


# -- known stems ------------------------------------------------------------------------------

StemsLookup = Callable[[Path, "str | None"], Stems]  # (media file, language) -> whole-file stems


class KnownStemsSeparator:
    """The stems a generator knows, for the file (and window, and track) it is bound to.

    ``source``: None (find the synthetic build from the media path), a synthetic build
    folder, or a callable ``(media path, language) -> Stems`` of the whole file (other data
    with known stems). Bind with :meth:`for_media` (the pipeline: whole file, its original
    track) or :meth:`for_clip`; an unbound ``separate`` is a StageError.

    ``max_residual``: the audio handed to ``separate`` must be the stems' sum up to codec
    noise, ``|audio - (speech + background)|^2 <= max_residual * |audio|^2``, else StageError
    (the wrong file, window or track would get someone else's ground truth). AAC at the
    synthetic build's settings measured <= 4e-4; the other language's track gives 0.48-0.58.
    """

    name = "known-stems"

    def __init__(self, source: str | os.PathLike | StemsLookup | None = None, max_residual: float = 0.01):
        self.source, self.max_residual = source, max_residual
        self._bound: tuple | None = None  # (media, start, end, language)
        self._whole: Stems | None = None  # the bound file's stems, from its start

    def for_media(self, info) -> KnownStemsSeparator:
        """Bound to a whole media file and its original track (``info``: pipeline.MediaInfo)."""
        return self.for_clip(info.path, 0.0, None, info.language)

    def for_clip(self, media: str | os.PathLike, start: float = 0.0, end: float | None = None,
                 language: str | None = None) -> KnownStemsSeparator:
        """Bound to ``[start, end)`` s of ``media`` (end None: to the end) and its ``language`` track."""
        media = Path(media)
        if callable(self.source):
            whole = self.source(media, language)
            if not isinstance(whole, Stems):
                raise StageError(STAGE, f"the stems lookup returned {type(whole).__name__}, not Stems")
        else:
            whole = self._synthetic_stems(media, language)
        bound = KnownStemsSeparator(self.source, self.max_residual)
        bound._bound, bound._whole = (media, float(start), end, language), whole
        return bound

    def _synthetic_stems(self, media: Path, language: str | None) -> Stems:
        from ..data_manifests.synthetic import render_dubbed_source

        src = synthetic_media(media, self.source)
        lang = src.language(language)
        dub = render_dubbed_source(src.cfg, src.plan)
        sr = src.cfg.sample_rate
        return Stems(Audio(dub.speech[lang], sr), Audio(dub.notes, sr))

    def separate(self, audio: Audio) -> Stems:
        if self._bound is None:
            raise StageError(STAGE, "KnownStemsSeparator gives the stems of a known file: bind it to one with "
                                    "for_media(info) or for_clip(path, start, end, language) first")
        media, start, end, _ = self._bound
        n, sr = len(audio.samples), audio.sample_rate
        speech, background = (_window(resample(a.samples, a.sample_rate, sr), sr, start, n)
                              for a in (self._whole.speech, self._whole.background))
        if end is not None and abs((end - start) - n / sr) > 0.01:
            raise StageError(STAGE, f"audio of {n / sr:.3f} s for the window [{start}, {end}) of {media}")
        x = np.asarray(audio.samples, dtype=np.float64)
        residual = float(np.sum((x - speech - background) ** 2) / max(np.sum(x ** 2), 1e-20))
        if residual > self.max_residual:
            raise StageError(STAGE, f"the audio is not the known track of {media} at {start} s: it differs from "
                                    f"speech + background by {residual:.3g} of its energy (> {self.max_residual})")
        return Stems(Audio(speech, sr), Audio(background, sr))


# -- spectral masks ---------------------------------------------------------------------------


class SpectralMaskSeparator:
    """Harmonic/percussive median-filter soft masks, speech band only (module docstring).

    frame_seconds: STFT window (hop a quarter of it); harmonic_seconds: median filter along
    time (longer = only more sustained partials count as background); percussive_hz: median
    filter along frequency; band: Hz outside which nothing is speech.
    """

    name = "spectral-mask"

    def __init__(self, frame_seconds: float = 0.032, harmonic_seconds: float = 0.3, percussive_hz: float = 500.0,
                 band: tuple[float, float] = (80.0, 4000.0)):
        if not (frame_seconds > 0 and harmonic_seconds > 0 and percussive_hz > 0 and 0 <= band[0] < band[1]):
            raise ValueError("frame_seconds, harmonic_seconds and percussive_hz must be > 0, band (lo, hi) lo < hi")
        self.frame_seconds, self.harmonic_seconds, self.percussive_hz = frame_seconds, harmonic_seconds, percussive_hz
        self.band = band

    def speech_mask(self, audio: Audio) -> tuple[np.ndarray, np.ndarray, int]:
        """(bins, frames) speech mask in [0, 1], the complex STFT it applies to, and the hop."""
        import librosa

        sr = audio.sample_rate
        n_fft = 2 ** int(math.ceil(math.log2(self.frame_seconds * sr)))  # 512 at 16 kHz
        hop = n_fft // 4
        spec = librosa.stft(np.asarray(audio.samples, dtype=np.float32), n_fft=n_fft, hop_length=hop)
        harmonic_frames = max(3, int(self.harmonic_seconds * sr / hop) | 1)  # odd median lengths
        percussive_bins = max(3, int(self.percussive_hz * n_fft / sr) | 1)
        _, mask = librosa.decompose.hpss(np.abs(spec), kernel_size=(harmonic_frames, percussive_bins), power=2.0,
                                         mask=True)
        freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
        mask = mask * ((freqs >= self.band[0]) & (freqs <= self.band[1]))[:, None]
        return mask, spec, hop

    def separate(self, audio: Audio) -> Stems:
        import librosa

        x = np.asarray(audio.samples, dtype=np.float32)
        if len(x) == 0:
            raise StageError(STAGE, "empty audio")
        mask, spec, hop = self.speech_mask(audio)
        speech = librosa.istft(mask * spec, hop_length=hop, length=len(x)).astype(np.float32)
        return Stems(Audio(speech, audio.sample_rate), Audio(x - speech, audio.sample_rate))


# -- Demucs (plug-in) -------------------------------------------------------------------------


def _demucs_model_classes() -> list[type]:
    """Demucs' model classes: the only globals a checkpoint may name (weights_only unpickling)."""
    import importlib

    found = []
    for module, cls in (("demucs.demucs", "Demucs"), ("demucs.hdemucs", "HDemucs"), ("demucs.htdemucs", "HTDemucs")):
        try:
            found.append(getattr(importlib.import_module(module), cls))
        except (ImportError, AttributeError):
            pass  # older or newer demucs without this architecture
    return found


class DemucsSeparator:
    """Demucs (Défossez et al.; the paper used Hybrid Demucs), loaded as Demucs loads it.

    ``weights``: a model name Demucs knows (``htdemucs``, ``htdemucs_ft``, ``mdx_extra``, ...),
    loaded by ``demucs.pretrained.get_model``: downloaded into torch hub's cache on a machine
    with internet, read from that cache when it is there. Or a single-model ``.th`` file as
    Demucs publishes them (a dict of the model class, its arguments and its state; e.g.
    htdemucs' ``955717e8-8726e21a.th``); diffq-quantised files (``*_q``) are not supported.
    Either way checkpoints are read with ``torch.load(weights_only=True)`` allowing only
    Demucs' model classes as globals: never a full unpickle. Speech = the ``vocals`` source; background = audio - speech. The audio is
    resampled to the model's rate, duplicated to its channels, normalised as
    ``demucs.separate`` does, and separated with ``demucs.apply.apply_model`` (no random
    shifts: deterministic).
    """

    HINT = ("give a model name Demucs knows (e.g. htdemucs: downloaded into torch hub's cache) or a single-model "
            "checkpoint (.th), e.g. htdemucs' 955717e8-8726e21a.th from the Demucs release files")
    INSTALL = "pip install demucs (not a scav dependency), then give the checkpoint with --demucs-weights"

    def __init__(self, weights: str | os.PathLike, device: str = "cpu", segment_overlap: float = 0.25):
        name = str(weights or "")
        if name and not Path(name).expanduser().exists() and re.fullmatch(r"[A-Za-z0-9_]+", name):
            model, self.name = self._pretrained(name), f"demucs:{name}"
        else:
            path = local_file(weights, "Demucs checkpoint", self.HINT, stage=STAGE)
            model, self.name = self._from_file(path), f"demucs:{path.name}"
        if "vocals" not in list(model.sources):
            raise StageError(STAGE, f"{self.name}: the model has no 'vocals' source ({list(model.sources)})")
        self.model = model.to(device).eval()
        self.device, self.overlap = device, segment_overlap

    def _pretrained(self, name: str):
        """A model Demucs names (htdemucs, mdx_extra, ...) as ``demucs.pretrained.get_model`` loads it:
        downloaded into torch hub's cache with internet, read from there when it is cached; its
        checkpoints are read with weights_only=True, Demucs' model classes allowed."""
        optional_import("demucs", "Demucs separator", self.INSTALL, stage=STAGE)
        import torch
        from demucs.pretrained import get_model

        try:
            with torch.serialization.safe_globals(_demucs_model_classes()):
                return get_model(name)
        except Exception as e:  # noqa: BLE001 - no network, unknown name, refused pickle: all "not loaded"
            raise MissingWeights(STAGE, f"cannot load the Demucs model {name!r}: {type(e).__name__}: "
                                        f"{str(e)[:300]}; demucs downloads it into torch hub's cache "
                                        f"({torch.hub.get_dir()}) on a machine with internet, or give a local "
                                        ".th file") from None

    def _from_file(self, path: Path):
        optional_import("demucs", "Demucs separator", self.INSTALL, stage=STAGE)
        import torch
        from demucs.states import load_model

        try:
            with torch.serialization.safe_globals(_demucs_model_classes()):
                package = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickle errors come in many types; all mean "refused"
            # torch's message is a page suggesting weights_only=False; keep only what it refused
            why = re.search(r"Unsupported global: [^.]*", str(e))
            raise StageError(STAGE, f"{path} cannot be read as a Demucs checkpoint with weights_only=True (only "
                                    f"Demucs' model classes are allowed): "
                                    f"{why.group(0) if why else type(e).__name__ + ': ' + str(e)[:300]}") from None
        if not isinstance(package, dict) or not {"klass", "args", "kwargs", "state"} <= set(package):
            raise StageError(STAGE, f"{path} is not a single Demucs model (klass/args/kwargs/state); bags of models "
                                    "are not supported")
        if isinstance(package["state"], dict) and package["state"].get("__quantized"):
            raise StageError(STAGE, f"{path} is diffq-quantised; use a non-quantised model (e.g. htdemucs)")
        model = load_model(package)  # a dict: demucs builds the class and loads the state, no unpickling
        return model

    def separate(self, audio: Audio) -> Stems:
        import torch
        from demucs.apply import apply_model

        x = np.asarray(audio.samples, dtype=np.float32)
        if len(x) == 0:
            raise StageError(STAGE, "empty audio")
        rate = int(self.model.samplerate)
        y = resample(x, audio.sample_rate, rate)
        mix = torch.from_numpy(np.ascontiguousarray(y)).expand(int(self.model.audio_channels), -1)  # (C, n)
        ref = mix.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8  # demucs.separate's normalisation
        with torch.inference_mode():
            out = apply_model(self.model, ((mix - mean) / std)[None].to(self.device), shifts=0, split=True,
                              overlap=self.overlap, progress=False)  # (1, S, C, n)
        vocals = (out[0, list(self.model.sources).index("vocals")] * std + mean).mean(0).float().cpu().numpy()
        speech = fit_length(resample(vocals, rate, audio.sample_rate), len(x))
        return Stems(Audio(speech, audio.sample_rate), Audio(x - speech, audio.sample_rate))


# -- any separator exported with TorchScript (plug-in) ----------------------------------------


class TorchScriptSeparator:
    """A separator exported with TorchScript, from a local file.

    Contract of the scripted module: ``model(mix)`` with ``mix`` (1, n) float32 in [-1, 1]
    returns (2, n): row 0 the speech, row 1 the background, at ``sample_rate`` (the rate the
    model was trained at; the audio is resampled to it and back, None = use the audio's).
    Any model wrapped to that contract plugs in; ``torch.jit.load`` reads code and tensors,
    no pickle.
    """

    stage = "separate"

    def __init__(self, model_path: str | os.PathLike, sample_rate: int | None = None, device: str = "cpu"):
        path = local_file(model_path, "TorchScript separator", "export one with torch.jit.script(model).save(path) "
                          "(model(mix (1, n)) -> (2, n) speech/background)", stage=self.stage)
        torch = optional_import("torch", "TorchScript separator", "pip install torch", stage=self.stage)
        try:
            self.model = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as e:
            raise StageError(self.stage, f"{path} is not a TorchScript module: {e}") from None
        self.name = f"torchscript:{path.name}"
        self.sample_rate, self.device = sample_rate, device

    def separate(self, audio: Audio) -> Stems:
        import torch

        rate = self.sample_rate or audio.sample_rate
        x = resample(audio.samples, audio.sample_rate, rate)
        with torch.inference_mode():
            y = self.model(torch.from_numpy(np.ascontiguousarray(x))[None].to(self.device))
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != (2, len(x)):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise StageError(self.stage, f"{self.name} returned {shape}, expected (2, {len(x)}) speech/background")
        y = y.detach().float().cpu().numpy()
        if not np.isfinite(y).all():
            raise StageError(self.stage, f"{self.name} returned non-finite samples")
        n = len(audio.samples)
        speech, background = (fit_length(resample(r, rate, audio.sample_rate), n) for r in y)
        return Stems(Audio(speech, audio.sample_rate), Audio(background, audio.sample_rate))
