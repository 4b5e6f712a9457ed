"""Typed configuration of the training stage: model, objective, run.

Configs are validated without being changed (``validate()`` raises ValueError
with a readable reason) and round-trip through plain dicts, which is how they
are stored in ``config.json`` and inside checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from scav.core.device import check_device_name
from scav.core.schema import is_track_selector

OBJECTIVES = ("cav", "scav", "cav+scav")
DISTANCES = ("euclidean", "soft_dtw", "wasserstein")
INTERPS = ("pre", "post")
RESAMPLES = ("video", "audio")  # which modality is resampled to the other's length
# Deprecated (one release): the old name of `resample`, with the retrieval-style literals.
LEGACY_DIRECTION = {"v2a": "video", "a2v": "audio"}
PRECISIONS = ("fp32", "bf16")
# Wasserstein: position cost and Sinkhorn eps relative to each pair's mean step cost
# ('step_mean', this release) or absolute ('none': what models trained before it used).
WASSERSTEIN_SCALES = ("step_mean", "none")
# Dub-augmented training (the dubs paper's variants): see DubsConfig.
DUB_VARIANTS = ("off", "monolingual", "bilingual", "multilingual", "audio-only")


def _check(ok: bool, msg: str) -> None:
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
            _check(getattr(self, name) >= 1, f"model.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.video_layers >= 0 and self.audio_layers >= 0, "model layer counts must be >= 0")
        _check(self.c % self.heads == 0, f"model.c ({self.c}) must be divisible by heads ({self.heads})")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        _check(self.rel_pos_buckets % 2 == 0, "model.rel_pos_buckets must be even (half per direction)")
        _check(
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
        _check(self.kind in OBJECTIVES, f"objective.kind must be one of {OBJECTIVES}, got {self.kind!r}")
        _check(self.distance in DISTANCES, f"objective.distance must be one of {DISTANCES}, got {self.distance!r}")
        _check(self.interp in INTERPS, f"objective.interp must be one of {INTERPS}, got {self.interp!r}")
        _check(self.resample in RESAMPLES, f"objective.resample must be one of {RESAMPLES}, got {self.resample!r}")
        _check(self.wasserstein_scale in WASSERSTEIN_SCALES,
               f"objective.wasserstein_scale must be one of {WASSERSTEIN_SCALES}, got {self.wasserstein_scale!r}")
        for name in ("lambda_init", "tau_init", "gamma", "eps"):
            v = getattr(self, name)
            _check(math.isfinite(v) and v > 0, f"objective.{name} must be a positive number, got {v}")
        _check(
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


@dataclass(frozen=True)
class DubsConfig:
    """Quadruplet training of "Looking similar, sounding different" (§3, Appendix A).

    Each clip gives a primary (v_p, a_p) and a secondary (v_s, a_s) instance: two temporal
    windows of ``window`` seconds and, for the secondary audio, another track of the clip.
    The cross-modal terms contrast (v_p, a_s) and (v_s, a_p) (Eq. 1-2); ``lambda_v`` /
    ``lambda_a`` add the within-modal terms (Eq. 3). Variants (which track is a_s):

    - ``monolingual``: the primary track again (the paper's control: two augmentations);
    - ``bilingual``: the track tagged ``language`` (clips without it: another track if any);
    - ``multilingual``: the clip's other tracks in turn, one per epoch (round-robin);
    - ``audio-only``: as multilingual, within-modal terms only (no cross-modal term).

    ``jitter``: draw the secondary window independently of the primary (the paper's temporal
    jitter). None = on for CAV, off for sequence objectives, whose distance compares
    *when* things happen: there v_p and a_s cover the same seconds.
    """

    variant: str = "off"
    language: str | None = None  # bilingual: the secondary track's language tag
    window: float | None = 3.0  # seconds per instance (paper: 3 s); None = the whole clip
    jitter: bool | None = None
    mask_fraction: float = 0.0  # time mask of up to this fraction of each sequence's steps
    lambda_v: float = 0.0
    lambda_a: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.variant != "off"

    @property
    def cross(self) -> bool:
        return self.variant != "audio-only"

    def second_track(self) -> int | str | None:
        """The loader's ``second_track`` policy for this variant (None = off)."""
        return {"off": None, "monolingual": "same", "bilingual": self.language,
                "multilingual": "round-robin", "audio-only": "round-robin"}[self.variant]

    def uses_jitter(self, objective: "ObjectiveConfig") -> bool:
        return (objective.kind == "cav") if self.jitter is None else self.jitter

    def validate(self) -> None:
        _check(self.variant in DUB_VARIANTS, f"dubs.variant must be one of {DUB_VARIANTS}, got {self.variant!r}")
        _check((self.variant == "bilingual") == bool(self.language and self.language.strip()),
               "dubs.language (the secondary language tag) is required by the bilingual variant and only by it")
        _check(self.window is None or (math.isfinite(self.window) and self.window > 0),
               f"dubs.window must be None or > 0 seconds, got {self.window}")
        _check(0.0 <= self.mask_fraction < 1.0, f"dubs.mask_fraction must be in [0, 1), got {self.mask_fraction}")
        for name in ("lambda_v", "lambda_a"):
            v = getattr(self, name)
            _check(math.isfinite(v) and v >= 0, f"dubs.{name} must be >= 0, got {v}")
        _check(self.variant != "audio-only" or self.lambda_a > 0 or self.lambda_v > 0,
               "the audio-only variant trains the within-modal terms only: give lambda_a > 0 (and/or lambda_v)")


@dataclass(frozen=True)
class TrainConfig:
    cache: str
    out: str
    split: str = "train"
    audio_track: int | str = 0  # index or language tag (scav.core.schema.TrackSelector)
    val_clips: int = 550
    val_every: int = 1000
    steps: int = 250_000
    batch_size: int = 32
    lr: float = 7e-4
    betas: tuple[float, float] = (0.95, 0.98)
    weight_decay: float = 0.01
    warmup_steps: int = 5000
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    seed: int = 0
    precision: str = "fp32"
    num_workers: int = 0
    random_crop: float | None = None  # seconds; same window in both modalities
    same_source_fraction: float = 0.0  # of each batch from one source (hard negatives; dubs paper: 1/8)
    keep_best: int = 10
    log_every: int = 50
    device: str = "auto"  # 'auto' = cuda if available (or LOCAL_RANK's cuda) else cpu
    resume: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    dubs: DubsConfig = field(default_factory=DubsConfig)

    def validate(self) -> None:
        _check(bool(self.cache), "cache path is empty")
        _check(bool(self.out), "out folder is empty")
        _check(
            is_track_selector(self.audio_track),
            f"audio_track must be an index >= 0 or a language tag, got {self.audio_track!r}",
        )
        _check(self.val_clips >= 0, f"val_clips must be >= 0, got {self.val_clips}")
        _check(self.val_every >= 1, f"val_every must be >= 1, got {self.val_every}")
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.batch_size >= 2, f"batch_size must be >= 2 (contrastive needs negatives), got {self.batch_size}")
        _check(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        _check(
            self.random_crop is None or (math.isfinite(self.random_crop) and self.random_crop > 0),
            f"random_crop must be None or > 0 seconds, got {self.random_crop}",
        )
        _check(self.keep_best >= 1, f"keep_best must be >= 1, got {self.keep_best}")
        _check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        _check(0.0 <= self.same_source_fraction <= 1.0,
               f"same_source_fraction must be in [0, 1], got {self.same_source_fraction}")
        _check(not (self.dubs.enabled and self.random_crop is not None),
               "random_crop and dub-augmented training both cut windows: use dubs.window instead of random_crop")
        check_device_name(self.device)
        self.model.validate()
        self.objective.validate()
        self.dubs.validate()

    # -- plain-dict round trip (config.json, checkpoints) -----------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        d["model"] = ModelConfig(**d.get("model", {}))
        d["objective"] = ObjectiveConfig(**_upgrade_objective(d.get("objective", {})))
        d["dubs"] = DubsConfig(**d.get("dubs", {}))  # configs before dubs: off
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


def _upgrade_objective(d: dict[str, Any]) -> dict[str, Any]:
    """Read configs of earlier releases (checkpoints, config.json): ``direction`` became
    ``resample``; a config without ``wasserstein_scale`` was trained with the absolute
    Wasserstein costs, and keeps them (for the other distances the field means nothing, and
    takes the default so that their runs resume as before)."""
    d = dict(d)
    if d.get("distance") == "wasserstein":
        d.setdefault("wasserstein_scale", "none")
    if "direction" in d:
        old = d.pop("direction")
        if old not in LEGACY_DIRECTION:
            raise ValueError(f"objective.direction must be one of {tuple(LEGACY_DIRECTION)}, got {old!r}")
        d.setdefault("resample", LEGACY_DIRECTION[old])
    return d
