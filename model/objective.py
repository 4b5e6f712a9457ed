"""Which distance and which losses a model is trained (and evaluated) with.

The maths lives in :mod:`scav.sequence` (distances, losses); this module only
picks from it according to an :class:`ObjectiveConfig` (:func:`distance_spec`), so
training, validation and retrieval all call the same functions.

With several processes (DDP) each rank scores its own rows against the
columns of all ranks (global negatives, labels offset by ``rank * n``):
``compute_loss(..., dist=DistInfo)`` gathers the other ranks' embeddings /
sequences with gradients.  The mean of the ranks' losses equals the loss of
one process on the concatenated batch, and so do the DDP-averaged gradients.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from scav.sequence import losses
from scav.sequence.spec import DistanceSpec
from .config import ObjectiveConfig


@lru_cache(maxsize=32)
def distance_spec(obj_cfg: ObjectiveConfig) -> DistanceSpec:
    """The sequence distance of an objective: the one place a config becomes a DistanceSpec.

    CAV models have no trained distance: they are ranked by the interpolated Euclidean
    with the video resampled (paper Table I note). ``wasserstein_scale`` sets both the
    position cost's and eps's scale; the position weight and Sinkhorn tolerance are the
    DistanceSpec defaults (not part of the objective).
    """
    if not obj_cfg.uses_scav:
        return DistanceSpec("euclidean", resample="video")
    scale = obj_cfg.wasserstein_scale
    return DistanceSpec(obj_cfg.distance, resample=obj_cfg.resample, gamma=obj_cfg.gamma, eps=obj_cfg.eps,
                        pos_scale=scale, eps_scale=scale)


def sequence_distance(
    obj_cfg: ObjectiveConfig,
    video_seq: torch.Tensor,
    video_mask: torch.Tensor,
    audio_seq: torch.Tensor,
    audio_mask: torch.Tensor,
) -> torch.Tensor:
    """All-pairs sequence distance: video (Bv, T, c) x audio (Ba, S, c) -> (Bv, Ba).

    ``distance_spec(obj_cfg).matrix``. With interp='pre' the paired sequences already have
    equal lengths (the interpolation is then the identity on the diagonal) and unequal
    pairs are still interpolated.
    """
    return distance_spec(obj_cfg).matrix(video_seq, video_mask, audio_seq, audio_mask)


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
    from .gather import gather_features, gather_sequences

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


def _gathered(out: dict, dist) -> dict:
    """The whole (all-ranks) batch of a model output, with gradients (:mod:`.gather`)."""
    if dist is None or dist.world_size <= 1:
        return out
    from .gather import gather_features, gather_sequences

    g = dict(out)
    g["video_emb"], g["audio_emb"] = gather_features(out["video_emb"]), gather_features(out["audio_emb"])
    g["video_seq"], g["video_mask"] = gather_sequences(out["video_seq"], out["video_mask"])
    g["audio_seq"], g["audio_mask"] = gather_sequences(out["audio_seq"], out["audio_mask"])
    return g


def compute_quad_loss(out_p: dict, out_s: dict, model, obj_cfg: ObjectiveConfig, dubs_cfg,
                      dist=None) -> dict[str, torch.Tensor]:
    """Named losses of a quadruplet batch (dubs paper Eq. 1-3) plus their sum in ``'loss'``.

    ``out_p`` / ``out_s``: the model's outputs on the primary (v_p, a_p) and secondary
    (v_s, a_s) instances of the same clips. CAV: pooled embeddings in Eq. 1's joint softmax;
    SCAV: the same pairs through the trained sequence distance and the z-scored loss
    (``scav.sequence.quadruplet``). cav+scav sums both (keys prefixed ``cav_`` / ``scav_``).

    With DDP every rank computes the loss of the whole gathered batch: the all-gather's
    backward sums the ranks' gradients for each slice (world_size x the full-batch
    gradient) and DDP's average divides by world_size again, so the gradients equal one
    process's on the concatenated batch. (The local-rows form of ``compute_loss`` does not
    apply: Eq. 1's denominator holds a row and a column of the matrix.)

    The within-modal terms are returned unweighted (``*_within_video`` / ``_audio``) in both
    forms, as the paper tracks them; for SCAV, a term of weight 0 is computed without gradient.
    """
    from scav.sequence import quadruplet

    p, s = _gathered(out_p, dist), _gathered(out_s, dist)
    logit_scale = out_p.get("logit_scale", model.logit_scale)
    log_lambda = out_p.get("log_lambda", model.log_lambda)
    weights = dict(cross=dubs_cfg.cross, lambda_v=dubs_cfg.lambda_v, lambda_a=dubs_cfg.lambda_a)
    parts: dict[str, torch.Tensor] = {}
    if obj_cfg.uses_cav:
        got = quadruplet.cav_quadruplet_loss(p["video_emb"], p["audio_emb"], s["video_emb"], s["audio_emb"],
                                             logit_scale, **weights)
        parts.update({f"cav_{k}": v for k, v in got.items() if v.numel() == 1})
    if obj_cfg.uses_scav:
        def d(a: dict, ma: str, b: dict, mb: str) -> torch.Tensor:
            return sequence_distance(obj_cfg, a[f"{ma}_seq"], a[f"{ma}_mask"], b[f"{mb}_seq"], b[f"{mb}_mask"])

        within = {}
        for key, m, weight in (("d_vp_vs", "video", dubs_cfg.lambda_v), ("d_ap_as", "audio", dubs_cfg.lambda_a)):
            with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):  # weight 0: tracked, not trained
                within[key] = d(p, m, s, m)
        cross = (d(p, "video", s, "audio"), d(s, "video", p, "audio")) if dubs_cfg.cross else (None, None)
        got = quadruplet.scav_quadruplet_loss(*cross, log_lambda, obj_cfg.normalize, **within, **weights)
        parts.update({f"scav_{k}": v for k, v in got.items() if v.numel() == 1})
    out = _sum_losses(parts)
    if not dubs_cfg.cross and dubs_cfg.lambda_v == 0:
        # audio-only: no term reaches the video encoder. A zero-weighted term keeps it in the
        # graph, so DDP (which expects a gradient for every parameter) and one process agree.
        out["loss"] = out["loss"] + 0.0 * p["video_emb"].sum()
    return out
