"""Shuffled training batches and deterministic eval batches from a feature cache.

Training order (a pure function of ``(seed, epoch, clip set)``)::

    clips  = the selected clips in cache order (part order, then row)
    blocks = runs of up to ``block_clips`` consecutive selected clips of one part
    1. permute the blocks          (rng = default_rng([seed, epoch]))
    2. concatenate them and cut the stream into windows of ``buffer_clips`` clips
       (rounded to a multiple of ``batch_size``)
    3. permute the clips inside each window
    4. batch k = clips [k * B, (k + 1) * B) of the result

This is the webdataset recipe (shard shuffle + shuffle buffer) made exact: a
window holds ``buffer_clips / block_clips`` blocks drawn at random from the whole
split (default 2048 / 8 = 256 blocks), so even with sources stored contiguously a
batch mixes many places of the cache.  Every clip is served once per epoch;
``drop_last`` drops only the final short batch.  ``start_batch`` skips batches
without reading them (exact resume of a killed run).

Same-source groups (``same_source_fraction`` > 0, the dubs paper's hard negatives):
the batches come from ``source_batches.source_batches`` over the selected clips'
sources instead: the first ``max(2, round(fraction * B))`` clips of a batch share a
source (chosen uniformly among the sources that still have that many unused clips),
the rest are uniform over the unused clips; once no source has enough left, the rest
of the epoch is plain uniform batches.  Still a pure function of ``(seed, epoch, clip
set)``, every clip once per epoch: ``start_batch``, workers and ``drop_last`` work as
above.  With 0 the order is the one above, unchanged.

Reading: clips are read by offsets straight from the chunk files of the Zarr
arrays (``chunk_layout.ArrayChunks``; uncompressed layouts, plain or sharded,
with or without crc32c; compressed ones fall back to Zarr): one memcpy per clip and modality (~0.4 and ~0.75 MB at the
paper's shapes) from a read-only map of the chunk file straight into the batch's
padded float16 tensor.  This avoids Zarr's per-call overhead, which capped the
one-clip-at-a-time path at a few hundred clips/s.  The maps belong to the open
cache (``clip_reader.files_for``) and outlive the epoch: from the second epoch on, warm
reads are plain memcpys (on the bench VM ~3x what ``pread`` of the same
page-cache bytes gave, which the loader used before).  Batches stay float16 as
stored; ``Batch.to(device)`` casts to float32 after the move (free on a GPU;
half the bytes to read and copy).

Memory that is written once per batch is reused (``buffers.BufferPool``): on the bench
machine, page faults on fresh memory cost more than the reads themselves.  A
buffer returns to the pool only when no tensor uses it, so batches a caller keeps
are never overwritten.  Without workers, batches are built by one background
thread, up to ``prefetch_factor`` (2) batches ahead: the copies and the training
step both release the GIL, so reading overlaps the step.  While a batch is built
the kernel is asked (``madvise WILLNEED``) to fetch the next batch's byte ranges,
so cold reads overlap too (cold, the loader runs at the disk's rate).  The
shuffle window is an order, not a buffer in memory.

Workers: batch k is built by DataLoader worker ``k % num_workers`` (an
IterableDataset; each worker opens the cache itself, spawn context: forking
after the parent read zarr can deadlock, iohub #416; batches are allocated in
shared memory so passing them back costs no copy; workers start once per epoch,
a few seconds).  The main process yields
batches in index order, so batches are identical with 0 or N workers.

Every chunk is checked (size, and crc32c in caches that carry checksums) before a
byte of it is served; a damaged one stops the loader with a CacheError naming the
part and the clip.  A chunk's crc is computed once per open cache (the ``crc32c``
library: ~20% more CPU on a first epoch than without checksums on the bench VM, none
on later epochs), in the batch thread, so it overlaps the consumer's step.  With
``VERIFY_AHEAD_MIN_CPUS`` usable CPUs, a second thread (``ClipReader.verify_ahead``)
checks a freshly opened cache's chunks in the order the batches will need them, so
that a spare core takes that work; the reads still wait for each chunk's check.

Audio track: ``track`` (``schema.TrackSelector``: an index, or a language tag) is
resolved per clip when the loader is made (``ClipInfo.track_index``); a selected
clip without that track is a CacheError before anything is read (no fallback to
another track). Clips with different track layouts mix freely in a batch.  Parts that could not be opened at all are listed by
``FeatureCache.damaged`` and their clips are not in the clip table.  ``Batch.tracks``
names the track served for each clip (its position in ``ClipInfo.tracks``).

Second audio track (``second_track``, the dubs paper's secondary instance; None = no
``audio2``): ``Batch.audio2`` / ``audio2_mask`` hold a second track of each clip, padded
like ``audio``, and ``Batch.tracks2`` which one (``second_track_index``).  ``"same"``: the
primary track again (the monolingual control: two augmentations of one track).
``"round-robin"``: among the clip's other tracks, the k-th with k = (epoch + crc32(clip_id))
% their number, so a clip cycles through its dubs over epochs and clips of one epoch
differ.  A ``TrackSelector`` (index or language tag): that track (bilingual); a clip
without it, or whose primary track is it, falls back to round-robin among its other
tracks.  With every policy a clip with no other track gets its primary track ("a
different language if an alternate audio track is available"); a selector that no
selected clip has as a second track is a CacheError (a typo, not a fallback).  Resolved
per clip when the loader is made, like the primary track, so workers and resume serve
the same tracks.  The video is read once.

Modules: ``epoch_order`` (the order), ``source_batches`` (the order with same-source
groups), ``chunk_layout`` (Zarr v3 byte layout and its checks), ``mapped`` (chunk-file
maps), ``clip_reader`` (clips by (part, row)), ``buffers`` (reused batch memory),
``prefetch`` (the background thread); this module puts them together.
"""


from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .buffers import alloc_padded, cast
from .cache import FeatureCache
from .clip_reader import ClipReader
from .epoch_order import epoch_order, make_blocks  # noqa: F401  (public names of this module)
from .prefetch import in_thread
from .schema import AUDIO, VIDEO, CacheError, ClipInfo, TrackSelector, check_track_selector, describe_tracks
from .source_batches import group_size, source_batches

log = logging.getLogger(__name__)

DEFAULT_BUFFER_CLIPS = 2048  # clips per shuffle window (an order, not memory: reads are per batch)
DEFAULT_BLOCK_CLIPS = 8  # consecutive clips that stay together before the window shuffle
# The verify-ahead thread needs a core of its own: on the 2-core bench VM (both cores busy with
# the batch thread and the consumer) it cost more than checking inline (first epoch: +39% CPU
# against +22%, bench/bench_checksum.py), so it runs only in-process (no DataLoader workers,
# which are the parallelism there) with at least this many usable CPUs.
VERIFY_AHEAD_MIN_CPUS = 4
SAME, ROUND_ROBIN = "same", "round-robin"  # second-track policies; any other value is a TrackSelector
SecondTrack = TrackSelector  # SAME, ROUND_ROBIN, a track index or a language tag


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Batch:
    """A padded batch of clips (mask True = real step, padded steps are zeros)."""

    clip_ids: list[str]
    sources: list[str]
    video: torch.Tensor  # (B, T, Dv) float16 from the loader (float32 after .to())
    video_mask: torch.Tensor  # (B, T) bool
    audio: torch.Tensor  # (B, S, Da) float16 from the loader (float32 after .to())
    audio_mask: torch.Tensor  # (B, S) bool
    audio2: torch.Tensor | None = None  # (B, S2, Da) a second track of each clip (loader's second_track)
    audio2_mask: torch.Tensor | None = None  # (B, S2) bool
    tracks: list[int] | None = None  # position in ClipInfo.tracks of each clip's ``audio``
    tracks2: list[int] | None = None  # ... and of its ``audio2``

    def _map(self, features, masks) -> "Batch":
        """A Batch with ``features`` applied to the feature tensors and ``masks`` to the masks."""
        opt = lambda f, x: None if x is None else f(x)  # noqa: E731
        return Batch(self.clip_ids, self.sources, features(self.video), masks(self.video_mask),
                     features(self.audio), masks(self.audio_mask), opt(features, self.audio2),
                     opt(masks, self.audio2_mask), self.tracks, self.tracks2)

    def to(self, device, non_blocking: bool = False, dtype: torch.dtype = torch.float32) -> "Batch":
        """Move to ``device``, then cast the features to ``dtype``.

        Loader batches hold float16 as stored in the cache: half the bytes to read,
        to share between processes and to copy to a GPU, where the cast is free.
        """
        return self._map(lambda x: cast(x.to(device, non_blocking=non_blocking), dtype),
                         lambda m: m.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self._map(torch.Tensor.pin_memory, torch.Tensor.pin_memory)

    def __len__(self) -> int:
        return len(self.clip_ids)


# -- batches ----------------------------------------------------------------


def _build_batch(reader: ClipReader, locs: np.ndarray, tracks: np.ndarray, clip_ids, sources,
                 tracks2: np.ndarray | None = None) -> Batch:
    """Read the clips at ``locs`` (B, 2) = (part, row), audio ``tracks`` (B,) (and ``tracks2``
    (B,) into ``audio2``), into a Batch, in the given order.

    Clips are read straight into the batch tensors (rows of full width are contiguous), in
    storage order (sequential reads within a block), float16 as stored: the consumer
    casts after moving the batch. (Reading with 2 threads was measured no faster on
    2 cores: the copies from the page cache share one memory bandwidth.)
    """
    where = locs.tolist()
    reads = [(VIDEO, [0] * len(where), reader.video_dim), (AUDIO, tracks.tolist(), reader.audio_dim)]
    if tracks2 is not None:
        reads.append((AUDIO, tracks2.tolist(), reader.audio_dim))
    storage_order = np.lexsort((locs[:, 1], locs[:, 0])).tolist()
    tensors = []
    for m, trk, dim in reads:
        plans = [reader.plan(pi, row, m, t) for (pi, row), t in zip(where, trk)]
        out, mask = alloc_padded(np.array([p[0] for p in plans], np.int64), dim)
        buf = out.numpy()
        for i in storage_order:
            reader.read_planned(*where[i], m, trk[i], plans[i], buf[i, : plans[i][0]])
            buf[i, plans[i][0] :] = 0
        tensors += [out, mask]
    if tracks2 is None:
        tensors += [None, None]
    return Batch(list(clip_ids), list(sources), *tensors, tracks=tracks.tolist(),
                 tracks2=None if tracks2 is None else tracks2.tolist())


# -- the iterable -----------------------------------------------------------


class _BatchPlan(torch.utils.data.IterableDataset):
    """Builds the planned batches; in a DataLoader worker w builds batches k % n == w."""

    def __init__(self, cache_path: str, locs: np.ndarray, tracks: np.ndarray, clip_ids: list[str],
                 sources: list[str], batches: list[np.ndarray], first_batch: int, cache: FeatureCache | None = None,
                 tracks2: np.ndarray | None = None):
        self.cache_path = cache_path
        self.cache = cache  # the open cache, reused in this process; workers open their own
        self.locs = locs  # (N, 2) (part, row) of the selected clips
        self.tracks = tracks  # (N,) the audio track (position in ClipInfo.tracks) read for each clip
        self.tracks2 = tracks2  # (N,) the track read into audio2, or None
        self.clip_ids = clip_ids
        self.sources = sources
        self.batches = batches  # index arrays into locs, one per batch to serve
        self.first_batch = first_batch  # global index of batches[0]

    def __getstate__(self) -> dict:  # sent to spawned workers: without the open cache
        return {**self.__dict__, "cache": None}

    def _reads(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(locs, audio tracks) of every audio read of the clips ``idx``, for prefetching and
        checking ahead: a clip whose second track is another one appears twice (its video
        plan is kept once)."""
        if self.tracks2 is None:
            return self.locs[idx], self.tracks[idx]
        other = idx[self.tracks2[idx] != self.tracks[idx]]
        return (np.concatenate([self.locs[idx], self.locs[other]]),
                np.concatenate([self.tracks[idx], self.tracks2[other]]))

    def __iter__(self) -> Iterator[tuple[int, Batch]]:
        info = torch.utils.data.get_worker_info()
        wid, n = (0, 1) if info is None else (info.id, info.num_workers)
        cache = self.cache if info is None and self.cache is not None else FeatureCache.open(self.cache_path)
        reader = ClipReader(cache)
        mine = range(wid, len(self.batches), n)
        stop, verifier = threading.Event(), None
        mine_idx = [self.batches[k] for k in mine]
        if info is None and mine_idx and _usable_cpus() >= VERIFY_AHEAD_MIN_CPUS and reader.needs_verifying(
                *self._reads(np.concatenate(mine_idx))):
            # a freshly opened cache: checksums on a spare core, ahead of the reads (ClipReader.verify_ahead)
            verifier = threading.Thread(
                target=reader.verify_ahead, name="scav-verify", daemon=True,
                args=((self._reads(i) for i in mine_idx), stop))
            verifier.start()
        try:
            for j, k in enumerate(mine):
                if j == 0:
                    reader.prefetch(*self._reads(self.batches[k]))
                if j + 1 < len(mine):  # the kernel fetches the next batch while we build this one
                    reader.prefetch(*self._reads(self.batches[mine[j + 1]]))
                idx = self.batches[k]
                yield self.first_batch + k, _build_batch(
                    reader, self.locs[idx], self.tracks[idx], [self.clip_ids[i] for i in idx],
                    [self.sources[i] for i in idx], None if self.tracks2 is None else self.tracks2[idx]
                )
        finally:
            stop.set()
            if verifier is not None:
                verifier.join()
            reader.close()


def _as_cache(cache: "str | os.PathLike | FeatureCache") -> FeatureCache:
    """An open cache, or a path to open (opening parses every part's clip table: a caller
    that loads many epochs or validates often passes the open cache)."""
    return cache if isinstance(cache, FeatureCache) else FeatureCache.open(cache)


def _select(cache: FeatureCache, split: str | None, clip_ids: list[str] | None, track: TrackSelector = 0):
    """Selected clips in cache order: (infos, locs (N, 2) int64, audio tracks (N,) int64).

    ``track`` (index or language tag, ``schema.TrackSelector``) is resolved per clip; a clip
    without it is a CacheError listing how many lack it, before anything is read."""
    check_track_selector(track)
    if split is not None:
        infos = cache.require_split(split)
    else:
        infos = cache.clips()
    if clip_ids is not None:
        wanted = set(clip_ids)
        missing = [c for c in wanted if c not in cache]
        if missing:
            raise CacheError(f"{len(missing)} requested clips are not in {cache.path}, e.g. {sorted(missing)[:3]}")
        infos = [c for c in infos if c.clip_id in wanted]
        if len(infos) < len(wanted):
            where = f"split {split!r}" if split is not None else "the cache"
            raise CacheError(f"{len(wanted) - len(infos)} requested clips are not in {where}")
    tracks = [c.find_track(track) for c in infos]
    lacking = [c for c, j in zip(infos, tracks) if j is None]
    if lacking:
        c = lacking[0]
        raise CacheError(
            f"{len(lacking)} of the {len(infos)} selected clips have no audio track {track!r}, e.g. "
            f"{c.clip_id!r} ({describe_tracks(c.tracks)}); select clips that have it "
            f"(ClipInfo.find_track) or another track")
    locs = np.array([cache.locate(c.clip_id) for c in infos], dtype=np.int64).reshape(-1, 2)
    return infos, locs, np.array(tracks, dtype=np.int64)


def check_second_track(policy: SecondTrack) -> SecondTrack:
    """``policy`` normalised (``SAME``, ``ROUND_ROBIN``, or a valid TrackSelector); CacheError if
    it is none of them."""
    if isinstance(policy, str) and policy.strip().lower() in (SAME, ROUND_ROBIN):
        return policy.strip().lower()
    try:
        return check_track_selector(policy)
    except CacheError:
        raise CacheError(f"second_track must be {SAME!r}, {ROUND_ROBIN!r}, a track index >= 0 or a language "
                         f"tag, got {policy!r}") from None


def second_track_index(info: ClipInfo, primary: int, policy: SecondTrack, epoch: int) -> int:
    """Position in ``info.tracks`` of the clip's second track under ``policy`` (module docstring),
    its primary track being ``primary``."""
    policy = check_second_track(policy)
    if policy == SAME:
        return primary
    if policy != ROUND_ROBIN:
        j = info.find_track(policy)
        if j is not None and j != primary:
            return j
    others = [j for j in range(len(info.tracks)) if j != primary]
    if not others:
        return primary
    # crc32, not hash(): the same on every run and in every worker (str hashes are salted per process)
    return others[(epoch + zlib.crc32(info.clip_id.encode("utf-8"))) % len(others)]


def _second_tracks(infos: list[ClipInfo], tracks: np.ndarray, policy: SecondTrack, epoch: int) -> np.ndarray:
    """(N,) int64 second track of each selected clip; CacheError if a selector names a track that no
    clip gets (a typo would otherwise silently mean round-robin)."""
    policy = check_second_track(policy)
    out = np.array([second_track_index(c, j, policy, epoch) for c, j in zip(infos, tracks.tolist())], dtype=np.int64)
    dubbed = int((out != tracks).sum())
    if policy not in (SAME, ROUND_ROBIN):
        chosen = sum(k != j and c.find_track(policy) == k for c, j, k in zip(infos, tracks.tolist(), out.tolist()))
        if chosen == 0:
            c = infos[0]
            raise CacheError(f"none of the {len(infos)} selected clips has audio track {policy!r} besides its "
                             f"primary track, e.g. {c.clip_id!r} ({describe_tracks(c.tracks)})")
        log.info("second audio track %r: %d of %d clips have it, %d another track, %d their primary track",
                 policy, chosen, len(infos), dubbed - chosen, len(infos) - dubbed)
    elif policy == ROUND_ROBIN:
        log.info("second audio track round-robin: %d of %d clips have another track", dubbed, len(infos))
    return out


class TrainLoader:
    """One epoch of shuffled batches; ``len()`` = batches per epoch (before ``start_batch``)."""

    def __init__(self, cache_path, split, batch_size, *, seed, epoch=0, start_batch=0, clip_ids=None,
                 num_workers=0, drop_last=True, shuffle=True, buffer_clips=DEFAULT_BUFFER_CLIPS,
                 block_clips=DEFAULT_BLOCK_CLIPS, track: TrackSelector = 0, prefetch_factor=2,
                 same_source_fraction: float = 0.0, second_track: SecondTrack | None = None):
        if batch_size < 1:
            raise CacheError(f"batch_size must be >= 1, got {batch_size}")
        if start_batch < 0:
            raise CacheError(f"start_batch must be >= 0, got {start_batch}")
        _check_same_source(same_source_fraction, batch_size, shuffle)
        if second_track is not None:
            second_track = check_second_track(second_track)
        cache = _as_cache(cache_path)
        self.cache, self.cache_path = cache, str(cache.path)
        infos, self.locs, self.tracks = _select(cache, split, clip_ids, track)
        self.clip_ids, self.sources = [c.clip_id for c in infos], [c.source for c in infos]
        n = len(self.locs)
        if n == 0:
            raise CacheError(f"no clips selected from {cache_path} (split {split!r})")
        # the second track of each clip (None: no audio2), resolved before any read like the first
        self.tracks2 = None if second_track is None else _second_tracks(infos, self.tracks, second_track, epoch)
        if drop_last and batch_size > n:
            raise CacheError(
                f"batch_size {batch_size} is larger than the {n} selected clips of split {split!r} "
                f"(drop_last=True would give no batch); use batch_size <= {n}"
            )
        self.batch_size = batch_size
        self.seed, self.epoch, self.start_batch = seed, epoch, start_batch
        self.num_workers, self.drop_last, self.shuffle = num_workers, drop_last, shuffle
        self.buffer_clips, self.block_clips, self.track = buffer_clips, block_clips, track  # the selector
        self.prefetch_factor = prefetch_factor
        self.same_source_fraction, self.second_track = same_source_fraction, second_track
        self.n_batches = n // batch_size if drop_last else -(-n // batch_size)

    def __len__(self) -> int:
        return self.n_batches

    def order(self) -> np.ndarray:
        """Indices into the selected clips, in the order of this epoch."""
        if not self.shuffle:
            return np.arange(len(self.locs))
        if self.same_source_fraction > 0:  # full batches, then the short one: batch_indices cuts it the same
            return np.concatenate(source_batches(self.sources, self.batch_size, self.same_source_fraction,
                                                 self.seed, self.epoch, drop_last=False))
        return epoch_order(self.locs, self.batch_size, self.seed, self.epoch, self.buffer_clips, self.block_clips)

    def batch_indices(self) -> list[np.ndarray]:
        order = self.order()
        b = self.batch_size
        return [order[k * b : (k + 1) * b] for k in range(self.n_batches)]

    def __iter__(self) -> Iterator[Batch]:
        batches = self.batch_indices()[self.start_batch :]
        plan = _BatchPlan(self.cache_path, self.locs, self.tracks, self.clip_ids, self.sources,
                          batches, self.start_batch, self.cache, self.tracks2)
        yield from _run_plan(plan, self.num_workers, self.prefetch_factor)


def _check_same_source(fraction: float, batch_size: int, shuffle: bool) -> None:
    """CacheError unless ``fraction`` is 0 (off) or a group of ``group_size`` fits a shuffled batch."""
    if not 0.0 <= fraction <= 1.0:
        raise CacheError(f"same_source_fraction must be in [0, 1] (0 = off), got {fraction}")
    if fraction == 0:
        return
    if not shuffle:
        raise CacheError("same_source_fraction > 0 draws batches at random: it needs shuffle=True")
    try:
        group_size(batch_size, fraction)
    except ValueError as e:
        raise CacheError(str(e)) from None


def _run_plan(plan: _BatchPlan, num_workers: int, prefetch_factor: int) -> Iterator[Batch]:
    if len(plan.batches) == 0:
        return
    if num_workers <= 0:
        yield from in_thread(iter(plan), prefetch_factor)
        return
    workers = min(num_workers, len(plan.batches))
    dl = torch.utils.data.DataLoader(
        plan, batch_size=None, num_workers=workers, persistent_workers=False,
        multiprocessing_context="spawn", prefetch_factor=prefetch_factor,
    )
    expected, pending = plan.first_batch, {}
    for k, batch in dl:
        pending[k] = batch
        while expected in pending:  # DataLoader already round-robins; this guards the order
            yield pending.pop(expected)
            expected += 1
    if pending:
        raise RuntimeError(f"loader lost batches before {min(pending)}")


def make_train_loader(cache_path, split, batch_size, *, seed: int, epoch: int = 0, start_batch: int = 0,
                      clip_ids: list[str] | None = None, num_workers: int = 0, drop_last: bool = True,
                      shuffle: bool = True, buffer_clips: int = DEFAULT_BUFFER_CLIPS, track: TrackSelector = 0,
                      block_clips: int = DEFAULT_BLOCK_CLIPS, same_source_fraction: float = 0.0,
                      second_track: SecondTrack | None = None) -> TrainLoader:
    """Shuffled batches of one epoch (order: module docstring). Call once per epoch.

    ``cache_path``: the cache's path, or the open :class:`FeatureCache` (saves re-reading
    its clip table each epoch).
    ``clip_ids`` restricts to a subset of the split; ``start_batch`` skips the first
    batches of the epoch without reading them. ``same_source_fraction`` > 0: batches with a
    same-source group (hard negatives); ``second_track``: ``Batch.audio2`` policy (module
    docstring). Raises CacheError for an empty split, a batch larger than the split with
    ``drop_last``, or invalid options.
    """
    return TrainLoader(cache_path, split, batch_size, seed=seed, epoch=epoch, start_batch=start_batch,
                       clip_ids=clip_ids, num_workers=num_workers, drop_last=drop_last, shuffle=shuffle,
                       buffer_clips=buffer_clips, block_clips=block_clips, track=track,
                       same_source_fraction=same_source_fraction, second_track=second_track)


def iter_eval_batches(cache_path, split: str | None = None, clip_ids: list[str] | None = None,
                      batch_size: int = 64, track: TrackSelector = 0) -> Iterator[Batch]:
    """Batches in cache order (deterministic); the last batch may be short.
    ``cache_path``: a path or an open :class:`FeatureCache`."""
    if batch_size < 1:
        raise CacheError(f"batch_size must be >= 1, got {batch_size}")
    cache = _as_cache(cache_path)
    infos, locs, tracks = _select(cache, split, clip_ids, track)
    batches = [np.arange(a, min(a + batch_size, len(locs))) for a in range(0, len(locs), batch_size)]
    plan = _BatchPlan(str(cache.path), locs, tracks, [c.clip_id for c in infos], [c.source for c in infos],
                      batches, 0, cache)
    yield from _run_plan(plan, 0, 2)
