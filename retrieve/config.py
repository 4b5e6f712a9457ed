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

SEARCH_METHODS = ("agg", "seq", "hybrid")
METHOD_CHOICES = (*SEARCH_METHODS, "all")
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
    json_path: str | None = None
    batch_size: int = 64
    device: str = "auto"
    export: bool = False
    export_dir: str | None = None
    query_block: int = 1024
    candidate_chunk: int = 1024

    def validate(self) -> None:
        if self.method not in METHOD_CHOICES:
            raise ValueError(f"method must be one of {METHOD_CHOICES}, got {self.method!r}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.dtw_gamma is not None and not (math.isfinite(self.dtw_gamma) and self.dtw_gamma >= 0):
            raise ValueError(f"dtw_gamma must be >= 0 (0 = hard DTW), got {self.dtw_gamma}")
        if self.batch_size < 1 or self.query_block < 1 or self.candidate_chunk < 1:
            raise ValueError("batch size, query block and candidate chunk must be >= 1")
        check_device_name(self.device)

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
