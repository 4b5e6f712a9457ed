"""Which sequence distance, with which parameters: one frozen value for training and retrieval.

Training builds it from its objective (``scav.model.objective.distance_spec``), checkpoints
carry that objective, and retrieval rebuilds the same spec from the checkpoint, so the
distance a model is ranked by is the one it was trained with (retrieval may only swap
soft-DTW's gamma, e.g. for hard DTW). Every method takes video first and audio second:
rows = video, columns = audio, whatever the query side of a search.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .blockwise import DEFAULT_CHUNK_CELLS
from .distances import DISTANCES
from .dtw import dtw_matrix, soft_dtw_matrix
from .euclidean import (
    PRECISIONS,
    equal_length_euclidean,
    interp_euclidean_matrix,
    paired_euclidean,
    sampled_euclidean,
)
from .wasserstein import DEFAULT_MAX_ITER, DEFAULT_TOL, POS_SCALES, wasserstein_matrix

RESAMPLES = ("video", "audio")  # which modality the interpolated Euclidean resamples


def resamples_video(resample: str) -> bool:
    """Whether ``resample`` interpolates the video side to the audio's length ('video', the
    paper's v->a) rather than the reverse ('audio'): the one statement of that rule, read by the
    distances, the model (interp='pre'), clip lengths and stored latents alike."""
    if resample not in RESAMPLES:
        raise ValueError(f"resample must be one of {RESAMPLES}, got {resample!r}")
    return resample == "video"


def source_target(resample: str, video, audio):
    """``(resampled side, the side whose length it takes)`` of any video/audio pair of values."""
    return (video, audio) if resamples_video(resample) else (audio, video)


@dataclass(frozen=True)
class DistanceSpec:
    """A sequence distance between video (Bv, T, c) and audio (Ba, S, c) latent sequences.

    name: 'euclidean' | 'soft_dtw' | 'wasserstein'.
    resample (euclidean): 'video' = each video resampled to the audio's length (the
      paper's v->a), 'audio' = the reverse.
    gamma (soft_dtw): smoothing; 0 = hard DTW (exact min; retrieval only, no gradient).
    eps, pos_weight, pos_scale, eps_scale, tol, max_iter (wasserstein): see
      :func:`~scav.sequence.wasserstein.wasserstein_matrix`.
    chunk: DP cells per block of soft-DTW / Wasserstein (memory, not results).
    """

    name: str = "euclidean"
    resample: str = "video"
    gamma: float = 0.1
    eps: float = 0.1
    pos_weight: float = 1.0
    pos_scale: str = "step_mean"
    eps_scale: str = "step_mean"
    tol: float = DEFAULT_TOL
    max_iter: int = DEFAULT_MAX_ITER
    chunk: int = DEFAULT_CHUNK_CELLS

    def __post_init__(self) -> None:
        problems = []
        if self.name not in DISTANCES:
            problems.append(f"name must be one of {DISTANCES}, got {self.name!r}")
        if self.resample not in RESAMPLES:
            problems.append(f"resample must be one of {RESAMPLES}, got {self.resample!r}")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            problems.append(f"gamma must be >= 0 (0 = hard DTW), got {self.gamma}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            problems.append(f"eps must be > 0, got {self.eps}")
        if self.pos_scale not in POS_SCALES or self.eps_scale not in POS_SCALES:
            problems.append(f"pos_scale and eps_scale must be one of {POS_SCALES}")
        if self.pos_weight < 0 or self.tol <= 0 or self.max_iter < 1 or self.chunk < 1:
            problems.append("pos_weight must be >= 0, tol > 0, max_iter and chunk >= 1")
        if problems:
            raise ValueError("invalid distance: " + "; ".join(problems))

    @property
    def hard_dtw(self) -> bool:
        return self.name == "soft_dtw" and self.gamma == 0

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. 'euclidean (video resampled)', 'dtw (hard)'."""
        if self.name == "euclidean":
            return f"euclidean ({self.resample} resampled)"
        if self.name == "soft_dtw":
            return "dtw (hard)" if self.hard_dtw else f"soft_dtw gamma={self.gamma:g}"
        return f"wasserstein eps={self.eps:g} pos_weight={self.pos_weight:g}"

    def with_gamma(self, gamma: float | None) -> "DistanceSpec":
        """The same spec with soft-DTW's gamma replaced (None: unchanged)."""
        if gamma is None:
            return self
        if self.name != "soft_dtw":
            raise ValueError(f"a DTW gamma applies to soft_dtw models; this one uses {self.name}")
        return dataclasses.replace(self, gamma=float(gamma))

    # ------------------------------------------------------------------ all pairs

    def matrix(self, video, video_mask, audio, audio_mask, *, video_lengths=None, audio_lengths=None,
               precision: str = "fp32") -> torch.Tensor:
        """All pairs: video (Bv, T, c), masks (Bv, T) / (Ba, S), audio (Ba, S, c) -> (Bv, Ba).

        What training's loss and validation use, and retrieval's seq.
        video_lengths (Bv,) / audio_lengths (Ba,): valid lengths already on the host
        (list, ndarray or CPU tensor; trusted to match the masks): the interpolated
        Euclidean then makes no device->host sync. precision: 'fp32' or 'bf16' (the
        Euclidean's cross term; see :mod:`.euclidean`), fp32 only for the other distances.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if self.name == "euclidean":
            kw = dict(x_lengths=video_lengths, y_lengths=audio_lengths, precision=precision)
            fast = equal_length_euclidean(video, video_mask, audio, audio_mask, **kw)
            if fast is not None:
                return fast
            direction = "x2y" if resamples_video(self.resample) else "y2x"
            return interp_euclidean_matrix(video, video_mask, audio, audio_mask, direction, **kw)
        if precision != "fp32":
            raise ValueError(f"precision {precision!r} is for the interpolated Euclidean, not {self.name}")
        if self.name == "soft_dtw":
            if self.hard_dtw:
                return dtw_matrix(video, video_mask, audio, audio_mask, chunk=self.chunk)
            return soft_dtw_matrix(video, video_mask, audio, audio_mask, gamma=self.gamma, chunk=self.chunk)
        return wasserstein_matrix(
            video, video_mask, audio, audio_mask, eps=self.eps, pos_weight=self.pos_weight,
            pos_scale=self.pos_scale, tol=self.tol, max_iter=self.max_iter, chunk=self.chunk,
            eps_scale=self.eps_scale,
        )

    # ------------------------------------------------------------------ chosen pairs (retrieval)

    def _src_tgt(self, video, video_mask, audio, audio_mask):
        """(source, its mask, target, its mask) of the interpolated Euclidean."""
        (src, src_mask), (tgt, tgt_mask) = source_target(self.resample, (video, video_mask), (audio, audio_mask))
        return src, src_mask, tgt, tgt_mask

    def paired(self, video, video_mask, audio, audio_mask) -> torch.Tensor:
        """Matched pairs: video (P, T, c) x audio (P, S, c) -> (P,), d(video_p, audio_p).

        Interpolated Euclidean vectorised over pairs (each pair resampled to its own
        target length); the other distances fall back to one matrix call per pair.
        """
        if self.name == "euclidean":
            return paired_euclidean(*self._src_tgt(video, video_mask, audio, audio_mask))
        if video.shape[0] == 0:
            return video.new_zeros(0)
        return torch.stack([
            self.matrix(video[p : p + 1], video_mask[p : p + 1], audio[p : p + 1], audio_mask[p : p + 1])[0, 0]
            for p in range(video.shape[0])
        ])

    def rerank(self, q, q_mask, c, c_mask, query_is_video: bool) -> torch.Tensor:
        """Each query against its own candidates, pair by pair (any distance):
        q (n, Lq, C), q_mask (n, Lq), c (n, k, Lc, C), c_mask (n, k, Lc) -> (n, k)."""
        n, k = c.shape[:2]
        qr = q.repeat_interleave(k, dim=0)
        qmr = q_mask.repeat_interleave(k, dim=0)
        cf, cmf = c.reshape(n * k, *c.shape[2:]), c_mask.reshape(n * k, -1)
        if query_is_video:
            return self.paired(qr, qmr, cf, cmf).view(n, k)
        return self.paired(cf, cmf, qr, qmr).view(n, k)

    def sampled(self, q, q_mask, c, c_mask, rows, cols, query_is_video: bool) -> torch.Tensor:
        """Interpolated Euclidean of the chosen pairs (q[rows[p]], c[cols[p]]) -> (P,).

        q (Bq, Lq, C), c (Bc, Lc, C), rows / cols (P,) long, distinct pairs; see
        :func:`~scav.sequence.euclidean.sampled_euclidean` (one dot product per pair).
        """
        if self.name != "euclidean":
            raise ValueError(f"sampled distances are for the interpolated Euclidean, not {self.name}")
        query_is_source = query_is_video == resamples_video(self.resample)
        if query_is_source:
            return sampled_euclidean(q, q_mask, rows, c, c_mask, cols)
        return sampled_euclidean(c, c_mask, cols, q, q_mask, rows)
