"""What one retrieval run does: :class:`RetrieveConfig` (light: no torch, so ``--help`` is fast).

The CLI (``scav.retrieve.cli``) derives its choices and defaults from this dataclass; the
run itself is :func:`scav.retrieve.evaluate.run`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scav.core.device import check_device_name
from scav.core.schema import is_track_selector

SEARCH_METHODS = ("agg", "seq", "hybrid")
METHOD_CHOICES = (*SEARCH_METHODS, "all")
PRECISIONS = ("fp32", "bf16")  # = scav.sequence.euclidean.PRECISIONS (kept light: no torch here)
DEFAULT_K = 100  # hybrid's agg pre-selection when k is not given (or the split size if smaller)


@dataclass(frozen=True)
class RetrieveConfig:
    """One retrieval run within one split of a feature cache.

    k: hybrid's agg pre-selection; None = min(DEFAULT_K, split size), an explicit k
    larger than the split is an error. dtw_gamma: soft-DTW models only; None = the
    gamma the model was trained with, 0 = hard DTW. export: keep the latents next to the
    cache, in ``export_dir`` (default ``<cache>.retrieval``), and reuse them on later runs.
    json_path: also write the result there ('-' = standard output).
    """

    checkpoint: str
    split: str
    cache: str = "features.zarr"
    method: str = "all"
    k: int | None = None
    dtw_gamma: float | None = None
    audio_track: int | str = 0  # index or language tag (scav.core.schema.TrackSelector)
    json_path: str | None = None
    batch_size: int = 64
    device: str = "auto"
    export: bool = False
    export_dir: str | None = None
    query_block: int | str = "auto"  # queries scored together; 'auto' = sized from free memory
    candidate_chunk: int | str = "auto"  # candidates scored together; likewise
    precision: str = "fp32"  # seq's cross term: fp32 (exact) or bf16 (interpolated Euclidean)

    def validate(self) -> None:
        if self.method not in METHOD_CHOICES:
            raise ValueError(f"method must be one of {METHOD_CHOICES}, got {self.method!r}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.dtw_gamma is not None and not (math.isfinite(self.dtw_gamma) and self.dtw_gamma >= 0):
            raise ValueError(f"dtw_gamma must be >= 0 (0 = hard DTW), got {self.dtw_gamma}")
        if self.batch_size < 1:
            raise ValueError("batch size must be >= 1")
        for name in ("query_block", "candidate_chunk"):
            v = getattr(self, name)
            if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be 'auto' or an integer >= 1, got {v!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_device_name(self.device)
        if not is_track_selector(self.audio_track):
            raise ValueError(f"audio_track must be an index >= 0 or a language tag, got {self.audio_track!r}")

    @property
    def methods(self) -> tuple[str, ...]:
        return SEARCH_METHODS if self.method == "all" else (self.method,)

    @property
    def export_root(self) -> Path:
        return Path(self.export_dir) if self.export_dir else Path(f"{self.cache}.retrieval")


def defaults() -> dict[str, Any]:
    """Field name -> default of :class:`RetrieveConfig` (required fields left out)."""
    return {
        f.name: f.default for f in dataclasses.fields(RetrieveConfig) if f.default is not dataclasses.MISSING
    }
