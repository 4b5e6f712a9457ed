"""Typed configuration of a training run (the model and objective configs: :mod:`scav.model.config`).

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
from scav.model.config import ModelConfig, ObjectiveConfig, field_defaults, require  # noqa: F401  (field_defaults: the CLI's)

PRECISIONS = ("fp32", "bf16")
# Dub-augmented training (the dubs paper's variants): see DubsConfig.
DUB_VARIANTS = ("off", "monolingual", "bilingual", "multilingual", "audio-only")
WINDOW_MODES = ("same", "jitter", "aligned")  # how quadruplet windows are drawn: scav.train.augment


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

    The paper's augmentation (Appendix A) is the default: ``windows`` None = two windows per
    clip, drawn independently, assigned 'jitter' for CAV (the paper's) and 'aligned' for
    sequence objectives (each contrasted cross-modal pair covers the same seconds, which a
    sequence distance compares; v_p != v_s, a_p != a_s still); 'same' = one window for both
    views (see ``scav.train.augment.WINDOW_MODES``). Each view's audio gets a time mask of
    up to ``audio_time_mask`` of its steps and a frequency mask of up to ``audio_freq_mask``
    of its frequency bands (None = the paper's 0.5 where the cache records the features'
    frequency layout, none otherwise); video is masked only when ``video_time_mask`` > 0.
    So the monolingual control sees two differently augmented views, as in the paper.
    """

    variant: str = "off"
    language: str | None = None  # bilingual: the secondary track's language tag
    window: float | None = 3.0  # seconds per instance (paper: 3 s); None = the whole clip
    windows: str | None = None  # 'same' | 'jitter' | 'aligned'; None = jitter for CAV, aligned otherwise
    audio_time_mask: float = 0.5  # up to this fraction of each audio view's steps (paper: 50 %)
    audio_freq_mask: float | None = None  # of its frequency bands; None = 0.5 where the layout is known
    video_time_mask: float = 0.0  # video views are not masked unless asked
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

    def window_mode(self, objective: "ObjectiveConfig") -> str:
        """How the two views' windows are drawn (``scav.train.augment.WINDOW_MODES``)."""
        if self.windows is not None:
            return self.windows
        return "jitter" if objective.kind == "cav" else "aligned"

    def validate(self) -> None:
        require(self.variant in DUB_VARIANTS, f"dubs.variant must be one of {DUB_VARIANTS}, got {self.variant!r}")
        require((self.variant == "bilingual") == bool(self.language and self.language.strip()),
               "dubs.language (the secondary language tag) is required by the bilingual variant and only by it")
        require(self.window is None or (math.isfinite(self.window) and self.window > 0),
               f"dubs.window must be None or > 0 seconds, got {self.window}")
        require(self.windows is None or self.windows in WINDOW_MODES,
                f"dubs.windows must be one of {WINDOW_MODES} or None, got {self.windows!r}")
        for name in ("audio_time_mask", "audio_freq_mask", "video_time_mask"):
            v = getattr(self, name)
            require(v is None and name == "audio_freq_mask" or v is not None and 0.0 <= v < 1.0,
                    f"dubs.{name} must be in [0, 1), got {v}")
        for name in ("lambda_v", "lambda_a"):
            v = getattr(self, name)
            require(math.isfinite(v) and v >= 0, f"dubs.{name} must be >= 0, got {v}")
        require(self.variant != "audio-only" or self.lambda_a > 0 or self.lambda_v > 0,
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
        require(bool(self.cache), "cache path is empty")
        require(bool(self.out), "out folder is empty")
        require(
            is_track_selector(self.audio_track),
            f"audio_track must be an index >= 0 or a language tag, got {self.audio_track!r}",
        )
        require(self.val_clips >= 0, f"val_clips must be >= 0, got {self.val_clips}")
        require(self.val_every >= 1, f"val_every must be >= 1, got {self.val_every}")
        require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        require(self.batch_size >= 2, f"batch_size must be >= 2 (contrastive needs negatives), got {self.batch_size}")
        require(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        require(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        require(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        require(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        require(
            self.random_crop is None or (math.isfinite(self.random_crop) and self.random_crop > 0),
            f"random_crop must be None or > 0 seconds, got {self.random_crop}",
        )
        require(self.keep_best >= 1, f"keep_best must be >= 1, got {self.keep_best}")
        require(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        require(0.0 <= self.same_source_fraction <= 1.0,
               f"same_source_fraction must be in [0, 1], got {self.same_source_fraction}")
        require(not (self.dubs.enabled and self.random_crop is not None),
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
        for key, sub in (("model", ModelConfig), ("objective", ObjectiveConfig), ("dubs", DubsConfig)):
            try:
                d[key] = sub(**d.get(key, {}))
            except TypeError as e:  # an unknown or removed field (e.g. objective.direction)
                raise ValueError(f"training config {key!r}: {e}") from None
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

