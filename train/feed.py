"""Feeding the loop: the held-out split, the batch stream, and batches prepared on the CPU.

Data order is a pure function of (seed, epoch) in ``scav.core.loader``; the state records
(epoch, batch within epoch), so a resumed run reads exactly the batches an uninterrupted
one would have read. Crops and quadruplet views are drawn from a generator seeded by
(seed, step, rank), so a resumed run cuts them as the uninterrupted one did.

Dub-augmented training (``cfg.dubs``): the loader serves each clip with a second audio
track, :func:`scav.train.augment.make_quadruplets` cuts the primary and secondary
instances on the CPU and :func:`forward_pair` encodes both in one forward.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from scav.core.cache import FeatureCache
from scav.core.loader import Batch, make_train_loader
from scav.core.schema import CacheMeta

from .augment import QuadBatch, ViewMasks, frequency_layout, make_quadruplets, random_crop
from .config import TrainConfig
from .run_folder import TrainState

if TYPE_CHECKING:
    from .loop import Training

log = logging.getLogger(__name__)
PAPER_FREQ_MASK = 0.5  # dubs paper, App. A: masks of up to 50 % of the spectrogram's frequency axis


def split_train_val(cache: FeatureCache, cfg: TrainConfig, world_size: int = 1) -> tuple[list[str], list[str]]:
    """Hold ``val_clips`` clips out of the training split (a fixed choice per seed)."""
    ids = sorted(c.clip_id for c in cache.require_split(cfg.split))
    n = len(ids)
    if cfg.val_clips >= n:
        raise ValueError(
            f"split {cfg.split!r} has {n} clips; holding out val_clips={cfg.val_clips} for validation "
            "leaves none to train on: pass a smaller --val-clips"
        )
    perm = np.random.default_rng(cfg.seed).permutation(n)
    val = sorted(ids[i] for i in perm[: cfg.val_clips])
    held = set(val)
    train = [c for c in ids if c not in held]
    if len(train) // world_size < cfg.batch_size:
        raise ValueError(
            f"batch size {cfg.batch_size} (x {world_size} processes) is larger than the {len(train)} training "
            f"clips of split {cfg.split!r} ({n} minus {cfg.val_clips} held out for validation)"
        )
    return train, val


def audio_rate(cfg: TrainConfig, meta: CacheMeta) -> float | None:
    """Audio steps per second for windows (``--crop``, dubs): the cache's recorded rate."""
    rate = meta.audio.steps_per_second
    if (cfg.random_crop is not None or cfg.dubs.enabled) and not rate:
        raise ValueError(f"the cache's audio encoder {meta.audio.name} records no steps per second: "
                         "temporal windows (--crop, --dubs) cannot be cut")
    return rate


def view_masks(cfg: TrainConfig, meta: CacheMeta) -> ViewMasks:
    """The masks of dub-augmented views for this cache (``DubsConfig``): the frequency mask
    needs the audio features' frequency layout (``augment.frequency_layout``). Left at its
    default (None) it is the paper's 50 % where the layout is known and off, with a warning,
    where not; asked for explicitly on an unknown layout, it is refused."""
    dubs = cfg.dubs
    if not dubs.enabled:
        return ViewMasks()
    layout = frequency_layout(meta.audio)
    freq = dubs.audio_freq_mask
    if layout is None and freq:
        raise ValueError(f"--audio-freq-mask: the cache's audio encoder {meta.audio.name} records no frequency "
                         "layout of its features (known: BEATs patch blocks, fbank mel bins); pass 0")
    if freq is None:
        freq = PAPER_FREQ_MASK if layout is not None else 0.0
        if layout is None:
            log.warning("the cache's audio encoder %s records no frequency layout of its features: "
                        "dub views get time masks only, no frequency masks", meta.audio.name)
    return ViewMasks(dubs.video_time_mask, dubs.audio_time_mask, freq, layout if freq > 0 else None)


def batch_stream(cfg: TrainConfig, start: TrainState, clip_ids: list[str], cache=None) -> Iterator[tuple[int, int, Batch]]:
    """Endless ``(epoch, index in epoch, batch)`` from ``start``'s position (epoch,
    batch_in_epoch); ``cache``: the open FeatureCache of ``cfg.cache`` if the caller has it.

    The position travels with each batch instead of being written into the state here:
    the batch feed reads a batch ahead of the step that trains on it (:class:`BatchFeed`),
    and the state must name the batches trained on, not the ones read.
    """
    epoch, first = start.epoch, start.batch_in_epoch
    while True:
        loader = make_train_loader(
            cache if cache is not None else cfg.cache, cfg.split, cfg.batch_size, seed=cfg.seed, epoch=epoch,
            start_batch=first, clip_ids=clip_ids, num_workers=cfg.num_workers, track=cfg.audio_track,
            same_source_fraction=cfg.same_source_fraction, second_track=cfg.dubs.second_track(),
        )
        it = iter(loader)
        index = first
        while True:
            # DataLoader start-up draws from the global RNG: keep it out of the dropout stream.
            with torch.random.fork_rng(devices=[]):
                batch = next(it, None)
            if batch is None:
                break
            yield epoch, index, batch
            index += 1
        epoch, first = epoch + 1, 0


class BatchFeed:
    """The batches of the coming steps, on the device.

    A batch is cropped (when asked) on the CPU, before the copy: on a GPU the crop's
    per-clip lengths would each be a host sync. On CUDA the next batch is also cropped
    and copied into pinned memory by a helper thread while the current step runs, so its
    copy to the GPU is asynchronous and the step does not wait for the host.
    Reading from the loader stays on this thread (``batch_stream`` forks the global RNG).
    """

    def __init__(self, t: "Training", ahead: bool | None = None):
        """``ahead``: prepare the next batch in a helper thread (default: on CUDA)."""
        self.t = t
        self.data = batch_stream(t.cfg, t.state, t.rank_ids, t.cache)
        self.pin = t.device.type == "cuda"
        self.pool = None
        if t.device.type == "cuda" if ahead is None else ahead:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1, thread_name_prefix="scav-feed")
        self.ahead = None  # future of the next step's prepared batch

    def _prepare(self, batch: Batch, step: int) -> "Batch | QuadBatch":
        """Crop or cut into quadruplets (CPU), and pin, the batch trained at ``step`` (the
        state's step before it)."""
        t = self.t
        # seeded by step and rank: a resumed run crops as the uninterrupted one did
        gen = torch.Generator().manual_seed(t.cfg.seed * 1_000_003 + step * 101 + t.dist.rank)
        fps = [t.fps[c] for c in batch.clip_ids]
        dubs = t.cfg.dubs
        if dubs.enabled:
            batch = make_quadruplets(batch, fps, dubs.window, gen, audio_rate=t.audio_rate,
                                     windows=dubs.window_mode(t.cfg.objective), masks=t.masks)
        elif t.cfg.random_crop is not None:
            batch = random_crop(batch, fps, t.cfg.random_crop, gen, audio_rate=t.audio_rate)
        return batch.pin_memory() if self.pin else batch

    def next(self) -> tuple[int, int, Batch]:
        """-> (epoch, index in epoch, batch on the device) for step ``state.step + 1``."""
        step = self.t.state.step
        if self.pool is None:
            epoch, index, batch = next(self.data)
            batch = self._prepare(batch, step)
        else:
            current = self.ahead if self.ahead is not None else self._submit(step)
            self.ahead = self._submit(step + 1)
            epoch, index, batch = current.result()
        return epoch, index, batch.to(self.t.device, non_blocking=True)

    def _submit(self, step: int):
        epoch, index, batch = next(self.data)
        return self.pool.submit(lambda: (epoch, index, self._prepare(batch, step)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.data.close()


def _cat_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two padded batches (B, T1, ...) and (B, T2, ...) -> (2B, max T, ...), zero/False padded."""
    t = max(a.shape[1], b.shape[1])

    def pad(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == t:
            return x
        widths = [0, 0] * (x.dim() - 2) + [0, t - x.shape[1]]
        return torch.nn.functional.pad(x, widths)

    return torch.cat([pad(a), pad(b)])


def forward_pair(net, primary: Batch, secondary: Batch) -> tuple[dict, dict]:
    """The model on both instances of a quadruplet batch in ONE forward (one kernel launch per
    layer, and DDP sees a single forward per step) -> (primary outputs, secondary outputs).
    Padding beyond a clip's length is masked everywhere, so a clip's latents do not depend on
    the other half's lengths."""
    n = len(primary)
    out = net(_cat_padded(primary.video, secondary.video), _cat_padded(primary.video_mask, secondary.video_mask),
              _cat_padded(primary.audio, secondary.audio), _cat_padded(primary.audio_mask, secondary.audio_mask))
    halves = ({}, {})
    for k, v in out.items():
        for h, part in zip(halves, (v[:n], v[n:]) if v.dim() and v.shape[0] == 2 * n else (v, v)):
            h[k] = part
    return halves
