"""Batches with a group of clips from one source: hard negatives (dubs paper, §3 and App. A).

A pure function of ``(seed, epoch, clip set)``, like ``epoch_order``.  Batch by batch::

    g = max(2, round(fraction * B))
    1. pick a source uniformly among those with >= g unused clips this epoch
       ("uniformly sample a title, then draw multiple distinct snippets")
    2. batch[:g]  = g of its unused clips, at random
    3. batch[g:]  = B - g unused clips drawn uniformly from all the others
       (more of the same source may come by chance)

Once no source has g unused clips left, the rest of the epoch is plain uniform
batches.  Every clip is served at most once per epoch.  Sources are chosen uniformly
over sources, not over clips: a long film is not picked more often than a short one
while both have g clips left (it stays eligible for longer, so over a whole epoch it
is picked more often).

Cost is O(N log N) for N clips (two permutations and a sort), then O(B) numpy work per
batch: unused clips are found by walking two fixed random orders (all clips, and each
source's clips) past the ones already served.  The next unused clips of a random order
are a uniform draw from the unused ones, because what was served never depended on
that order's remaining part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Third seed word: keeps this stream apart from epoch_order's default_rng([seed, epoch]).
STREAM_TAG = 0x5CA5_0001


def group_size(batch_size: int, same_source_fraction: float) -> int:
    """Clips per batch from the one chosen source: ``max(2, round(fraction * batch_size))``
    (Python's round: halves go to the even neighbour). ValueError if it cannot fit."""
    if not 0.0 < same_source_fraction <= 1.0:
        raise ValueError(f"same_source_fraction must be in (0, 1], got {same_source_fraction}")
    g = max(2, round(same_source_fraction * batch_size))
    if g > batch_size:
        raise ValueError(f"a same-source group needs batch_size >= 2, got {batch_size}")
    return g


def _next_unused(order: np.ndarray, start: int, stop: int, need: int, used: np.ndarray) -> tuple[np.ndarray, int]:
    """The first ``need`` unused entries of ``order[start:stop]`` (fewer if there are not
    that many) and the position just past the last one taken.

    The window doubles until it holds enough, so a run of served clips is skipped once."""
    width = need
    while True:
        hi = min(stop, start + width)
        seg = order[start:hi]
        free = np.flatnonzero(~used[seg])
        if len(free) >= need or hi == stop:
            free = free[:need]
            return seg[free], (start + int(free[-1]) + 1) if len(free) else hi
        width *= 2


def source_batches(sources: Sequence[str], batch_size: int, same_source_fraction: float, seed: int, epoch: int,
                   *, drop_last: bool = True) -> list[np.ndarray]:
    """One epoch of batches (int64 index arrays into ``sources``), each with a same-source group.

    ``sources[i]``: the source (long video, title) of clip i. Batch k's first
    ``group_size(batch_size, fraction)`` clips come from one source while some source has
    that many unused clips (module docstring). ``drop_last``: drop the final short batch
    of the clips left over (else it is the last batch, in random order).
    """
    g = group_size(batch_size, same_source_fraction)
    n = len(sources)
    rng = np.random.default_rng([int(seed), int(epoch), STREAM_TAG])
    names, codes = np.unique(np.asarray(sources, dtype=str), return_inverse=True)
    codes = codes.reshape(-1)
    n_src = len(names)
    # each source's clips, contiguous, in random order: source s is by_source[start[s]:stop[s]]
    perm = rng.permutation(n)
    by_source = perm[np.argsort(codes[perm], kind="stable")]
    left = np.bincount(codes, minlength=n_src)  # unused clips per source
    stop = np.cumsum(left)
    start = stop - left  # advances past the clips taken
    uniform = rng.permutation(n)  # the order the uniform part is drawn in
    upos = 0
    used = np.zeros(n, dtype=bool)
    # sources with >= g unused clips: a list with O(1) random pick and removal (swap with the last)
    eligible = np.flatnonzero(left >= g)
    slot = np.full(n_src, -1, dtype=np.int64)
    slot[eligible] = np.arange(len(eligible))
    n_eligible = len(eligible)

    batches: list[np.ndarray] = []
    n_unused = n
    while n_eligible and n_unused >= batch_size:
        s = int(eligible[rng.integers(n_eligible)])
        group, start[s] = _next_unused(by_source, int(start[s]), int(stop[s]), g, used)
        used[group] = True
        rest, upos = _next_unused(uniform, upos, n, batch_size - g, used)
        used[rest] = True
        batch = np.concatenate([group, rest])
        batches.append(batch)
        n_unused -= batch_size
        touched = codes[batch]
        np.subtract.at(left, touched, 1)
        for t in np.unique(touched[left[touched] < g]).tolist():  # no longer has a group's worth
            j = slot[t]
            if j < 0:
                continue
            n_eligible -= 1
            last = eligible[n_eligible]
            eligible[j], slot[last], slot[t] = last, j, -1
    # no source has g unused clips left (or fewer than a batch remain): plain uniform batches
    tail = uniform[upos:]
    tail = tail[~used[tail]]
    cut = len(tail) if not drop_last else len(tail) - len(tail) % batch_size
    batches += [tail[a : a + batch_size] for a in range(0, cut, batch_size)]
    return [b.astype(np.int64, copy=False) for b in batches]


@dataclass
class BatchComposition:
    """Per batch: the largest number of clips from one source, that source, and how many
    distinct sources the batch holds (arrays/lists of length n_batches)."""

    largest_group: np.ndarray  # (n_batches,) int64
    largest_source: list[str]  # ties: the smallest name
    n_sources: np.ndarray  # (n_batches,) int64

    def summary(self) -> dict[str, float]:
        """Means over the batches, for logging."""
        return {"largest_group": float(self.largest_group.mean()) if len(self.largest_group) else 0.0,
                "n_sources": float(self.n_sources.mean()) if len(self.n_sources) else 0.0}


def batch_composition(sources: Sequence[str], batches: Sequence[np.ndarray]) -> BatchComposition:
    """How concentrated each batch (index array into ``sources``) is on one source."""
    src = np.asarray(sources, dtype=str)
    largest, which, distinct = [], [], []
    for b in batches:
        names, counts = np.unique(src[np.asarray(b, dtype=np.int64)], return_counts=True)
        k = int(np.argmax(counts)) if len(counts) else 0
        largest.append(int(counts[k]) if len(counts) else 0)
        which.append(str(names[k]) if len(counts) else "")
        distinct.append(len(names))
    return BatchComposition(np.array(largest, dtype=np.int64), which, np.array(distinct, dtype=np.int64))
