"""First stage of a gallery search: each query's top-k gallery clips by cosine of pooled embeddings.

Inputs are L2-normalised embeddings, so cosine = inner product. Paths:

- ``torch`` (exact): (query block x gallery chunk) float32 products merged into a running
  per-query top-k held as :func:`~scav.retrieve.topk.rank_keys` (score desc, index asc).
  Once a query holds k, a chunk only contributes scores strictly above its k-th (chunks come
  in index order, so a later candidate tied with the k-th ranks after it): a compare pass, no
  top-k per chunk.
- ``faiss`` flat (exact): ``faiss.knn`` (BLAS products + heaps) straight over the stored
  array, no copy into an index; ``faiss.knn_gpu`` on CUDA when GPU FAISS is importable.
- ``ivf`` / ``hnsw`` (approximate): FAISS IndexIVFFlat / IndexHNSWFlat with inner product.

``backend='auto'`` picks FAISS for galleries of at least ``faiss_threshold`` clips, torch
below (no FAISS start-up, and torch's ties follow the evaluation's rule exactly). On CUDA
without GPU FAISS the exact search stays in torch on the GPU; ANN indexes run on the CPU.

Scores are float32 inner products; where two scores differ only in the last bits the two
exact paths may order them differently (summation order), as any two BLAS would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .topk import key_index, key_scores, merge_block, rank_keys  # noqa: F401 (merge_block, key_scores: importable from here)
from .search_config import ANN_CHOICES, BACKENDS, DEFAULT_FAISS_THRESHOLD, FirstStageConfig  # noqa: F401

# bytes of one (query block x gallery chunk) float32 score block on the CPU, scored into one
# reused buffer. Fewer, larger blocks: each torch op is a parallel region, and on a busy
# machine every region waits for its slowest thread (1M x 1000 queries on the bench VM under
# load: 4096-row blocks took 1.5x the CPU time of 16384-row ones)
_CPU_BLOCK_BYTES = 64 << 20
_GPU_BLOCK_BYTES = 1 << 30
# gallery rows per BLAS block in faiss.knn (FAISS's default 1024): 16384 ran 2.2x faster on the
# bench VM (1000 x 262k x 512, best of 3: 2.5 s vs 5.4 s)
_FAISS_DB_BLOCK = 16384


@dataclass
class TopK:
    """(Q, k) results in ranking order: scores float32 (higher = closer), index int64 (-1 = none:
    an approximate index may find fewer than k); ``method`` says which path produced them."""

    scores: np.ndarray
    index: np.ndarray
    method: str


# ----------------------------------------------------------------------------- helpers


def normalize_rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, c) -> float32 rows of unit L2 norm (computed in float64; a zero row stays zero)."""
    t = torch.as_tensor(np.asarray(x)).double()
    return torch.nn.functional.normalize(t, dim=-1).float().numpy()


def _as_float32(a: np.ndarray) -> np.ndarray:
    """C-contiguous float32 view (no copy for a float32 memmap)."""
    return np.ascontiguousarray(a, dtype=np.float32)


def faiss_gpu_available() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _check(queries: np.ndarray, gallery: np.ndarray, k: int) -> None:
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries {queries.shape} and gallery {gallery.shape} must be (Q, c) and (N, c)")
    if not 1 <= k <= len(gallery):
        raise ValueError(f"k must be between 1 and the gallery size ({len(gallery)}), got {k}")


# ----------------------------------------------------------------------------- exact: torch


def _product(a: torch.Tensor, b: torch.Tensor, buf: torch.Tensor | None) -> torch.Tensor:
    """a @ b.T, into ``buf`` when it has exactly that shape: a block's scores reuse one buffer
    (fresh memory for every block costs first-touch page faults)."""
    if buf is not None and buf.shape == (len(a), len(b)):
        return torch.mm(a, b.T, out=buf)
    return a @ b.T


def exact_topk_torch(queries: np.ndarray, gallery: np.ndarray, k: int, device: str = "cpu",
                     chunk: int | None = None) -> TopK:
    """Exact top-k by inner product; queries (Q, c), gallery (N, c) (a memmap is read chunk
    by chunk). Order: score desc, index asc (the evaluation's tie rule). chunk: gallery rows
    per block (default from a fixed block budget)."""
    _check(queries, gallery, k)
    dev = torch.device(device)
    budget = _GPU_BLOCK_BYTES if dev.type == "cuda" else _CPU_BLOCK_BYTES
    q_all = torch.from_numpy(_as_float32(queries)).to(dev)
    n_q = len(q_all)
    q_block = max(1, min(n_q, 4096))
    chunk = min(len(gallery), chunk or max(k, budget // (4 * q_block)))
    keys_out = torch.empty((n_q, k), dtype=torch.int64)
    for qa in range(0, n_q, q_block):
        q = q_all[qa : qa + q_block]
        buf = torch.empty((len(q), chunk), device=dev)
        keys = torch.empty((len(q), 0), dtype=torch.int64, device=dev)
        for ca in range(0, len(gallery), chunk):
            c = torch.from_numpy(_as_float32(gallery[ca : ca + chunk])).to(dev, non_blocking=True)
            keys = merge_block(keys, _product(q, c, buf), ca, k)
        keys_out[qa : qa + len(q)] = keys.cpu()
    return TopK(key_scores(keys_out).numpy(), key_index(keys_out).numpy(), f"exact (torch, {dev.type})")


# ----------------------------------------------------------------------------- exact: faiss


def exact_topk_faiss(queries: np.ndarray, gallery: np.ndarray, k: int, gpu: bool = False) -> TopK:
    """Exact top-k by inner product with FAISS (``knn``; ``knn_gpu`` when ``gpu``)."""
    import faiss

    _check(queries, gallery, k)
    xq, xb = _as_float32(queries), _as_float32(gallery)
    if gpu:
        d, i = faiss.knn_gpu(faiss.StandardGpuResources(), xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
        return TopK(d.astype(np.float32), i.astype(np.int64), "exact (faiss flat, gpu)")
    before = faiss.cvar.distance_compute_blas_database_bs  # process-wide: restored after
    faiss.cvar.distance_compute_blas_database_bs = max(before, _FAISS_DB_BLOCK)
    try:
        d, i = faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
    finally:
        faiss.cvar.distance_compute_blas_database_bs = before
    return TopK(d.astype(np.float32), i.astype(np.int64), "exact (faiss flat)")


# ----------------------------------------------------------------------------- approximate


def build_ann(gallery: np.ndarray, cfg: FirstStageConfig, add_chunk: int = 1 << 16):
    """A FAISS index over the gallery rows (inner product): IVF-flat or HNSW-flat (``cfg.ann``).

    IVF trains its coarse quantiser on an evenly spread sample (``train_size``) and adds the
    rows chunk by chunk (bounded temporaries over a memmap)."""
    import faiss

    cfg.validate()
    n, dim = gallery.shape
    if cfg.ann == "ivf":
        nlist = cfg.n_lists(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        n_train = min(n, cfg.train_size or 40 * nlist)
        rows = np.sort(np.random.default_rng(cfg.seed).choice(n, n_train, replace=False))
        index.cp.seed = cfg.seed
        index.train(_as_float32(gallery[rows]))
    elif cfg.ann == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
    else:
        raise ValueError(f"build_ann needs ann 'ivf' or 'hnsw', got {cfg.ann!r}")
    for a in range(0, n, add_chunk):
        index.add(_as_float32(gallery[a : a + add_chunk]))
    return index


def ann_describe(index) -> str:
    """'ivf nlist=.. nprobe=..' / 'hnsw M=.. efSearch=..' of a FAISS index."""
    import faiss

    if isinstance(index, faiss.IndexIVF):
        return f"approximate (faiss ivf nlist={index.nlist} nprobe={index.nprobe})"
    if isinstance(index, faiss.IndexHNSW):
        return f"approximate (faiss hnsw M={index.hnsw.nb_neighbors(1)} efSearch={index.hnsw.efSearch})"
    return f"faiss {type(index).__name__}"


def ann_kind(index) -> str:
    import faiss

    return "ivf" if isinstance(index, faiss.IndexIVF) else "hnsw" if isinstance(index, faiss.IndexHNSW) else "?"


def ann_topk(index, queries: np.ndarray, k: int, cfg: FirstStageConfig) -> TopK:
    """Approximate top-k from a FAISS index built by :func:`build_ann` (search parameters from cfg)."""
    import faiss

    if not 1 <= k <= index.ntotal:
        raise ValueError(f"k must be between 1 and the gallery size ({index.ntotal}), got {k}")
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = min(cfg.nprobe, index.nlist)
    elif isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(cfg.ef_search, k)  # efSearch < k returns fewer than k
    d, i = index.search(_as_float32(queries), k)
    return TopK(d.astype(np.float32), i.astype(np.int64), ann_describe(index))


# ----------------------------------------------------------------------------- dispatch


def agg_topk(queries: np.ndarray, gallery: np.ndarray, k: int, cfg: FirstStageConfig = FirstStageConfig(),
             ann_index=None) -> TopK:
    """Each query's top-k gallery rows by inner product (both sides L2-normalised by the caller).

    Exact (``cfg.ann='exact'``): torch or FAISS flat per ``cfg.backend`` / the threshold.
    Approximate: ``ann_index`` if given (e.g. loaded with a gallery index), else one built now.
    """
    cfg.validate()
    if cfg.ann != "exact":
        index = ann_index if ann_index is not None else build_ann(gallery, cfg)
        return ann_topk(index, queries, k, cfg)
    cuda = torch.device(cfg.device).type == "cuda"
    backend = cfg.backend
    if backend == "auto":
        backend = "faiss" if len(gallery) >= cfg.faiss_threshold and (not cuda or faiss_gpu_available()) else "torch"
    if backend == "faiss":
        return exact_topk_faiss(queries, gallery, k, gpu=cuda and faiss_gpu_available())
    return exact_topk_torch(queries, gallery, k, device=cfg.device)
