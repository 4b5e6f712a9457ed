"""Typed configuration of the SCAV model and its objective: what a checkpoint needs to be rebuilt.

Configs are validated without being changed (``validate()`` raises ValueError with a readable
reason) and round-trip through plain dicts (``config.json``, checkpoints).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

OBJECTIVES = ("cav", "scav", "cav+scav")
DISTANCES = ("euclidean", "soft_dtw", "wasserstein")
INTERPS = ("pre", "post")
RESAMPLES = ("video", "audio")  # which modality is resampled to the other's length
# Wasserstein: position cost and Sinkhorn eps relative to each pair's mean step cost
# ('step_mean', this release) or absolute ('none': what models trained before it used).
WASSERSTEIN_SCALES = ("step_mean", "none")


def require(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def field_defaults(cls) -> dict[str, Any]:
    """Field name -> default value of a config dataclass (fields with a factory are left out).

    The command line reads its defaults from here, so the dataclass is their one source.
    """
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def default_interp(kind: str, distance: str) -> str:
    """'pre' for SCAV with the Euclidean distance (paper's best on VGGSound), else 'post'
    (soft-DTW / Wasserstein align the sequences themselves; for CAV 'post' means no
    interpolation at all during training)."""
    return "pre" if kind != "cav" and distance == "euclidean" else "post"


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the SCAV model (paper §IV defaults: 38 M trainable parameters).

    Relative positions: one T5-style bucketed bias table per encoder, one value
    per (bucket, head), shared by all layers of that encoder (as in T5).
    """

    c: int = 512
    video_layers: int = 8
    audio_layers: int = 2
    heads: int = 8
    video_mlp_hidden: int = 2048
    audio_mlp_hidden: int = 768
    dropout: float = 0.1
    rel_pos_buckets: int = 32
    rel_pos_max_distance: int = 128
    ff_mult: int = 4

    def validate(self) -> None:
        for name in ("c", "heads", "video_mlp_hidden", "audio_mlp_hidden", "rel_pos_buckets", "ff_mult"):
            require(getattr(self, name) >= 1, f"model.{name} must be >= 1, got {getattr(self, name)}")
        require(self.video_layers >= 0 and self.audio_layers >= 0, "model layer counts must be >= 0")
        require(self.c % self.heads == 0, f"model.c ({self.c}) must be divisible by heads ({self.heads})")
        require(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        require(self.rel_pos_buckets % 2 == 0, "model.rel_pos_buckets must be even (half per direction)")
        require(
            self.rel_pos_max_distance > self.rel_pos_buckets // 4,
            "model.rel_pos_max_distance must exceed rel_pos_buckets/4 (T5 bucketing)",
        )


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the model is trained to do.

    kind: 'cav' (aggregation, §III-B), 'scav' (sequence, §III-C) or 'cav+scav'
    (Table IV multi-task). ``resample`` says which modality is interpolated to
    the other's length ('video' = the paper's v→a, 'audio' = a→v) and ``interp``
    where: 'pre' = raw features before the MLP/Transformer, 'post' = latent
    sequences inside the distance. (Retrieval's a2v / v2a name the *query* side.)
    """

    kind: str = "scav"
    distance: str = "euclidean"
    interp: str = "pre"
    resample: str = "video"
    normalize: bool = True  # z-score the distance matrix (Table IV ablation 1)
    lambda_init: float = 1.0  # SCAV temperature init (Table IV ablation 2: 0.07)
    tau_init: float = 0.07  # CAV temperature init
    gamma: float = 0.1  # soft-DTW smoothing
    eps: float = 0.1  # Sinkhorn entropic regularisation (relative to the step costs with wasserstein_scale)
    wasserstein_scale: str = "step_mean"  # see WASSERSTEIN_SCALES

    def validate(self) -> None:
        require(self.kind in OBJECTIVES, f"objective.kind must be one of {OBJECTIVES}, got {self.kind!r}")
        require(self.distance in DISTANCES, f"objective.distance must be one of {DISTANCES}, got {self.distance!r}")
        require(self.interp in INTERPS, f"objective.interp must be one of {INTERPS}, got {self.interp!r}")
        require(self.resample in RESAMPLES, f"objective.resample must be one of {RESAMPLES}, got {self.resample!r}")
        require(self.wasserstein_scale in WASSERSTEIN_SCALES,
               f"objective.wasserstein_scale must be one of {WASSERSTEIN_SCALES}, got {self.wasserstein_scale!r}")
        for name in ("lambda_init", "tau_init", "gamma", "eps"):
            v = getattr(self, name)
            require(math.isfinite(v) and v > 0, f"objective.{name} must be a positive number, got {v}")
        require(
            not (self.interp == "pre" and self.distance != "euclidean"),
            "objective.interp='pre' makes the sequences equal-length; it only applies to the "
            "'euclidean' distance (soft_dtw / wasserstein align sequences themselves: use interp='post')",
        )

    @classmethod
    def with_default_interp(cls, interp: str | None = None, **kw: Any) -> "ObjectiveConfig":
        """An ObjectiveConfig whose ``interp``, when None, follows :func:`default_interp`
        (the one place that default is applied; the CLI builds its objective here)."""
        kind = kw.get("kind", cls.kind)
        distance = kw.get("distance", cls.distance)
        return cls(interp=interp or default_interp(kind, distance), **kw)

    @property
    def uses_cav(self) -> bool:
        return self.kind in ("cav", "cav+scav")

    @property
    def uses_scav(self) -> bool:
        return self.kind in ("scav", "cav+scav")
