"""The order of one training epoch: a pure function of ``(seed, epoch, clip set)``.

See ``scav.core.loader`` for the recipe (block shuffle + window shuffle).
"""

from __future__ import annotations

import numpy as np


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
