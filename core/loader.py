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

Reading: clips are read by offsets straight from the chunk files of the Zarr
arrays (``_FlatArray``; uncompressed layouts, plain or sharded; compressed ones
fall back to Zarr): one memcpy per clip and modality (~0.4 and ~0.75 MB at the
paper's shapes) from a read-only map of the chunk file straight into the batch's
padded float16 tensor.  This avoids Zarr's per-call overhead, which capped the
one-clip-at-a-time path at a few hundred clips/s.  The maps belong to the open
cache (``_files_for``) and outlive the epoch: from the second epoch on, warm
reads are plain memcpys (on the bench VM ~3x what ``pread`` of the same
page-cache bytes gave, which the loader used before).  Batches stay float16 as
stored; ``Batch.to(device)`` casts to float32 after the move (free on a GPU;
half the bytes to read and copy).

Memory that is written once per batch is reused (``_BufferPool``): on the bench
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
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import queue
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import FeatureCache
from .schema import AUDIO, VIDEO, CacheError

log = logging.getLogger(__name__)

DEFAULT_BUFFER_CLIPS = 2048  # clips per shuffle window (an order, not memory: reads are per batch)
DEFAULT_BLOCK_CLIPS = 8  # consecutive clips that stay together before the window shuffle


@dataclass
class Batch:
    """A padded batch of clips (mask True = real step, padded steps are zeros)."""

    clip_ids: list[str]
    sources: list[str]
    video: torch.Tensor  # (B, T, Dv) float16 from the loader (float32 after .to())
    video_mask: torch.Tensor  # (B, T) bool
    audio: torch.Tensor  # (B, S, Da) float16 from the loader (float32 after .to())
    audio_mask: torch.Tensor  # (B, S) bool

    def to(self, device, non_blocking: bool = False, dtype: torch.dtype = torch.float32) -> "Batch":
        """Move to ``device``, then cast the features to ``dtype``.

        Loader batches hold float16 as stored in the cache: half the bytes to read,
        to share between processes and to copy to a GPU, where the cast is free.
        """
        return Batch(
            self.clip_ids,
            self.sources,
            _cast(self.video.to(device, non_blocking=non_blocking), dtype),
            self.video_mask.to(device, non_blocking=non_blocking),
            _cast(self.audio.to(device, non_blocking=non_blocking), dtype),
            self.audio_mask.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> "Batch":
        return Batch(
            self.clip_ids,
            self.sources,
            self.video.pin_memory(),
            self.video_mask.pin_memory(),
            self.audio.pin_memory(),
            self.audio_mask.pin_memory(),
        )

    def __len__(self) -> int:
        return len(self.clip_ids)


# -- the order of an epoch (pure) ---------------------------------------------


def make_blocks(locs: np.ndarray, block_clips: int) -> list[np.ndarray]:
    """Split ``locs`` (N, 2) = (part, row) in cache order into runs within one part.

    Each run has at most ``block_clips`` clips; returns a list of index arrays into locs.
    """
    if len(locs) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, locs[1:, 0] != locs[:-1, 0]])
    ends = np.r_[starts[1:], len(locs)]
    blocks = []
    for a, b in zip(starts, ends):
        for s in range(a, b, block_clips):
            blocks.append(np.arange(s, min(s + block_clips, b)))
    return blocks


def epoch_order(
    locs: np.ndarray, batch_size: int, seed: int, epoch: int, buffer_clips: int, block_clips: int
) -> np.ndarray:
    """Permutation of ``range(len(locs))`` giving the clip order of one epoch.

    ``locs`` (N, 2) = (part, row) in cache order; see the module docstring.
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    blocks = make_blocks(locs, block_clips)
    if not blocks:
        return np.zeros(0, dtype=np.int64)
    stream = np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])
    window = max(batch_size, (buffer_clips // batch_size) * batch_size)
    out = np.empty_like(stream)
    for a in range(0, len(stream), window):
        w = stream[a : a + window]
        out[a : a + len(w)] = w[rng.permutation(len(w))]
    return out


# -- reading clips ----------------------------------------------------------


_MISSING = np.uint64(2**64 - 1)  # shard index entry of a chunk that was never written


_MADV_WILLNEED = getattr(mmap, "MADV_WILLNEED", None)  # absent on some platforms: no prefetch


def _map_limit() -> int:
    """Chunk files kept mapped per reader: a 20k-clip cache has ~6,300 of them and mapping
    again costs the page faults again. A quarter of the kernel's map count limit, at most 16,384."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
    except (OSError, ValueError):
        limit = 65530  # Linux's default
    return max(64, min(16384, limit // 4))


class _MappedFile:
    """One chunk file mapped read-only: ``data`` (uint8 array over the map), ``madvise``."""

    __slots__ = ("data", "_map")

    def __init__(self, fd: int):
        size = os.fstat(fd).st_size
        self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
        self.data = np.frombuffer(self._map, dtype=np.uint8) if size else np.empty(0, np.uint8)

    def will_need(self, offset: int, length: int) -> None:
        if self._map is None or _MADV_WILLNEED is None:
            return
        start = offset - offset % mmap.PAGESIZE  # madvise wants a page-aligned start
        self._map.madvise(_MADV_WILLNEED, start, min(len(self._map), offset + length) - start)


class _MappedFiles:
    """Read-only maps of chunk files by path, the ``limit`` most recently used kept.

    Why maps and not ``pread``: once a page is mapped, reading it is a plain memcpy in
    user space; on the bench VM that ran at 4.2-5.9 GB/s against 1.5-1.9 GB/s for
    ``pread`` of the same page-cache bytes into a batch-sized buffer (same runs; see
    bench_loader.py). Maps live as long as the open cache, so later epochs fault nothing in.
    An evicted map is only dereferenced: arrays still viewing it keep it alive. The cache's
    chunk files are written once and never modified (a file truncated under a live map
    would raise SIGBUS on access, as for any mmap reader).
    """

    def __init__(self, limit: int | None = None):
        self.limit = limit or _map_limit()
        self._maps: OrderedDict[str, _MappedFile | None] = OrderedDict()
        self._lock = threading.Lock()  # shared by the readers of one open cache (train + validation)

    def get(self, path: str) -> _MappedFile | None:
        """The map of ``path``, or None if the file does not exist (an unwritten chunk)."""
        with self._lock:
            if path in self._maps:
                self._maps.move_to_end(path)
                return self._maps[path]
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            m = None
        else:
            try:
                m = _MappedFile(fd)
            finally:
                os.close(fd)  # the map holds its own reference to the file
        with self._lock:
            self._maps[path] = m
            if len(self._maps) > self.limit:
                self._maps.popitem(last=False)
        return m


class _FlatArray:
    """Byte-level access to one uncompressed 2-D float16 Zarr v3 array (no Zarr calls).

    Understands plain chunks and ``sharding_indexed`` shards whose inner chunks are
    raw little-endian bytes, each chunk spanning the full width; anything else
    (compression) returns None from ``open`` and the caller falls back to Zarr.
    """

    def __init__(self, root: Path, shape, chunk_rows: int, shard_rows: int | None, index_at_end: bool,
                 index_crc: bool, files: "_MappedFiles"):
        self.root = root
        self.files = files
        self.rows, self.dim = int(shape[0]), int(shape[1])
        self.row_bytes = 2 * self.dim
        self.chunk_rows = chunk_rows
        self.shard_rows = shard_rows
        self.index_at_end, self.index_crc = index_at_end, index_crc
        self._index: dict[int, np.ndarray | None] = {}
        self._paths: dict[int, str] = {}

    @classmethod
    def open(cls, root: Path, files: "_MappedFiles | None" = None) -> "_FlatArray | None":
        files = files if files is not None else _MappedFiles()
        try:
            meta = json.loads((root / "zarr.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        shape = meta.get("shape", [])
        raw = [{"name": "bytes", "configuration": {"endian": "little"}}]
        if (len(shape) != 2 or meta.get("data_type") != "float16" or meta.get("fill_value") not in (0, 0.0)
                or meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/") != "/"
                or meta.get("chunk_key_encoding", {}).get("name") != "default"):
            return None
        outer = meta["chunk_grid"]["configuration"]["chunk_shape"]
        codecs = meta.get("codecs", [])
        if codecs == raw:
            if outer[1] != shape[1]:
                return None
            return cls(root, shape, int(outer[0]), None, True, False, files)
        if len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
            cfg = codecs[0]["configuration"]
            inner = cfg["chunk_shape"]
            idx_codecs = [c.get("name") for c in cfg.get("index_codecs", [])]
            if (cfg.get("codecs") != raw or inner[1] != shape[1] or outer[1] != shape[1]
                    or idx_codecs not in (["bytes"], ["bytes", "crc32c"])
                    or cfg.get("index_codecs", [{}])[0].get("configuration", {}).get("endian", "little") != "little"):
                return None
            return cls(root, shape, int(inner[0]), int(outer[0]), cfg.get("index_location", "end") == "end",
                       idx_codecs == ["bytes", "crc32c"], files)
        return None

    def _file(self, key: int) -> "_MappedFile | None":
        path = self._paths.get(key)
        if path is None:  # a str, built once: pathlib per read cost as much as the read
            path = self._paths[key] = str(self.root / "c" / str(key) / "0")
        return self.files.get(path)

    def _shard_index(self, s: int) -> np.ndarray | None:
        if s not in self._index:
            f = self._file(s)
            if f is None:
                self._index[s] = None
            else:
                n = self.shard_rows // self.chunk_rows
                nbytes = 16 * n + (4 if self.index_crc else 0)
                at = len(f.data) - nbytes if self.index_at_end else 0
                if at < 0:
                    raise CacheError(f"shard {s} of {self.root} is shorter than its index (truncated?)")
                self._index[s] = f.data[at : at + 16 * n].copy().view("<u8").reshape(n, 2)
        return self._index[s]

    def pieces(self, a: int, b: int):
        """(mapped file or None, byte offset, first row, end row) covering rows [a, b); None = zeros."""
        r = a
        while r < b:
            c, within = divmod(r, self.chunk_rows)
            end = min(b, (c + 1) * self.chunk_rows)
            if self.shard_rows is None:
                yield self._file(c), within * self.row_bytes, r, end
            else:
                s, in_shard = divmod(r, self.shard_rows)
                idx = self._shard_index(s)
                i = in_shard // self.chunk_rows
                if idx is None or idx[i, 0] == _MISSING:
                    yield None, 0, r, end
                else:
                    yield self._file(s), int(idx[i, 0]) + within * self.row_bytes, r, end
            r = end

    def copies(self, a: int, b: int) -> list[tuple["_MappedFile | None", int, int, int]]:
        """Rows [a, b) as (mapped file or None = zeros, byte offset, dst start, dst end) byte copies."""
        return [(f, off, (r0 - a) * self.row_bytes, (r1 - a) * self.row_bytes) for f, off, r0, r1 in self.pieces(a, b)]


class _CacheFiles:
    """What reading one open cache takes, shared by all its readers in this process (every
    epoch, validation, threads): the chunk-file maps and the parsed arrays (layout, shard
    indexes). It goes when the cache object goes (``_files_for``)."""

    def __init__(self, cache: FeatureCache):
        self.maps = _MappedFiles()
        self._parts = cache.parts
        self._arrays: dict[tuple[int, str, int], _FlatArray | None] = {}

    def array(self, pi: int, modality: str, track: int) -> "_FlatArray | None":
        """Part ``pi``'s array of ``modality`` (audio ``track``) for byte reads, None if it
        needs Zarr (compressed)."""
        key = (pi, modality, track)
        flat = self._arrays.get(key, False)
        if flat is False:  # two threads may both open it: the same result, one is kept
            part = self._parts[pi]
            flat = self._arrays[key] = _FlatArray.open(part.path / part.array_name(modality, track) / "data",
                                                       self.maps)
        return flat


_files_of_cache: "weakref.WeakKeyDictionary[FeatureCache, _CacheFiles]" = weakref.WeakKeyDictionary()
_files_lock = threading.Lock()


def _files_for(cache: FeatureCache) -> _CacheFiles:
    with _files_lock:
        files = _files_of_cache.get(cache)
        if files is None:
            files = _files_of_cache[cache] = _CacheFiles(cache)
        return files


def _copy(out: np.ndarray, copies, where) -> None:
    """Carry out ``_FlatArray.copies`` into ``out`` (C-contiguous)."""
    dst = out.reshape(-1).view(np.uint8)
    for f, off, lo, hi in copies:
        if f is None:
            dst[lo:hi] = 0
            continue
        src = f.data[off : off + hi - lo]
        if len(src) != hi - lo:
            raise CacheError(f"short read in {where} (chunk file truncated?)")
        np.copyto(dst[lo:hi], src)  # a memcpy from the map; releases the GIL


class _ClipReader:
    """Reads clips of one cache by (part, row). Opened inside each worker.

    Uncompressed arrays are read from maps of their files; others through Zarr.
    """

    def __init__(self, cache_path: str, track: int, fast: bool = True, cache: FeatureCache | None = None):
        self.cache = cache if cache is not None else FeatureCache.open(cache_path)
        self.track = track
        self.fast = fast
        self.video_dim = self._dim(VIDEO)
        self.audio_dim = self._dim(AUDIO)
        self._files = _files_for(self.cache) if fast else None
        self._planned: dict[tuple[int, int, str], tuple[int, list | None]] = {}  # from prefetch

    def _dim(self, modality: str) -> int:
        for p in self.cache.parts:
            d = p.dim(modality, self.track if modality == AUDIO else 0)
            if d:
                return d
        return 0

    def _array(self, pi: int, modality: str) -> "_FlatArray | None":
        if self._files is None:
            return None
        return self._files.array(pi, modality, self.track)

    def span(self, pi: int, row: int, modality: str) -> tuple[int, int]:
        off = self.cache.parts[pi].offsets(modality, self.track)
        return int(off[row]), int(off[row + 1])

    def plan(self, pi: int, row: int, modality: str) -> tuple[int, list | None]:
        """(rows, byte copies or None = read through Zarr) of one clip and modality; the
        plan ``prefetch`` made for it if any (spans and pieces are worked out once)."""
        planned = self._planned.pop((pi, row, modality), None)
        if planned is not None:
            return planned
        a, b = self.span(pi, row, modality)
        flat = self._array(pi, modality) if a < b else None
        return b - a, (flat.copies(a, b) if flat is not None else None if a < b else [])

    def read_planned(self, pi: int, row: int, modality: str, plan, out: np.ndarray) -> None:
        """The clip's rows into ``out`` (n, dim) float16, following ``plan(...)[1]``."""
        if plan is not None:
            _copy(out, plan, self.cache.path)
        else:
            a, b = self.span(pi, row, modality)
            out[:] = self.cache.parts[pi].data(modality, self.track)[a:b]

    def prefetch(self, locs: np.ndarray) -> None:
        """Ask the kernel to start reading the clips at ``locs`` (n, 2) (cold cache); their
        plans are kept for ``plan``."""
        for pi, row in locs.tolist():
            for m in (VIDEO, AUDIO):
                planned = self.plan(pi, row, m)
                self._planned[(pi, row, m)] = planned
                for f, off, lo, hi in planned[1] or ():
                    if f is not None:
                        f.will_need(off, hi - lo)

    def close(self) -> None:
        self._planned.clear()  # maps and arrays belong to the open cache (``_files_for``)


def collate(
    clip_ids: list[str], sources: list[str], videos: Sequence[np.ndarray], audios: Sequence[np.ndarray],
    video_dim: int, audio_dim: int,
) -> Batch:
    """Zero-pad sequences into a float32 Batch. ``videos[i]`` (T_i, Dv), ``audios[i]`` (S_i, Da).

    The reference path (tests, small eval sets); training batches use ``_build_batch``.
    """
    b = len(clip_ids)
    t = max([len(v) for v in videos] + [1])
    s = max([len(a) for a in audios] + [1])
    video = torch.zeros((b, t, video_dim), dtype=torch.float32)
    audio = torch.zeros((b, s, audio_dim), dtype=torch.float32)
    video_mask = torch.zeros((b, t), dtype=torch.bool)
    audio_mask = torch.zeros((b, s), dtype=torch.bool)
    for i, (v, a) in enumerate(zip(videos, audios)):
        if len(v):
            video[i, : len(v)] = torch.from_numpy(np.ascontiguousarray(v))
            video_mask[i, : len(v)] = True
        if len(a):
            audio[i, : len(a)] = torch.from_numpy(np.ascontiguousarray(a))
            audio_mask[i, : len(a)] = True
    return Batch(list(clip_ids), list(sources), video, video_mask, audio, audio_mask)


def _alloc_padded(lengths: np.ndarray, dim: int):
    """Uninitialised (B, L, dim) float16 batch tensor for sequences of ``lengths`` and its (B, L) mask."""
    width = max(1, int(lengths.max(initial=0)))
    out = _empty_f16((len(lengths), width, dim))
    mask = np.arange(width)[None, :] < lengths[:, None]
    return out, torch.from_numpy(mask)


class _BufferPool:
    """Batch buffers reused once nothing refers to them any more.

    Writing into freshly allocated memory costs a page fault per 4 KB page (and, when the
    page cache fills RAM, reclaiming a page for each): on the 2-core bench machine that
    capped the loader at 1-2 GB/s, against ~20 GB/s into memory already mapped. A batch
    tensor is ``torch.from_numpy`` of a numpy view of a buffer, and the tensor (and every
    tensor derived from its storage) keeps that view alive: a weak reference to the view
    says whether the buffer is still in use. A batch the consumer keeps is therefore
    never overwritten; it only stops that buffer's reuse.
    """

    def __init__(self, keep: int = 8):
        self.keep = keep  # free buffers kept for reuse: a batch holds two (video, audio), four once cast
        self._slots: list[tuple[np.ndarray, weakref.ref | None]] = []  # least recently used first
        self._lock = threading.Lock()  # batches are built in a thread, cast in another

    @staticmethod
    def _free(slot) -> bool:
        return slot[1] is None or slot[1]() is None

    def view(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised array of ``shape`` in a buffer that nothing else uses."""
        with self._lock:
            return self._view(shape, dtype)

    def _view(self, shape, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        pick = next((i for i, slot in enumerate(self._slots)
                     if self._free(slot) and nbytes <= slot[0].nbytes <= 2 * nbytes), None)
        if pick is None:
            buf = np.empty(nbytes + nbytes // 8, dtype=np.uint8)  # headroom: batch widths vary
        else:
            buf = self._slots.pop(pick)[0]
        out = buf[:nbytes].view(dtype).reshape(shape)
        free = [i for i, slot in enumerate(self._slots) if self._free(slot)]
        drop = set(free[: max(0, len(free) - self.keep + 1)])
        self._slots = [slot for i, slot in enumerate(self._slots) if i not in drop]
        self._slots.append((buf, weakref.ref(out)))
        return out


_pool = _BufferPool()
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)``; on the CPU into a pooled buffer (a batch cast is ~2x its float16
    size of fresh memory otherwise: page faults that cost more than reading the batch)."""
    if x.dtype == dtype or x.device.type != "cpu" or dtype not in _NUMPY_DTYPES:
        return x.to(dtype)
    out = torch.from_numpy(_pool.view(tuple(x.shape), _NUMPY_DTYPES[dtype]))
    return out.copy_(x)


def _empty_f16(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float16 tensor: in the main process a view of a reused buffer
    (:class:`_BufferPool`); in a DataLoader worker, allocated in shared memory so handing
    it to the main process costs no copy (a batch is ~75 MB)."""
    nbytes = 2 * int(np.prod(shape))
    if torch.utils.data.get_worker_info() is None:
        return torch.from_numpy(_pool.view(shape, np.float16))
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch.float16).set_(storage, 0, shape)


def _build_batch(reader: _ClipReader, locs: np.ndarray, clip_ids, sources) -> Batch:
    """Read the clips at ``locs`` (B, 2) = (part, row) into a Batch, in the given order.

    Clips are read straight into the batch tensors (rows of full width are contiguous), in
    storage order (sequential reads within a block), float16 as stored: the consumer
    casts after moving the batch. (Reading with 2 threads was measured no faster on
    2 cores: the copies from the page cache share one memory bandwidth.)
    """
    where = locs.tolist()
    plans = {m: [reader.plan(pi, row, m) for pi, row in where] for m in (VIDEO, AUDIO)}
    video, video_mask = _alloc_padded(np.array([n for n, _ in plans[VIDEO]], np.int64), reader.video_dim)
    audio, audio_mask = _alloc_padded(np.array([n for n, _ in plans[AUDIO]], np.int64), reader.audio_dim)
    for m, out in ((VIDEO, video.numpy()), (AUDIO, audio.numpy())):
        for i in np.lexsort((locs[:, 1], locs[:, 0])).tolist():
            n, plan = plans[m][i]
            reader.read_planned(*where[i], m, plan, out[i, :n])
            out[i, n:] = 0
    return Batch(list(clip_ids), list(sources), video, video_mask, audio, audio_mask)


# -- the iterable -----------------------------------------------------------


class _BatchPlan(torch.utils.data.IterableDataset):
    """Builds the planned batches; in a DataLoader worker w builds batches k % n == w."""

    def __init__(self, cache_path: str, track: int, locs: np.ndarray, clip_ids: list[str],
                 sources: list[str], batches: list[np.ndarray], first_batch: int, cache: FeatureCache | None = None):
        self.cache_path = cache_path
        self.cache = cache  # the open cache, reused in this process; workers open their own
        self.track = track
        self.locs = locs
        self.clip_ids = clip_ids
        self.sources = sources
        self.batches = batches  # index arrays into locs, one per batch to serve
        self.first_batch = first_batch  # global index of batches[0]
        self.fast = True  # False: read through Zarr only (reference path for tests)

    def __getstate__(self) -> dict:  # sent to spawned workers: without the open cache
        return {**self.__dict__, "cache": None}

    def __iter__(self) -> Iterator[tuple[int, Batch]]:
        info = torch.utils.data.get_worker_info()
        wid, n = (0, 1) if info is None else (info.id, info.num_workers)
        reader = _ClipReader(self.cache_path, self.track, fast=self.fast, cache=self.cache if info is None else None)
        mine = range(wid, len(self.batches), n)
        try:
            for j, k in enumerate(mine):
                if j == 0:
                    reader.prefetch(self.locs[self.batches[k]])
                if j + 1 < len(mine):  # the kernel fetches the next batch while we build this one
                    reader.prefetch(self.locs[self.batches[mine[j + 1]]])
                idx = self.batches[k]
                yield self.first_batch + k, _build_batch(
                    reader, self.locs[idx], [self.clip_ids[i] for i in idx], [self.sources[i] for i in idx]
                )
        finally:
            reader.close()


def _as_cache(cache: "str | os.PathLike | FeatureCache") -> FeatureCache:
    """An open cache, or a path to open (opening parses every part's clip table: a caller
    that loads many epochs or validates often passes the open cache)."""
    return cache if isinstance(cache, FeatureCache) else FeatureCache.open(cache)


def _select(cache: FeatureCache, split: str | None, clip_ids: list[str] | None):
    """Selected clips in cache order: (locs (N, 2) int64, ids, sources)."""
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
    locs = np.array([cache._locate(c.clip_id) for c in infos], dtype=np.int64).reshape(-1, 2)
    return locs, [c.clip_id for c in infos], [c.source for c in infos]


class TrainLoader:
    """One epoch of shuffled batches; ``len()`` = batches per epoch (before ``start_batch``)."""

    def __init__(self, cache_path, split, batch_size, *, seed, epoch=0, start_batch=0, clip_ids=None,
                 num_workers=0, drop_last=True, shuffle=True, buffer_clips=DEFAULT_BUFFER_CLIPS,
                 block_clips=DEFAULT_BLOCK_CLIPS, track=0, prefetch_factor=2):
        if batch_size < 1:
            raise CacheError(f"batch_size must be >= 1, got {batch_size}")
        if start_batch < 0:
            raise CacheError(f"start_batch must be >= 0, got {start_batch}")
        cache = _as_cache(cache_path)
        self.cache, self.cache_path = cache, str(cache.path)
        self.locs, self.clip_ids, self.sources = _select(cache, split, clip_ids)
        n = len(self.locs)
        if n == 0:
            raise CacheError(f"no clips selected from {cache_path} (split {split!r})")
        if drop_last and batch_size > n:
            raise CacheError(
                f"batch_size {batch_size} is larger than the {n} selected clips of split {split!r} "
                f"(drop_last=True would give no batch); use batch_size <= {n}"
            )
        self.batch_size = batch_size
        self.seed, self.epoch, self.start_batch = seed, epoch, start_batch
        self.num_workers, self.drop_last, self.shuffle = num_workers, drop_last, shuffle
        self.buffer_clips, self.block_clips, self.track = buffer_clips, block_clips, track
        self.prefetch_factor = prefetch_factor
        self.n_batches = n // batch_size if drop_last else -(-n // batch_size)

    def __len__(self) -> int:
        return self.n_batches

    def order(self) -> np.ndarray:
        """Indices into the selected clips, in the order of this epoch."""
        if not self.shuffle:
            return np.arange(len(self.locs))
        return epoch_order(self.locs, self.batch_size, self.seed, self.epoch, self.buffer_clips, self.block_clips)

    def batch_indices(self) -> list[np.ndarray]:
        order = self.order()
        b = self.batch_size
        return [order[k * b : (k + 1) * b] for k in range(self.n_batches)]

    def __iter__(self) -> Iterator[Batch]:
        batches = self.batch_indices()[self.start_batch :]
        plan = _BatchPlan(self.cache_path, self.track, self.locs, self.clip_ids, self.sources,
                          batches, self.start_batch, self.cache)
        yield from _run_plan(plan, self.num_workers, self.prefetch_factor)


def _run_plan(plan: _BatchPlan, num_workers: int, prefetch_factor: int) -> Iterator[Batch]:
    if len(plan.batches) == 0:
        return
    if num_workers <= 0:
        yield from _in_thread(iter(plan), prefetch_factor)
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


def _in_thread(batches: Iterator[tuple[int, Batch]], ahead: int) -> Iterator[Batch]:
    """Build batches in a background thread, up to ``ahead`` ready: reading (memcpy from maps)
    and the consumer's step both release the GIL, so they overlap. Errors are re-raised
    here; leaving the loop early stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for _, batch in batches:
                while not stop.is_set():
                    try:
                        ready.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                del batch  # the queue holds the only reference: its buffers can be reused
                if stop.is_set():
                    return
            item = done
        except BaseException as e:  # handed to the consumer
            item = e
        finally:
            batches.close()
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=produce, name="scav-loader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            del item
    finally:
        stop.set()
        thread.join()


def make_train_loader(cache_path, split, batch_size, *, seed: int, epoch: int = 0, start_batch: int = 0,
                      clip_ids: list[str] | None = None, num_workers: int = 0, drop_last: bool = True,
                      shuffle: bool = True, buffer_clips: int = DEFAULT_BUFFER_CLIPS, track: int = 0,
                      block_clips: int = DEFAULT_BLOCK_CLIPS) -> TrainLoader:
    """Shuffled batches of one epoch (order: module docstring). Call once per epoch.

    ``cache_path``: the cache's path, or the open :class:`FeatureCache` (saves re-reading
    its clip table each epoch).
    ``clip_ids`` restricts to a subset of the split; ``start_batch`` skips the first
    batches of the epoch without reading them. Raises CacheError for an empty split
    or a batch larger than the split with ``drop_last``.
    """
    return TrainLoader(cache_path, split, batch_size, seed=seed, epoch=epoch, start_batch=start_batch,
                       clip_ids=clip_ids, num_workers=num_workers, drop_last=drop_last, shuffle=shuffle,
                       buffer_clips=buffer_clips, block_clips=block_clips, track=track)


def iter_eval_batches(cache_path, split: str | None = None, clip_ids: list[str] | None = None,
                      batch_size: int = 64, track: int = 0) -> Iterator[Batch]:
    """Batches in cache order (deterministic); the last batch may be short.
    ``cache_path``: a path or an open :class:`FeatureCache`."""
    if batch_size < 1:
        raise CacheError(f"batch_size must be >= 1, got {batch_size}")
    cache = _as_cache(cache_path)
    locs, ids, sources = _select(cache, split, clip_ids)
    batches = [np.arange(a, min(a + batch_size, len(locs))) for a in range(0, len(locs), batch_size)]
    plan = _BatchPlan(str(cache.path), track, locs, ids, sources, batches, 0, cache)
    yield from _run_plan(plan, 0, 2)
