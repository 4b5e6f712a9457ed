"""Reused batch memory: page faults on fresh memory cost more than the reads themselves.

A buffer returns to the pool only when no tensor uses it, so batches a caller keeps
are never overwritten.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import torch


def alloc_padded(lengths: np.ndarray, dim: int):
    """Uninitialised (B, L, dim) float16 batch tensor for sequences of ``lengths`` and its (B, L) mask."""
    width = max(1, int(lengths.max(initial=0)))
    out = empty_f16((len(lengths), width, dim))
    mask = np.arange(width)[None, :] < lengths[:, None]
    return out, torch.from_numpy(mask)


class BufferPool:
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


POOL = BufferPool()
NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)``; on the CPU into a pooled buffer (a batch cast is ~2x its float16
    size of fresh memory otherwise: page faults that cost more than reading the batch)."""
    if x.dtype == dtype or x.device.type != "cpu" or dtype not in NUMPY_DTYPES:
        return x.to(dtype)
    out = torch.from_numpy(POOL.view(tuple(x.shape), NUMPY_DTYPES[dtype]))
    return out.copy_(x)


def empty_f16(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float16 tensor: in the main process a view of a reused buffer
    (:class:`BufferPool`); in a DataLoader worker, allocated in shared memory so handing
    it to the main process costs no copy (a batch is ~75 MB)."""
    nbytes = 2 * int(np.prod(shape))
    if torch.utils.data.get_worker_info() is None:
        return torch.from_numpy(POOL.view(shape, np.float16))
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch.float16).set_(storage, 0, shape)
