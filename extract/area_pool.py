"""Area resize of one uint8 RGB frame, bit-identical to ``F.interpolate(mode="area")`` on ``uint8 / 255``.

torch's CPU area (adaptive average) pooling in float32 sums each output cell
sequentially, over its window's rows and then its columns, and divides the sum
by the window's height and then by its width (two float32 divisions); windows
are ``[floor(o * n / S), ceil((o + 1) * n / S))``, so they overlap or differ in
size where ``n`` is not a multiple of ``S``. The numba kernel here keeps
exactly those float32 operations, per cell in the same order, but reads the
uint8 frame once (a 256-entry table gives ``v / 255``) with no float copy of
the frame, and without torch (a decode worker then needs only numba, ~94 MB,
instead of torch, ~500 MB). tests/test_frame_prep.py checks the bits against
torch on uneven, overlapping and strided frames.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# uint8 -> float32 / 255, the same float32 division torch does (``.float() / 255.0``); tested equal
_LUT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def _kernel(rgb, lut, r0, r1, c0, c1, kw_max, out):  # pragma: no cover (compiled by numba)
    # one output row of cells at a time, all its 3 * S sums in flight: the loop over the window's
    # column offset j sits outside the cells, so consecutive adds go to independent accumulators
    # (a single cell's sum is a serial chain), while each cell still adds its rows, then columns, in order
    S = out.shape[0]
    acc = np.zeros((S, 3), np.float32)
    for oy in range(S):
        acc[:] = 0
        for ih in range(r0[oy], r1[oy]):
            for j in range(kw_max):
                for ox in range(S):
                    iw = c0[ox] + j
                    if iw < c1[ox]:
                        for c in range(3):
                            acc[ox, c] += lut[rgb[ih, iw, c]]
        kh = np.float32(r1[oy] - r0[oy])
        for ox in range(S):
            kw = np.float32(c1[ox] - c0[ox])
            for c in range(3):
                out[oy, ox, c] = acc[ox, c] / kh / kw
    return out


def jit(fn, njit=None):
    """``fn`` compiled with numba, nogil (decode threads run it in parallel); cached on disk where numba
    can cache (else compiled once per process: a cache problem never fails extraction)."""
    if njit is None:
        from numba import njit
    try:
        return njit(nogil=True, cache=True)(fn)
    except Exception:  # noqa: BLE001  (numba raises RuntimeError and others, e.g. no writable cache folder)
        return njit(nogil=True, cache=False)(fn)


@lru_cache(maxsize=1)
def _compiled():
    return jit(_kernel)


def _bounds(n: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    o = np.arange(side, dtype=np.int64)
    return (o * n) // side, -((-(o + 1) * n) // side)  # torch's start_index, end_index


@lru_cache(maxsize=16)
def _windows(height: int, width: int, side: int):
    r0, r1 = _bounds(height, side)
    c0, c1 = _bounds(width, side)
    return r0, r1, c0, c1, int((c1 - c0).max())


def area_resize(rgb: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (side, side, 3) float32 in [0, 1]: torch's area resize of ``rgb / 255``, bit for bit.

    Memory: the frame is read in place (copied only if not C-contiguous, so one specialization is compiled)."""
    x = np.ascontiguousarray(rgb)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"expected a (H, W, 3) uint8 frame, got {x.shape} {x.dtype}")
    out = np.empty((side, side, 3), np.float32)
    return _compiled()(x, _LUT, *_windows(x.shape[0], x.shape[1], side), out)
