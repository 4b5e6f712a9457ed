"""How encoders batch work across clips: pure index arithmetic, no torch.

* CLIP sees frames independently, so frames of several clips are packed into
  batches of ``frame_batch`` frames (a clip may span batches).
* BEATs features change when a clip is zero-padded (PITFALLS.md), so clips are
  batched only with clips of exactly the same sample count.
"""

from __future__ import annotations

from collections.abc import Sequence

Span = tuple[int, int, int]  # (item index, start, stop): frames start:stop of item ``index``


def pack_frames(lengths: Sequence[int], frame_batch: int) -> list[list[Span]]:
    """Pack items' frames, in order, into batches of at most ``frame_batch`` frames.

    Every batch but the last holds exactly ``frame_batch`` frames; items of length
    0 take no span. Concatenating an item's spans over all batches gives 0..length.
    """
    if frame_batch < 1:
        raise ValueError(f"frame_batch must be >= 1, got {frame_batch}")
    batches: list[list[Span]] = []
    cur: list[Span] = []
    room = frame_batch
    for i, n in enumerate(lengths):
        start = 0
        while start < n:
            take = min(room, n - start)
            cur.append((i, start, start + take))
            start += take
            room -= take
            if room == 0:
                batches.append(cur)
                cur, room = [], frame_batch
    if cur:
        batches.append(cur)
    return batches


def group_equal_lengths(lengths: Sequence[int], max_batch: int) -> list[list[int]]:
    """Indices grouped by equal length, each group cut into batches of at most ``max_batch``.

    Groups come in order of their first item; inside a group, items keep their order.
    Two indices share a batch only if their lengths are equal.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    return [idx[k : k + max_batch] for idx in groups.values() for k in range(0, len(idx), max_batch)]
