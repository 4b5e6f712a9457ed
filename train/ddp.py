"""Multi-process training helpers (torchrun / DistributedDataParallel).

Launch: ``torchrun --nproc_per_node=G [--nnodes ...] -m scav.train.cli --cache ...``.
The effective batch is ``world_size * batch_size``; every rank sees the whole
global batch as negatives through :func:`scav.model.gather.gather_features`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

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
