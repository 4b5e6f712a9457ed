"""Which distance and which losses a model is trained (and evaluated) with.

The maths lives in the pure modules ``distances`` and ``losses``; this module
only picks from them according to an :class:`ObjectiveConfig`, so training,
validation and retrieval all call the same functions.

With several processes (DDP) each rank scores its own rows against the
columns of all ranks (global negatives, labels offset by ``rank * n``):
``compute_loss(..., dist=DistInfo)`` gathers the other ranks' embeddings /
sequences with gradients.  The mean of the ranks' losses equals the loss of
one process on the concatenated batch, and so do the DDP-averaged gradients.
"""

from __future__ import annotations

import torch

from scav.sequence import distances, losses
from .config import ObjectiveConfig


def sequence_distance(
    obj_cfg: ObjectiveConfig,
    video_seq: torch.Tensor,
    video_mask: torch.Tensor,
    audio_seq: torch.Tensor,
    audio_mask: torch.Tensor,
) -> torch.Tensor:
    """All-pairs sequence distance: video (Bv, T, c) x audio (Ba, S, c) -> (Bv, Ba).

    The objective's distance; v2a interpolates video to the audio length
    ('x2y'), a2v the reverse.  CAV models have no trained distance: they use the
    interpolated Euclidean v2a (paper Table I note).  With interp='pre' the
    paired sequences already have equal lengths (the interpolation is then the
    identity on the diagonal) and unequal pairs are still interpolated.
    """
    if not obj_cfg.uses_scav:
        return distances.interp_euclidean_matrix(video_seq, video_mask, audio_seq, audio_mask, direction="x2y")
    if obj_cfg.distance == "euclidean":
        kw = {"direction": "x2y" if obj_cfg.resample == "video" else "y2x"}
    elif obj_cfg.distance == "soft_dtw":
        kw = {"gamma": obj_cfg.gamma}
    else:
        kw = {"eps": obj_cfg.eps}
    return distances.distance_matrix(obj_cfg.distance, video_seq, video_mask, audio_seq, audio_mask, **kw)


def _sum_losses(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(parts)
    out["loss"] = sum(v for k, v in parts.items() if k.endswith("_loss"))
    return out


def compute_loss(model_out: dict, model, obj_cfg: ObjectiveConfig, dist=None) -> dict[str, torch.Tensor]:
    """Named losses of one batch plus their sum in ``'loss'``.

    model_out: ``SCAVModel.forward`` output; ``model``: the (unwrapped) model, for
    its temperatures; ``dist``: a ``ddp.DistInfo`` with world_size > 1 to use
    global negatives, else None.
    """
    if dist is not None and dist.world_size > 1:
        return _compute_loss_global(model_out, model, obj_cfg, dist)
    logit_scale = model_out.get("logit_scale", model.logit_scale)
    log_lambda = model_out.get("log_lambda", model.log_lambda)
    parts: dict[str, torch.Tensor] = {}
    if obj_cfg.uses_cav:
        parts.update(losses.cav_loss(model_out["video_emb"], model_out["audio_emb"], logit_scale))
    if obj_cfg.uses_scav:
        d = sequence_distance(
            obj_cfg, model_out["video_seq"], model_out["video_mask"], model_out["audio_seq"], model_out["audio_mask"]
        )
        parts.update(losses.scav_loss(d, log_lambda, normalize=obj_cfg.normalize))
    return _sum_losses(parts)


def _compute_loss_global(model_out: dict, model, obj_cfg: ObjectiveConfig, dist) -> dict[str, torch.Tensor]:
    """Local rows against gathered columns (see module docstring)."""
    from .ddp import gather_features, gather_sequences

    offset = dist.rank * model_out["video_emb"].shape[0]
    logit_scale = model_out.get("logit_scale", model.logit_scale)
    log_lambda = model_out.get("log_lambda", model.log_lambda)
    parts: dict[str, torch.Tensor] = {}
    if obj_cfg.uses_cav:
        v, a = model_out["video_emb"], model_out["audio_emb"]
        parts.update(losses.cav_loss(
            v, a, logit_scale, all_video_emb=gather_features(v), all_audio_emb=gather_features(a), offset=offset
        ))
    if obj_cfg.uses_scav:
        vs, vm = model_out["video_seq"], model_out["video_mask"]
        as_, am = model_out["audio_seq"], model_out["audio_mask"]
        vs_all, vm_all = gather_sequences(vs, vm)
        as_all, am_all = gather_sequences(as_, am)
        d_rows = sequence_distance(obj_cfg, vs, vm, as_all, am_all)  # (n, N): my videos vs all audio
        d_cols = sequence_distance(obj_cfg, vs_all, vm_all, as_, am)  # (N, n): all videos vs my audio
        parts.update(losses.scav_loss(d_rows, log_lambda, obj_cfg.normalize, dist_a2v=d_cols, offset=offset))
    return _sum_losses(parts)
