"""Multi-process training helpers (torchrun / DistributedDataParallel).

Launch: ``torchrun --nproc_per_node=G [--nnodes ...] -m scav.train.cli --cache ...``.
The effective batch is ``world_size * batch_size``; every rank sees the whole
global batch as negatives through :func:`gather_features`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's env vars (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    log.info("rank %d / %d (local %d) on %s", info.rank, info.world_size, info.local_rank, device)
    return info


def cleanup(synchronize: bool = True) -> None:
    """Leave the process group. ``synchronize``: wait for every rank first, so that no rank
    tears gloo down while another still has work in flight (that aborts the other process
    with "terminate called without an active exception"); skipped after an error, when the
    other ranks may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


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


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_max_(t: torch.Tensor) -> torch.Tensor:
    """In place: the elementwise max over ranks (no host sync on NCCL); -> ``t``."""
    if _initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_mean_(t: torch.Tensor) -> torch.Tensor:
    """In place: the mean over ranks of a floating tensor; -> ``t``."""
    if _initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t
