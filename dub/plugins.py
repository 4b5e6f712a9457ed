"""What the plug-ins for the paper's heavy models share: how weights are found, optional imports.

The transformers plug-ins (Whisper, SeamlessM4T) load the way transformers does: a local
``save_pretrained`` folder, or a Hugging Face hub id, which the library downloads on a machine
with internet and reads from the local cache alone when ``HF_HUB_OFFLINE=1`` is set. The
others (Demucs, a TorchScript separator, the voice model) take one local file. Everything that
can be wrong before the model runs is said in one :class:`~scav.dub.stages.StageError`
(``MissingWeights`` when the weights are not there), with a hint that tells how to get them,
so a pipeline run fails once with a readable reason instead of a library traceback.

Checkpoints are read with ``torch.jit.load`` (TorchScript: code and tensors, no pickle) or
``torch.load(..., weights_only=True)``; arbitrary pickles are never unpickled.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import numpy as np

from .stages import MissingWeights, StageError


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


def pretrained_source(name: str | os.PathLike | None, what: str, hint: str, *, stage: str = "load") -> str:
    """What ``from_pretrained`` is given: an existing folder (holding config.json) or a hub id.

    MissingWeights (with ``hint``) for nothing given, a path that does not exist, a folder
    without config.json.
    """
    from .config import is_hub_id

    if name is None or str(name) == "":
        raise MissingWeights(stage, f"no {what} given; {hint}")
    if Path(name).expanduser().exists() or not is_hub_id(str(name)):
        return str(local_model_dir(name, what, hint, stage=stage))
    return str(name)


def from_pretrained(cls, source: str, what: str, hint: str, *, stage: str = "load", **kwargs):
    """``cls.from_pretrained(source)`` as transformers loads it (hub ids download, or come from the cache
    under HF_HUB_OFFLINE=1); MissingWeights naming what could not be loaded."""
    try:
        return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:  # not in the cache offline, no such repository, files missing
        offline = " (HF_HUB_OFFLINE is set: only the local cache is read)" if _offline() else ""
        raise MissingWeights(stage, f"cannot load the {what} from {source}{offline}: {type(e).__name__}: "
                                    f"{str(e)[:300]}; {hint}") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


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
