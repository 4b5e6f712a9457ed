"""Block sizes of a streamed search: (query block x candidate chunk), explicit or planned
from the device's free memory (:func:`plan_blocks`, a pure function).

:class:`BlockConfig` says how a search is cut into blocks and where it runs (block sizes,
device, precision, re-rank mode); results never depend on the block sizes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from scav.model.latents import Latents
from scav.sequence.euclidean import PRECISIONS

log = logging.getLogger(__name__)

RERANK_MODES = ("auto", "sampled", "union", "gather")


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[(a, b)] covering range(n) in pieces of ``size``."""
    return [(a, min(a + size, n)) for a in range(0, n, size)]


AUTO = "auto"


@dataclass(frozen=True)
class BlockConfig:
    """Block sizes, precision and device of a search (results do not depend on the block sizes).

    query_block / candidate_chunk: a number, or 'auto' = sized per search from the device's
    free memory (:func:`plan_blocks`, :func:`free_memory_bytes`). precision: of seq's cross
    term, 'fp32' (exact, as always) or 'bf16' (interpolated Euclidean only; hybrid's
    re-ranking stays fp32).
    """

    query_block: int | str = AUTO
    candidate_chunk: int | str = AUTO
    rerank_budget_mb: int = 256  # gathered candidates held at once while re-ranking
    rerank: str = "auto"  # 'auto' | 'sampled' | 'union' | 'gather' (see hybrid_rerank)
    device: str = "cpu"
    precision: str = "fp32"

    def validate(self) -> None:
        for name in ("query_block", "candidate_chunk"):
            v = getattr(self, name)
            if v != AUTO and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be 'auto' or an integer >= 1, got {v!r}")
        if self.rerank_budget_mb < 1:
            raise ValueError("rerank_budget_mb must be >= 1")
        if self.rerank not in RERANK_MODES:
            raise ValueError(f"rerank must be one of {RERANK_MODES}, got {self.rerank!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def blocks(self, n_queries: int, n_candidates: int, query_row: int, candidate_row: int,
               cell: int, host_row: int = 0) -> tuple[int, int]:
        """(query_block, candidate_chunk) for one search: explicit numbers as given, 'auto'
        from the free memory of ``self.device`` (row/cell bytes: see :func:`plan_blocks`;
        host_row: bytes of one candidate's host copy, bounding a GPU's chunk by host RAM)."""
        qb, cb = self.query_block, self.candidate_chunk
        if qb != AUTO and cb != AUTO:
            return int(qb), int(cb)
        dev = torch.device(self.device)
        auto_q, auto_c = plan_blocks(
            free_memory_bytes(dev), n_queries, n_candidates, query_row, candidate_row, cell,
            fraction=_FRACTION[dev.type == "cuda"], max_block=_MAX_BLOCK[dev.type == "cuda"],
            fixed_query_block=None if qb == AUTO else int(qb),
            fixed_candidate_chunk=None if cb == AUTO else int(cb),
        )
        if dev.type == "cuda" and cb == AUTO and host_row:
            # the candidate chunk is also copied out of the store in host RAM first
            host_cap = int(_FRACTION[False] * free_memory_bytes(torch.device("cpu"))) // host_row
            auto_c = max(1, min(auto_c, host_cap))
        log.info("blocks on %s: %d queries x %d candidates", dev, auto_q, auto_c)
        return auto_q, auto_c


# ----------------------------------------------------------------------------- block sizing

# share of the free memory a search may take: the CPU's also holds the latents (memmap pages),
# the caller's arrays and other processes; a GPU's is ours but the allocator fragments
_FRACTION = {False: 0.25, True: 0.5}
# largest block side: on a CPU larger blocks gain nothing once the matmul is big (1024 was
# measured at 80-87 % of the matmul rate) and the rank counting passes fall out of cache;
# a GPU needs big blocks to fill it (1024 x 1024 blocks ran at 2 % of an H200's rate)
_MAX_BLOCK = {False: 4096, True: 1 << 17}
_MIB = 1 << 20


def free_memory_bytes(device: torch.device) -> int:
    """Bytes free on ``device`` now: CUDA ``mem_get_info``; CPU ``MemAvailable`` of
    /proc/meminfo (free + reclaimable cache), else free pages from ``os.sysconf``."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 30  # unknown: assume 1 GiB


def seq_row_bytes(steps: int, other_steps: int, dim: int, elem_bytes: int = 4) -> int:
    """Device bytes one clip of a block takes in seq scoring: its padded (steps, dim) copy
    plus up to 4 interpolation temporaries at the longer length (gather x0, x1, the lerp)."""
    return (steps + 4 * max(steps, other_steps)) * dim * elem_bytes


# bytes per (query, candidate) score cell: the distance, its clamp / scale / permutation /
# negation (4 B each) and count_ahead's comparisons (bool and int64 temporaries)
SEQ_CELL_BYTES = 40
AGG_CELL_BYTES = 40  # float64 product, its float32 copy, count_ahead / top-k temporaries


def plan_blocks(
    free_bytes: int,
    n_queries: int,
    n_candidates: int,
    query_row: int,
    candidate_row: int,
    cell: int,
    fraction: float = 0.25,
    max_block: int = 4096,
    fixed_query_block: int | None = None,
    fixed_candidate_chunk: int | None = None,
) -> tuple[int, int]:
    """(query_block, candidate_chunk) whose working set fits ``fraction * free_bytes``.

    Pure. The working set of a (qb, cb) block is
    ``qb * query_row + cb * candidate_row + qb * cb * cell`` plus the score blocks
    :func:`_stream_ranks` holds while it reads the positives off
    (``4 * qb * (qb + 2 cb)`` bytes). Query blocks come first: every query block reads all
    candidates once more (host copies, transfers), so the largest query block (at most
    ``max_block`` and Q) is taken whose best candidate chunk is at least as large as it
    (or all N); then the largest candidate chunk that fits. At least (1, 1), even when
    nothing fits (the floor of what a search can do). Either side may be fixed.
    """
    budget = max(0.0, fraction * free_bytes)
    top_q = fixed_query_block or max(1, min(n_queries, max_block))
    top_c = fixed_candidate_chunk or max(1, min(n_candidates, max_block))

    def best_chunk(qb: int) -> int:
        # largest cb with qb*qrow + 4*qb^2 + cb*(crow + qb*(cell + 8)) <= budget
        rest = budget - qb * query_row - 4.0 * qb * qb
        per = candidate_row + qb * (cell + 8.0)
        return int(max(0.0, rest) // per)

    qb = top_q
    if fixed_query_block is None:
        while qb > 1 and best_chunk(qb) < min(qb, top_c):
            qb = max(1, qb // 2)
    cb = fixed_candidate_chunk or max(1, min(top_c, best_chunk(qb)))
    return qb, cb


def seq_blocks(queries: Latents, candidates: Latents, cfg: BlockConfig) -> tuple[int, int]:
    """(query_block, candidate_chunk) of seq / hybrid's dense re-ranking over these latents."""
    lq, lc = int(queries.lengths.max()), int(candidates.lengths.max())
    return cfg.blocks(
        len(queries), len(candidates), seq_row_bytes(lq, lc, queries.dim), seq_row_bytes(lc, lq, candidates.dim),
        SEQ_CELL_BYTES, host_row=lc * candidates.dim * 4,
    )


