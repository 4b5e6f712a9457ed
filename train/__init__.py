"""scav.train: the training app (``scav-train``) on top of the ``scav.model`` library.

Public entry point: ``from scav.train import run, TrainConfig, DubsConfig``; ``run(cfg)``
trains and returns the summary dict. ``run`` is imported on first use, so that importing
the configs (the CLI's ``--help``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import DubsConfig, TrainConfig

if TYPE_CHECKING:
    from .loop import run

__all__ = ["run", "TrainConfig", "DubsConfig"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from .loop import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
