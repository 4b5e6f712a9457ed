"""Global negatives under DDP: gather features of every rank (open_clip's ``gather_features``).

Part of the library because the objective uses them; outside a process group they return
their input unchanged, so a single process needs nothing of torch.distributed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_features(t: torch.Tensor) -> torch.Tensor:
    """All-gather ``t (n, ...)`` from every rank -> ``(world * n, ...)``, rank order.

    Keeps gradients: the backward sums every rank's gradient for this rank's
    slice (torch.distributed.nn all_gather), so a local loss over gathered
    columns gives the full-batch gradient after DDP averaging.
    Every rank must pass the same shape.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t), dim=0)


def gather_sequences(seq: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather padded sequences of different lengths: seq (n, T, c), mask (n, T) ->
    ((world * n, T_max, c), (world * n, T_max)), T_max = longest T over ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return seq, mask
    t = torch.tensor([seq.shape[1]], device=seq.device, dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    pad = int(t.item()) - seq.shape[1]
    if pad:
        seq = F.pad(seq, (0, 0, 0, pad))
        mask = F.pad(mask, (0, pad), value=False)
    # gloo has no bool collectives: gather the mask as uint8
    all_mask = torch.cat(_gather_nograd(mask.to(torch.uint8)), dim=0).bool()
    return gather_features(seq), all_mask


def _gather_nograd(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out
