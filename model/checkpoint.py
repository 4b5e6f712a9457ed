"""Checkpoints: atomic writes, plain contents, and the model loader.

A checkpoint is a dict of tensors and primitive types only (it loads with
``torch.load(weights_only=True)``)::

    model             state_dict of SCAVModel
    config            the run's config as a nested plain dict (scav.train's TrainConfig.to_dict());
                      reading a model needs only its 'model' and 'objective' entries
    schema_version    cache schema version the features followed
    cache_fingerprint CacheMeta.fingerprint() of the training cache
    encoders          {'video': EncoderInfo dict, 'audio': EncoderInfo dict}
    video_dim, audio_dim, step
    optimizer, scheduler, rng, train_state   (resume only; absent from averaged.pt)
    averaged_from     list of steps (averaged.pt only)
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from scav.core.files import atomic_path, remove_stale_tmp
from scav.core.schema import CacheError, CacheMeta, EncoderInfo, require_same_encoders

from .config import ModelConfig, ObjectiveConfig
from .network import SCAVModel

REQUIRED_KEYS = ("model", "config", "schema_version", "cache_fingerprint", "encoders", "video_dim", "audio_dim", "step")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or incomplete; the message says why."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file + os.replace)."""
    path = Path(path)
    remove_stale_tmp(path)  # left by a run killed inside an earlier write
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def make_payload(model: SCAVModel, cfg, cache_meta: CacheMeta, step: int, **extra) -> dict[str, Any]:
    """The common part of every checkpoint (see module docstring); ``cfg`` has ``to_dict()``
    with 'model' and 'objective' entries (a training run's config)."""
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": cfg.to_dict(),
        "schema_version": cache_meta.schema_version,
        "cache_fingerprint": cache_meta.fingerprint(),
        "encoders": {"video": cache_meta.video.to_dict(), "audio": cache_meta.audio.to_dict()},
        "video_dim": model.video_dim,
        "audio_dim": model.audio_dim,
        "step": int(step),
        **extra,
    }


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint dict; CheckpointError with the reason otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises loading with weights_only=False: exactly what must not be done
        if "allowed global" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"{path} holds Python objects besides tensors and plain data; SCAV does not "
                                  "unpickle them (that can run any code). Use a checkpoint written by scav-train, "
                                  "from a source you trust") from None
        raise CheckpointError(f"{path} is not a readable SCAV checkpoint (not a torch.save file of tensors "
                              "and plain data)") from None
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise CheckpointError(f"{path} is not a readable SCAV checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a SCAV checkpoint (holds a {type(ckpt).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a complete SCAV checkpoint: missing {missing}")
    return ckpt


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """-> (SCAVModel in eval mode, ObjectiveConfig, meta dict).

    meta: config (the run's config as stored, a plain dict), schema_version,
    cache_fingerprint, encoders (EncoderInfo per modality), video_dim, audio_dim, step,
    averaged_from (or None).
    """
    ckpt = read_checkpoint(path, map_location)
    try:
        stored = ckpt["config"]
        model_cfg = ModelConfig(**stored["model"])
        objective = ObjectiveConfig(**stored["objective"])
        model_cfg.validate()
        objective.validate()
        model = SCAVModel(model_cfg, int(ckpt["video_dim"]), int(ckpt["audio_dim"]), objective)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: config or weights do not fit a SCAV model: {e}") from e
    model.to(map_location).eval()
    meta = {
        "config": stored,
        "schema_version": ckpt["schema_version"],
        "cache_fingerprint": ckpt["cache_fingerprint"],
        "encoders": {m: EncoderInfo.from_dict(d) for m, d in ckpt["encoders"].items()},
        "video_dim": int(ckpt["video_dim"]),
        "audio_dim": int(ckpt["audio_dim"]),
        "step": int(ckpt["step"]),
        "averaged_from": ckpt.get("averaged_from"),
    }
    return model, objective, meta


def check_cache_matches(meta: dict[str, Any], cache_meta: CacheMeta, what: str = "this checkpoint") -> None:
    """Refuse features from other encoders than ``meta`` (from load_model / read_checkpoint)."""
    enc = {m: e if isinstance(e, EncoderInfo) else EncoderInfo.from_dict(e) for m, e in meta["encoders"].items()}
    trained = CacheMeta(cache_meta.schema_version, enc["video"], enc["audio"], cache_meta.layout)
    require_same_encoders(cache_meta, trained, "the cache", f"{what} was trained on",
                          "use a cache extracted with the same encoders as the checkpoint's training cache")


def average_state_dicts(paths: list[Path]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Parameter average of the 'model' entries of ``paths`` (floats averaged in
    float64, other tensors taken from the first). Returns (state_dict, first ckpt)."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    first = read_checkpoint(paths[0])
    acc = {k: v.double().clone() if v.is_floating_point() else v.clone() for k, v in first["model"].items()}
    for p in paths[1:]:
        sd = read_checkpoint(p)["model"]
        for k, v in sd.items():
            if v.is_floating_point():
                acc[k] += v.double()
    n = len(paths)
    ref = first["model"]
    avg = {k: (v / n).to(ref[k].dtype) if ref[k].is_floating_point() else v for k, v in acc.items()}
    return avg, first


def load_trained(checkpoint: str | os.PathLike, cache_meta: CacheMeta, device: torch.device | str = "cpu",
                 dtw_gamma: float | None = None):
    """-> (model in eval mode, ObjectiveConfig, checkpoint meta, DistanceSpec) for features of
    ``cache_meta``: what every consumer of a trained model (retrieval, search, probes) loads.

    The spec is the training distance (``distance_spec``), with soft-DTW's gamma replaced
    when ``dtw_gamma`` is given (0 = hard DTW). Raises CheckpointError / CacheError / ValueError.
    """
    from .objective import distance_spec

    if not Path(checkpoint).is_file():
        raise CheckpointError(f"no checkpoint at {checkpoint}")
    model, objective, meta = load_model(checkpoint, map_location=device)
    check_cache_matches(meta, cache_meta, what=f"checkpoint {checkpoint}")
    if meta["video_dim"] != cache_meta.video.dim or meta["audio_dim"] != cache_meta.audio.dim:
        raise CacheError(
            f"checkpoint expects feature sizes video={meta['video_dim']}, audio={meta['audio_dim']}; "
            f"the cache holds video={cache_meta.video.dim}, audio={cache_meta.audio.dim}"
        )
    spec = distance_spec(objective)
    if dtw_gamma is not None:
        if spec.name != "soft_dtw":
            raise ValueError(f"--dtw-gamma applies to soft-DTW models; {checkpoint} uses {spec.label}")
        spec = spec.with_gamma(dtw_gamma)
    return model, objective, meta, spec
