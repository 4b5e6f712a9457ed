"""What the plug-ins for the paper's heavy models share: local weights only, optional imports.

A plug-in (Demucs, Whisper, SeamlessM4T, a TorchScript separator) is given a local path and
never downloads. Everything that can be wrong before the model runs is said in one
:class:`~scav.dub.stages.StageError` (``MissingWeights`` when the weights are not there), with
a hint that tells how to get them, so a pipeline run fails once with a readable reason
instead of a library traceback or a silent download.

Checkpoints are read with ``torch.jit.load`` (TorchScript: code and tensors, no pickle) or
``torch.load(..., weights_only=True)``; arbitrary pickles are never unpickled.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import numpy as np

from .stages import Audio, MissingWeights, StageError, Stems


def local_model_dir(path: str | os.PathLike | None, what: str, hint: str, *, stage: str = "load",
                    config: str = "config.json") -> Path:
    """``path`` as a folder holding ``config``; MissingWeights (with ``hint``) otherwise.

    ``what`` names the model in the message (e.g. "Whisper model"); ``stage`` is the failure
    row's stage. Only existence is checked here: loading is the plug-in's job.
    """
    if path is None or str(path) == "":
        raise MissingWeights(stage, f"no local folder given for the {what}; {hint}")
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingWeights(stage, f"{what} folder {p} does not exist; {hint}")
    if not p.is_dir():
        raise MissingWeights(stage, f"{what} path {p} is not a folder; {hint}")
    if not (p / config).is_file():
        raise MissingWeights(stage, f"{what} folder {p} has no {config}; {hint}")
    return p


def local_file(path: str | os.PathLike | None, what: str, hint: str, *, stage: str = "load") -> Path:
    """``path`` as an existing, non-empty file; MissingWeights (with ``hint``) otherwise."""
    if path is None or str(path) == "":
        raise MissingWeights(stage, f"no local file given for the {what}; {hint}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingWeights(stage, f"{what} file {p} does not exist or is not a file; {hint}")
    if p.stat().st_size == 0:
        raise MissingWeights(stage, f"{what} file {p} is empty; {hint}")
    return p


def optional_import(module: str, what: str, install: str, *, stage: str = "load") -> ModuleType:
    """Import a package that is not a dependency of scav; StageError telling how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise StageError(stage, f"the {what} needs the '{module}' package, which is not installed "
                                f"({e}); {install}") from None


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """(n,) float32 at ``target`` Hz (soxr through librosa); unchanged when the rates agree."""
    x = np.asarray(x, dtype=np.float32)
    if rate == target:
        return x
    import librosa

    return librosa.resample(x, orig_sr=rate, target_sr=target, res_type="soxr_hq").astype(np.float32)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` cut or zero-padded to ``n`` samples (resampling rounds lengths)."""
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


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
