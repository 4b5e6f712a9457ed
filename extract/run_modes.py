"""The ways of running shards: in this process, one spawned process per device, or dask tasks.

Pending clips are dealt into disjoint, deterministic shards (``pending[k::n]``)
and each shard writes its own parts, so every part has exactly one writer
(zarr-python #3682). Each mode returns the shards' result dicts.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from pathlib import Path

from ..core.cache import CacheWriter
from ..data_manifests.manifest import ManifestRow
from .shard import extract_shard, shard_in_process

log = logging.getLogger(__name__)


def shards_of(pending: list[ManifestRow], n: int) -> list[list[ManifestRow]]:
    """Deterministic disjoint shares: shard k gets pending[k::n] (empty ones dropped)."""
    return [s for s in (pending[k::n] for k in range(n)) if s]


def run_here(cfg, pending, common: dict, bar: Progress) -> list[dict]:
    """One shard in this process; decoding in ``cfg.n_decode_workers()`` processes (0: threads)."""
    return [extract_shard(pending, device=cfg.devices[0], on_clip=bar.step,
                          decode_workers=cfg.n_decode_workers(), **common)]


def run_processes(cfg, pending, common: dict, bar: Progress) -> list[dict]:
    """One spawned encoder process per device, each writing pending[k::n] with its share of decode workers."""
    import multiprocessing as mp

    from .decode_pool import available_cores

    shards = shards_of(pending, len(cfg.devices))
    workers = cfg.n_decode_workers()
    each = max(1, workers // len(shards)) if workers > 0 else 0
    torch_threads = max(1, (available_cores() - workers) // len(shards)) if workers > 0 else None
    ctx = mp.get_context("spawn")  # never fork a process holding CUDA / zarr state
    with cf.ProcessPoolExecutor(len(shards), mp_context=ctx) as pool:
        futs = [
            pool.submit(shard_in_process, dict(rows=shard, device=dev, decode_workers=each,
                                               torch_threads=torch_threads, **common))
            for shard, dev in zip(shards, cfg.devices)
        ]
        return wait_polling(futs, bar, cf.wait)


def run_dask(cfg, pending, common: dict, bar: Progress) -> list[dict]:
    """Shards as tasks on an existing dask.distributed cluster (decoding in threads of each task)."""
    from distributed import Client
    from distributed import wait as dask_wait

    with Client(cfg.scheduler) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        shards = shards_of(pending, cfg.shards or 2 * n_workers)
        futs = [
            client.submit(extract_shard, shard, device="auto", pure=False,
                          key=f"scav-extract-shard-{k}-{time.time_ns()}", **common)
            for k, shard in enumerate(shards)
        ]

        def waiter(fs, timeout):
            try:
                dask_wait(fs, timeout=timeout)
            except TimeoutError:
                pass

        return wait_polling(futs, bar, waiter)


def wait_polling(futs: list, bar: Progress, waiter) -> list[dict]:
    """Wait for shard futures, moving the progress bar from the committed parts."""
    while not all(f.done() for f in futs):
        waiter(futs, timeout=1.0)
        bar.poll()
    return [f.result() for f in futs]


class Progress:
    """tqdm bar with clips/s and ETA; polls committed parts when work runs elsewhere."""

    def __init__(self, total: int, enabled: bool, out: Path, done_before: set[str]):
        self.total, self.enabled, self.out = total, enabled, out
        self.base = len(done_before)
        self.bar = None
        self._lock = threading.Lock()

    def __enter__(self) -> Progress:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, unit="clip", desc="extract", dynamic_ncols=True, smoothing=0.1)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def poll(self) -> None:
        if self.bar is None:
            return
        n = len(CacheWriter(self.out, None).done_clip_ids()) - self.base  # type: ignore[arg-type]
        with self._lock:
            self.bar.update(max(0, min(n, self.total) - self.bar.n))
