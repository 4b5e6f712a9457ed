"""Contrastive losses of SCAV (pure torch): aggregation-based CAV and sequence-based SCAV.

Both return a dict; every ``*_loss`` entry is a scalar to be summed by the training task,
the other entries (logits, temperatures) are for logging/metrics.

Distributed training ("local loss with global negatives", as open_clip): a rank holding
``n`` local clips scores its own rows against the columns of the whole (all-gathered) batch
and the target of local row ``k`` is the global column ``offset + k`` with
``offset = rank * n``. With ``offset=0`` and square inputs this is the ordinary
single-process loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cav_loss", "scav_loss", "zscore", "MAX_LOGIT_SCALE"]

MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(logit_scale) at 100, i.e. temperature >= 0.01


def _targets(n: int, offset: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device) + offset


def cav_loss(
    video_emb: torch.Tensor,
    audio_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    all_video_emb: torch.Tensor | None = None,
    all_audio_emb: torch.Tensor | None = None,
    offset: int = 0,
) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE on cosine similarities of mean-pooled embeddings (paper eq. L^agg).

    video_emb (n, C), audio_emb (n, C) (local clips, row k of both is one clip);
    logit_scale: scalar parameter, scale = min(exp(logit_scale), 100) = 1 / tau
    (the model owns it and initialises tau = 0.07).
    all_video_emb / all_audio_emb (N, C): the gathered global batch for DDP (default: the
    local ones); targets are ``offset + arange(n)``.
    Returns {"cav_loss": scalar, "logits": (n, N) v->a logits, "logits_a2v": (n, N),
    "logit_scale": scalar scale used}.
    """
    all_video_emb = video_emb if all_video_emb is None else all_video_emb
    all_audio_emb = audio_emb if all_audio_emb is None else all_audio_emb
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    v = F.normalize(video_emb, dim=-1)
    a = F.normalize(audio_emb, dim=-1)
    logits_v2a = scale * v @ F.normalize(all_audio_emb, dim=-1).T  # (n, N)
    logits_a2v = scale * a @ F.normalize(all_video_emb, dim=-1).T  # (n, N)
    target = _targets(v.shape[0], offset, v.device)
    loss = 0.5 * (F.cross_entropy(logits_v2a, target) + F.cross_entropy(logits_a2v, target))
    return {"cav_loss": loss, "logits": logits_v2a, "logits_a2v": logits_a2v, "logit_scale": scale.detach()}


def zscore(d: torch.Tensor, dim: int, eps: float = 1e-6) -> torch.Tensor:
    """(d - mean) / sqrt(var + eps) along ``dim`` (population variance, unbiased=False).

    eps inside the square root keeps the gradient finite for a constant row/column.
    """
    mean = d.mean(dim=dim, keepdim=True)
    var = d.var(dim=dim, unbiased=False, keepdim=True)
    return (d - mean) / torch.sqrt(var + eps)


def scav_loss(
    dist: torch.Tensor,
    log_lambda: torch.Tensor,
    normalize: bool = True,
    *,
    dist_a2v: torch.Tensor | None = None,
    offset: int = 0,
    eps: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """Sequential contrastive loss (paper eq. L^seq) from a distance matrix.

    dist (n, N): rows = local videos, columns = all audios; d_ij = dist(video_i, audio_j).
    v->a: each row is z-scored (row-wise) and the logits are -D_bar / lambda; target of row k
    is column offset + k. a->v: ``dist_a2v`` (N, n), rows = all videos, columns = local
    audios (default: ``dist`` itself, square case), z-scored column-wise; logits of audio k
    are column k of -D_bar / lambda over all videos, target offset + k. The two
    normalisations differ, so D_bar is not symmetric (as in the paper).
    log_lambda: scalar parameter, lambda = exp(log_lambda) (paper init lambda = 1; Table IV
    ablation 0.07), clamped at >= 0.01 like CLIP's scale. ``normalize=False`` skips the
    z-scoring (Table IV ablation "w/o distance matrix norm").
    Returns {"scav_loss": scalar, "logits": (n, N) v->a logits, "logits_a2v": (n, N) a->v
    logits (audio rows), "lambda": scalar}.
    """
    dist_a2v = dist if dist_a2v is None else dist_a2v
    inv_lambda = torch.exp(-log_lambda).clamp(max=MAX_LOGIT_SCALE)
    d_v2a = zscore(dist, dim=1, eps=eps) if normalize else dist
    d_a2v = zscore(dist_a2v, dim=0, eps=eps) if normalize else dist_a2v
    logits_v2a = -d_v2a * inv_lambda  # (n, N)
    logits_a2v = (-d_a2v * inv_lambda).T  # (n, N): audio k against all videos
    target = _targets(dist.shape[0], offset, dist.device)
    loss = 0.5 * (F.cross_entropy(logits_v2a, target) + F.cross_entropy(logits_a2v, target))
    return {
        "scav_loss": loss,
        "logits": logits_v2a,
        "logits_a2v": logits_a2v,
        "lambda": (1.0 / inv_lambda).detach(),
    }
