"""What ``scav-retrieve search`` / ``index`` / ``report`` do, as typed configs (light: no torch,
so ``--help`` is fast; the CLI reads its choices and defaults from here).

The runs are :func:`scav.retrieve.search_command.run_search` / ``run_index`` and
:func:`scav.retrieve.report_command.run_report`; the first stage's own config
(:class:`FirstStageConfig`) is used by :mod:`scav.retrieve.first_stage`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scav.core.device import check_device_name
from scav.core.schema import check_track_selector

from .config import PRECISIONS, SEARCH_METHODS

ANN_CHOICES = ("exact", "ivf", "hnsw")
BACKENDS = ("auto", "torch", "faiss")
DEFAULT_FAISS_THRESHOLD = 100_000  # gallery size from which the exact first stage runs in FAISS
DIRECTIONS = ("a2v", "v2a")
# direction -> (query modality, candidate modality): a2v = audio queries against videos
_SIDES = {"a2v": ("audio", "video"), "v2a": ("video", "audio")}
DEFAULT_CACHE = "features.zarr"
DEFAULT_TOPK = 10
DEFAULT_KS = (1, 5, 10, 20, 50)  # report: hybrid's k curve


def sides(direction: str) -> tuple[str, str]:
    """(query modality, candidate modality) of ``direction``: a2v = audio queries against videos."""
    if direction not in _SIDES:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return _SIDES[direction]


def query_is_video(direction: str) -> bool:
    """Are the queries of ``direction`` videos (v2a)?"""
    return sides(direction)[0] == "video"


@dataclass(frozen=True)
class FirstStageConfig:
    """How the first stage searches. ann: 'exact' | 'ivf' | 'hnsw'; backend (exact only):
    'auto' | 'torch' | 'faiss'. nlist None = 4 sqrt(N) lists (FAISS's guidance; at 1M clips
    x 512 on 2 cores: built in ~2 min, recall@100 0.999 at nprobe 8 in bench/bench_search.py,
    where sqrt(N) lists gave 0.93); train_size None = min(N, 40 nlist) vectors to train IVF's
    coarse quantiser on (FAISS warns below 39 per list)."""

    ann: str = "exact"
    backend: str = "auto"
    faiss_threshold: int = DEFAULT_FAISS_THRESHOLD
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    train_size: int | None = None
    device: str = "cpu"
    seed: int = 0

    def validate(self) -> None:
        if self.ann not in ANN_CHOICES:
            raise ValueError(f"ann must be one of {ANN_CHOICES}, got {self.ann!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("faiss_threshold", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("nlist", "train_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")

    def n_lists(self, n: int) -> int:
        return max(1, min(n, self.nlist or int(round(4 * math.sqrt(n)))))


def check_common(direction: str, method: str, k: int | None, topk: int, audio_track, device: str,
                 batch_size: int, precision: str, dtw_gamma: float | None) -> None:
    """The checks search and report share (ValueError / CacheError for a bad track)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if method not in SEARCH_METHODS:
        raise ValueError(f"method must be one of {SEARCH_METHODS}, got {method!r}")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if method == "hybrid" and k is not None and topk > k:
        raise ValueError(f"hybrid re-ranks the first stage's top k: --topk ({topk}) must be <= --k ({k})")
    if batch_size < 1:
        raise ValueError("batch size must be >= 1")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if dtw_gamma is not None and not (math.isfinite(dtw_gamma) and dtw_gamma >= 0):
        raise ValueError(f"dtw_gamma must be >= 0 (0 = hard DTW), got {dtw_gamma}")
    check_track_selector(audio_track)
    check_device_name(device)


@dataclass(frozen=True)
class SearchRequest:
    """One search. Queries: any of query_clips, query_ids_file, query_split, query_media (in
    that order in the output). Gallery: ``index`` (a saved index) or ``gallery_splits`` of the
    cache (empty = the whole cache). cache None = the index's cache, else features.zarr.
    k: hybrid's first-stage candidates (None = min(100, gallery)); topk: results per query
    (at most the gallery size)."""

    checkpoint: str
    cache: str | None = None
    query_clips: tuple[str, ...] = ()
    query_ids_file: str | None = None
    query_split: str | None = None
    query_media: tuple[str, ...] = ()
    gallery_splits: tuple[str, ...] = ()
    index: str | None = None
    direction: str = "a2v"
    method: str = "hybrid"
    k: int | None = None
    topk: int = DEFAULT_TOPK
    audio_track: int | str = 0
    dtw_gamma: float | None = None
    ann: str = "exact"
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    faiss_threshold: int = DEFAULT_FAISS_THRESHOLD
    clip_weights: str | None = None
    beats_ckpt: str | None = None
    json_path: str | None = None
    batch_size: int = 64
    device: str = "auto"
    query_block: int | str = "auto"
    candidate_chunk: int | str = "auto"
    precision: str = "fp32"

    def validate(self) -> None:
        if not (self.query_clips or self.query_ids_file or self.query_split or self.query_media):
            raise ValueError("no queries: give --query-clip, --query-ids, --query-split or --query-media")
        if self.index and self.gallery_splits:
            raise ValueError("--gallery-split chooses clips to encode now; a saved --index already holds its gallery")
        check_common(self.direction, self.method, self.k, self.topk, self.audio_track, self.device,
                     self.batch_size, self.precision, self.dtw_gamma)
        self.first_stage().validate()

    def first_stage(self, device: str = "cpu") -> FirstStageConfig:
        return FirstStageConfig(ann=self.ann, faiss_threshold=self.faiss_threshold, nlist=self.nlist,
                                nprobe=self.nprobe, hnsw_m=self.hnsw_m, ef_search=self.ef_search, device=device)

    def block_config(self, device: str):
        from .blocks import BlockConfig

        return BlockConfig(query_block=self.query_block, candidate_chunk=self.candidate_chunk,
                            device=device, precision=self.precision)


@dataclass(frozen=True)
class IndexRequest:
    """Build a saved gallery index. out None = next to the cache (gallery_index.default_folder).
    ann: also save an approximate first-stage index ('ivf' | 'hnsw'; 'exact' = none)."""

    checkpoint: str
    cache: str = DEFAULT_CACHE
    gallery_splits: tuple[str, ...] = ()
    out: str | None = None
    audio_track: int | str = 0
    ann: str = "exact"
    nlist: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 80
    rebuild: bool = False
    batch_size: int = 64
    device: str = "auto"
    json_path: str | None = None

    def validate(self) -> None:
        if self.ann not in ANN_CHOICES:
            raise ValueError(f"ann must be one of {ANN_CHOICES}, got {self.ann!r}")
        if self.batch_size < 1:
            raise ValueError("batch size must be >= 1")
        check_track_selector(self.audio_track)
        check_device_name(self.device)
        FirstStageConfig(ann=self.ann, nlist=self.nlist, hnsw_m=self.hnsw_m, ef_construction=self.ef_construction).validate()


@dataclass(frozen=True)
class ReportRequest:
    """max_queries: queries sampled (seeded) from the split; ks: hybrid's k curve (capped at
    the split size); media_root: the folder the cache's media paths are relative to."""

    checkpoint: str
    split: str
    out: str
    cache: str = DEFAULT_CACHE
    max_queries: int = 20
    seed: int = 0
    direction: str = "a2v"
    method: str = "hybrid"
    k: int | None = None
    topk: int = DEFAULT_TOPK
    ks: tuple[int, ...] = DEFAULT_KS
    audio_track: int | str = 0
    media_root: str | None = None
    dtw_gamma: float | None = None
    batch_size: int = 64
    device: str = "auto"
    json_path: str | None = None

    def validate(self) -> None:
        check_common(self.direction, self.method, self.k, self.topk, self.audio_track, self.device,
                     self.batch_size, "fp32", self.dtw_gamma)
        if self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be k values >= 1, got {self.ks}")


