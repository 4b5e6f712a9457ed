"""What one probe run does: :class:`ProbeConfig` (light: no torch, so ``--help`` is fast).

The CLI (``scav.probe.cli``) derives its choices and defaults from here; the run itself is
:func:`scav.probe.pipeline.run`. :data:`OPTIMIZER_DEFAULTS` is also what
:func:`scav.probe.train_probe.fit_probe` falls back to.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from scav.core.device import check_device_name
from scav.core.schema import is_track_selector

MODALITIES = ("audio", "video", "both")
PROBES = ("linear", "mlp")
OPTIMIZERS = ("sgd", "adamw")

# Per probe kind: optimizer, peak lr (cosine decay to 0 over all steps), weight decay.
# linear: SGD + momentum 0.9 as in the paper (App. B.3: SGD, lr 0.2, cosine, batch 1024, 200
#   epochs), at lr 0.1 for our batch of 256 (more steps on small splits); no weight decay: the
#   val-picked epoch is the regulariser. mlp: AdamW 1e-3, wd 1e-4 (HEAR's MLP probe uses Adam).
#   Measured on correlated synthetic features (2000 train clips, 256 dims, 10 classes, 100
#   epochs, 2 seeds): linear with SGD lr 0.05-0.2 (batch 256 or 1024) or AdamW 1e-3, and mlp
#   with AdamW 1e-3 or SGD 0.01-0.1, each land within 2 points of test top-1 of the others of
#   their kind, so these are safe, untuned defaults.
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0},
    "mlp": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
}


@dataclass(frozen=True)
class ProbeConfig:
    """One probe run: embed three splits of a cache with a checkpoint, fit on train, pick the
    epoch on val, report on test.

    lr / weight_decay / optimizer: None = :data:`OPTIMIZER_DEFAULTS` of the probe kind.
    batch_size: the probe's; embed_batch_size: clips per encoder batch.
    json_path: also write the result there ('-' = standard output).
    """

    checkpoint: str
    cache: str = "features.zarr"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    modality: str = "audio"
    probe: str = "linear"
    epochs: int = 100
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = None
    batch_size: int = 256
    hidden: int = 512  # mlp: hidden units of its one hidden layer
    seed: int = 0
    audio_track: int | str = 0  # index or language tag (scav.core.schema.TrackSelector)
    device: str = "auto"
    embed_batch_size: int = 64
    json_path: str | None = None

    def validate(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.probe not in PROBES:
            raise ValueError(f"probe must be one of {PROBES}, got {self.probe!r}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "hidden", "embed_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay is not None and not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight decay must be >= 0, got {self.weight_decay}")
        splits = (self.train_split, self.val_split, self.test_split)
        if len(set(splits)) < 3:
            # val picks the epoch and test reports it: the same clips in two roles would hide overfitting
            raise ValueError(f"train, val and test splits must differ, got {splits}")
        check_device_name(self.device)
        if not is_track_selector(self.audio_track):
            raise ValueError(f"audio_track must be an index >= 0 or a language tag, got {self.audio_track!r}")

    @property
    def splits(self) -> dict[str, str]:
        """role -> split name."""
        return {"train": self.train_split, "val": self.val_split, "test": self.test_split}

    def optim_settings(self) -> dict[str, Any]:
        """optimizer, lr, weight_decay: the given ones, else the probe kind's defaults."""
        d = OPTIMIZER_DEFAULTS[self.probe]
        return {k: d[k] if getattr(self, k) is None else getattr(self, k) for k in ("optimizer", "lr", "weight_decay")}


def defaults() -> dict[str, Any]:
    """Field name -> default of :class:`ProbeConfig` (required fields left out)."""
    return {f.name: f.default for f in dataclasses.fields(ProbeConfig) if f.default is not dataclasses.MISSING}
