"""Pooling of latent sequences into clip embeddings (the CAV / aggregation side)."""

from __future__ import annotations

import torch


def masked_mean(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid steps: seq (B, T, c), mask (B, T) bool True = real -> (B, c)."""
    m = mask.unsqueeze(-1).to(seq.dtype)
    return (seq * m).sum(1) / m.sum(1).clamp(min=1.0)
