"""Stored latents: the latent sequences and pooled embeddings of a set of clips.

One layout for every consumer (the retrieval search, exports of a split, the gallery
index): ``seq (sum L_i, c)`` float32 + ``offsets (N + 1,)`` int64 + ``emb (N, c)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scav.sequence.pooling import masked_mean


@dataclass
class Latents:
    """Latent sequences of one modality of a split (flat ragged layout) + pooled embeddings.

    seq (sum L_i, c) float32 (ndarray or np.memmap); offsets (N + 1,) int64, clip i is
    ``seq[offsets[i]:offsets[i+1]]``; emb (N, c) float32, the mean over valid steps.
    """

    seq: np.ndarray
    offsets: np.ndarray
    emb: np.ndarray

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        n = len(self.offsets) - 1
        if self.emb.shape[0] != n or int(self.offsets[-1]) != self.seq.shape[0]:
            raise ValueError(
                f"inconsistent latents: {n} offsets rows, emb {self.emb.shape}, seq {self.seq.shape}"
            )
        self.lengths = np.diff(self.offsets)
        if n and int(self.lengths.min()) < 1:
            raise ValueError("every clip needs at least one latent step")
        self.uniform = n > 0 and bool((self.lengths == self.lengths[0]).all())

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return int(self.seq.shape[1])

    @classmethod
    def from_padded(cls, seq: torch.Tensor, mask: torch.Tensor) -> "Latents":
        """From padded (N, L, c) + mask (N, L) (prefix masks); emb = masked mean."""
        lengths = mask.sum(1).cpu().numpy().astype(np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = seq[mask].float().cpu().numpy()
        emb = masked_mean(seq.float(), mask).cpu().numpy()
        return cls(np.ascontiguousarray(flat), offsets, emb)

    @classmethod
    def load(cls, folder: str | Path, modality: str, mmap: bool = True) -> "Latents":
        """Read ``<modality>_seq.npy``, ``_offsets.npy``, ``_emb.npy`` (the export layout of :mod:`scav.model.embed`)."""
        folder = Path(folder)
        mode = "c" if mmap else None  # copy-on-write: torch can wrap it; the file is never changed
        return cls(
            np.load(folder / f"{modality}_seq.npy", mmap_mode=mode),
            np.load(folder / f"{modality}_offsets.npy"),
            np.load(folder / f"{modality}_emb.npy", mmap_mode=mode),
        )

    def head(self, n: int) -> "Latents":
        """The first ``n`` clips (a view, no copy)."""
        return Latents(self.seq[: self.offsets[n]], self.offsets[: n + 1], self.emb[:n])

    def embeddings(self, a: int, b: int) -> torch.Tensor:
        """(b - a, c) float32 embeddings of clips [a, b)."""
        return torch.from_numpy(np.ascontiguousarray(self.emb[a:b], dtype=np.float32))

    def range(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips [a, b) padded: (x (n, Lmax, c) float32, mask (n, Lmax) bool)."""
        if self.uniform:
            length = int(self.lengths[0])
            rows = np.ascontiguousarray(self.seq[self.offsets[a] : self.offsets[b]], dtype=np.float32)
            x = torch.from_numpy(rows).view(b - a, length, self.dim)
            return x, torch.ones((b - a, length), dtype=torch.bool)
        return self.take(np.arange(a, b))

    def take(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips ``idx`` (n,) padded: (x (n, Lmax, c) float32, mask (n, Lmax) bool)."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.uniform:  # whole clips are contiguous rows of (N, L, c): one block copy each
            length = int(self.lengths[0])
            x = np.asarray(self.seq.reshape(len(self), length, self.dim)[idx], dtype=np.float32)
            return torch.from_numpy(x), torch.ones((len(idx), length), dtype=torch.bool)
        lengths = self.lengths[idx]
        lmax = int(lengths.max()) if len(idx) else 1
        steps = np.arange(lmax)
        valid = steps[None, :] < lengths[:, None]  # (n, Lmax)
        rows = np.where(valid, self.offsets[idx][:, None] + steps[None, :], 0)
        x = np.asarray(self.seq[rows.reshape(-1)], dtype=np.float32).reshape(len(idx), lmax, self.dim)
        x[~valid] = 0.0
        return torch.from_numpy(x), torch.from_numpy(valid)
