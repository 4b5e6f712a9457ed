"""Optimizer and learning-rate schedule of a training run (paper: AdamW, linear warm-up, cosine)."""

from __future__ import annotations

import math

import torch
from scav.model.network import SCAVModel

from .config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine to ``min_lr_ratio`` at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _decays(name: str, p: torch.nn.Parameter) -> bool:
    """Weight decay on weight matrices only: not on biases, norms, temperatures
    or the relative-position bias tables (an embedding of per-head offsets)."""
    return p.ndim >= 2 and "rel_bias" not in name


def make_optimizer(model: SCAVModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two parameter groups: decayed matrices, then everything else (order is
    part of the optimizer's state_dict, so it must not change between a run and its resume).

    Fused (one kernel per step on a GPU, CPU too): it is also the implementation that takes
    a device-side ``found_inf`` flag and then leaves weights and moments untouched, which is
    how the NaN guard skips a step without reading the loss on the host (:func:`train_step`).
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if _decays(n, p)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if not _decays(n, p)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
