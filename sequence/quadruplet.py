"""Quadruplet objective of "Looking similar, sounding different" (dubs paper §3, Eq. 1-3).

Each clip i of a batch gives a quadruplet (v_p, a_p, v_s, a_s): a primary and a secondary
instance (another temporal window and, when the clip has a dub, another audio language).
The cross-modal loss pairs the primary video with the secondary audio and vice versa
(Eq. 2); the within-modal losses pair the two instances of one modality (Eq. 3).

Two forms: :func:`cav_quadruplet_loss` (pooled embeddings, the paper's own) and
:func:`scav_quadruplet_loss` (sequence-distance matrices contrasted by SCAV's row/column
z-scored loss). As in :mod:`.losses`, every ``*_loss`` entry is a scalar the trainer sums
and the other entries are for logging. Single process only: no gathered negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import MAX_LOGIT_SCALE, scav_loss

__all__ = ["joint_nt_xent", "cav_quadruplet_loss", "scav_quadruplet_loss"]


def joint_nt_xent(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 1 averaged over the batch: one softmax per clip over its row AND its column.

    logits (B, B): row i = first modality's instance i, column j = second's instance j.
    l_i = -log( e^{s_ii} / (e^{s_ii} + sum_{j!=i} e^{s_ij} + sum_{j!=i} e^{s_ji}) ), the
    negatives of clip i being both (first_i, second_j) and (first_j, second_i). This is not
    CLIP's mean of a row and a column cross-entropy (each with its own softmax). The paper
    sums l_i over i; we average so that the loss scale does not depend on B.
    Returns a scalar.
    """
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be square (B, B), got {tuple(logits.shape)}")
    b = logits.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=logits.device)
    # the column's diagonal entry is already in the row: -inf drops it from the logsumexp
    column = logits.T.masked_fill(eye, float("-inf"))  # row i = column i of logits
    denom = torch.logsumexp(torch.cat([logits, column], dim=1), dim=1)  # (B,)
    return (denom - logits.diagonal()).mean()


def _check_weights(cross: bool, lambda_v: float, lambda_a: float) -> None:
    if lambda_v < 0 or lambda_a < 0:
        raise ValueError(f"lambda_v and lambda_a must be >= 0, got {lambda_v}, {lambda_a}")
    if not cross and lambda_v == 0 and lambda_a == 0:
        raise ValueError("cross=False with lambda_v = lambda_a = 0 leaves no loss to optimise")


def cav_quadruplet_loss(
    v_p: torch.Tensor,
    a_p: torch.Tensor,
    v_s: torch.Tensor,
    a_s: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    cross: bool = True,
    lambda_v: float = 0.0,
    lambda_a: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Dubs paper objective on pooled embeddings (Eq. 2, plus Eq. 3 when weighted).

    v_p, a_p, v_s, a_s (B, C): row i of each is clip i; L2-normalised here.
    logit_scale: scalar parameter, scale = min(exp(logit_scale), 100) = 1 / tau (as cav_loss).
    cross: optimise Eq. 2, "quad_loss" = (L(v_p, a_s) + L(v_s, a_p)) / 2 with L =
      :func:`joint_nt_xent`; False for the paper's audio-only variant (within-modal only).
    lambda_v / lambda_a > 0: add "within_video_loss" = lambda_v * L(v_p, v_s) and
      "within_audio_loss" = lambda_a * L(a_p, a_s).
    Returns also "within_video" / "within_audio" (unweighted, detached: the paper tracks them
    even when not optimised), "logits" (B, B) = scale * cos(v_p, a_s) and "logit_scale".
    """
    _check_weights(cross, lambda_v, lambda_a)
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    vp, ap, vs, as_ = (F.normalize(x, dim=-1) for x in (v_p, a_p, v_s, a_s))
    logits = scale * vp @ as_.T  # (B, B)
    out: dict[str, torch.Tensor] = {}
    if cross:
        out["quad_loss"] = 0.5 * (joint_nt_xent(logits) + joint_nt_xent(scale * vs @ ap.T))
    within_v = joint_nt_xent(scale * vp @ vs.T)
    within_a = joint_nt_xent(scale * ap @ as_.T)
    if lambda_v > 0:
        out["within_video_loss"] = lambda_v * within_v
    if lambda_a > 0:
        out["within_audio_loss"] = lambda_a * within_a
    out.update(within_video=within_v.detach(), within_audio=within_a.detach(), logits=logits,
               logit_scale=scale.detach())
    return out


def scav_quadruplet_loss(
    d_vp_as: torch.Tensor | None,
    d_vs_ap: torch.Tensor | None,
    log_lambda: torch.Tensor,
    normalize: bool = True,
    *,
    d_vp_vs: torch.Tensor | None = None,
    d_ap_as: torch.Tensor | None = None,
    lambda_v: float = 0.0,
    lambda_a: float = 0.0,
    cross: bool = True,
) -> dict[str, torch.Tensor]:
    """Dubs paper objective on sequence distances, each pair contrasted by :func:`scav_loss`.

    d_vp_as, d_vs_ap, d_vp_vs, d_ap_as (B, B): distance matrices from the caller, row i = the
    first named instance of clip i (d_vp_as[i, j] = dist(v_p of clip i, a_s of clip j)).
    log_lambda, normalize: as scav_loss (row/column z-scoring, temperature lambda).
    cross: "quad_loss" = (scav_loss(d_vp_as) + scav_loss(d_vs_ap)) / 2; with cross=False the
      two cross matrices may be None (not computed: the audio-only variant).
    lambda_v / lambda_a > 0: "within_video_loss" = lambda_v * scav_loss(d_vp_vs) (needs the
      matrix), "within_audio_loss" likewise with d_ap_as.
    Returns also "within_video" / "within_audio" (unweighted, detached) for each matrix
    given, "logits" (B, B) = scav_loss(d_vp_as)'s v->a logits (when d_vp_as is given; outside
    the graph when cross=False) and "lambda".
    """
    _check_weights(cross, lambda_v, lambda_a)
    if (lambda_v > 0 and d_vp_vs is None) or (lambda_a > 0 and d_ap_as is None):
        raise ValueError("a within-modal weight > 0 needs its distance matrix (d_vp_vs / d_ap_as)")
    if cross and (d_vp_as is None or d_vs_ap is None):
        raise ValueError("cross=True needs both cross-modal distance matrices (d_vp_as, d_vs_ap)")
    out: dict[str, torch.Tensor] = {}
    if cross:
        first = scav_loss(d_vp_as, log_lambda, normalize)
        out["quad_loss"] = 0.5 * (first["scav_loss"] + scav_loss(d_vs_ap, log_lambda, normalize)["scav_loss"])
        out["logits"] = first["logits"]
    elif d_vp_as is not None:
        with torch.no_grad():  # logits only for the trainer's batch accuracy
            out["logits"] = scav_loss(d_vp_as, log_lambda, normalize)["logits"]
    for key, d, weight in (("video", d_vp_vs, lambda_v), ("audio", d_ap_as, lambda_a)):
        if d is None:
            continue
        within = scav_loss(d, log_lambda, normalize)["scav_loss"]
        if weight > 0:
            out[f"within_{key}_loss"] = weight * within
        out[f"within_{key}"] = within.detach()
    # scav_loss's temperature: lambda = exp(log_lambda), at least 1 / MAX_LOGIT_SCALE
    out["lambda"] = (1.0 / torch.exp(-log_lambda).clamp(max=MAX_LOGIT_SCALE)).detach()
    return out
