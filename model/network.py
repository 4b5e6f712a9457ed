"""The SCAV model (paper §III-A, Fig. 2).

Per modality: MLP projection of the frozen features to ``c`` dims, then a
pre-LN Transformer encoder with a T5-style bucketed relative-position bias
(one table per encoder, shared by its layers), then a final LayerNorm.
Video: 8 blocks, MLP hidden 2048; audio: 2 blocks, MLP hidden 768 (defaults).

With ``objective.interp == 'pre'`` the resampled side is resampled on the raw
features, before its MLP: in training each video (resample='video') to its partner
audio's length; at retrieval to a length of its own (``forward(pre_lengths=...)``),
so that a clip's latents never depend on another clip.
The temperatures (CAV ``logit_scale``, SCAV ``log_lambda``) live here so they
are saved, averaged and restored with the weights; the losses are applied
outside the model (``scav.model.objective``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scav.sequence.interpolation import interpolate_to_lengths
from scav.sequence.pooling import masked_mean
from scav.sequence.spec import resamples_video
from .config import ModelConfig, ObjectiveConfig
from torch import nn


def relative_position_bucket(rel: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5 bidirectional bucketing of ``rel = key_pos - query_pos`` (any shape, int).

    Half the buckets per sign; within a half, exact buckets for |rel| below
    ``num_buckets // 4`` and log-spaced ones up to ``max_distance`` (beyond: last).
    """
    half = num_buckets // 2
    bucket = (rel > 0).long() * half
    n = rel.abs()
    max_exact = half // 2
    is_small = n < max_exact
    large = max_exact + (
        torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    large = large.clamp(max=half - 1)
    return bucket + torch.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """Learned per-head bias indexed by the relative-position bucket: (1, H, T, T)."""

    def __init__(self, heads: int, num_buckets: int, max_distance: int):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.table = nn.Embedding(num_buckets, heads)

    def forward(self, length: int) -> torch.Tensor:
        pos = torch.arange(length, device=self.table.weight.device)
        rel = pos[None, :] - pos[:, None]  # (T_q, T_k): key - query
        buckets = relative_position_bucket(rel, self.num_buckets, self.max_distance)
        return self.table(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, H, T, T)


class Block(nn.Module):
    """Pre-LN Transformer block; attention through ``scaled_dot_product_attention``."""

    def __init__(self, c: int, heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.ln2 = nn.LayerNorm(c)
        self.ff = nn.Sequential(
            nn.Linear(c, ff_mult * c), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_mult * c, c)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        """x (B, T, c); attn_bias (B, H, T, T) float, -inf on padded keys."""
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, C/H)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, C)))
        return x + self.drop(self.ff(self.ln2(x)))


class SequenceEncoder(nn.Module):
    """MLP projection + relative-position Transformer: (B, T, D) -> (B, T, c)."""

    def __init__(self, in_dim: int, hidden: int, layers: int, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, cfg.c)
        )
        self.rel_bias = RelativePositionBias(cfg.heads, cfg.rel_pos_buckets, cfg.rel_pos_max_distance)
        self.blocks = nn.ModuleList(Block(cfg.c, cfg.heads, cfg.ff_mult, cfg.dropout) for _ in range(layers))
        self.ln_out = nn.LayerNorm(cfg.c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), mask (B, T) bool True = real -> (B, T, c), zeros on padding."""
        h = self.mlp(x)
        T = h.shape[1]
        # A clip with no valid step would make every key -inf (NaN softmax): let
        # it attend to its (zero) padding instead; its output is zeroed below.
        key_ok = mask | ~mask.any(dim=1, keepdim=True)
        pad = torch.zeros(key_ok.shape, dtype=h.dtype, device=h.device).masked_fill(~key_ok, float("-inf"))
        bias = self.rel_bias(T).to(h.dtype) + pad[:, None, None, :]  # (B, H, T, T)
        for block in self.blocks:
            h = block(h, bias)
        return self.ln_out(h) * mask.unsqueeze(-1).to(h.dtype)


class SCAVModel(nn.Module):
    def __init__(self, cfg: ModelConfig, video_dim: int, audio_dim: int, objective: ObjectiveConfig):
        super().__init__()
        cfg.validate()
        objective.validate()
        self.cfg = cfg
        self.objective = objective
        self.video_dim = video_dim
        self.audio_dim = audio_dim
        self.video = SequenceEncoder(video_dim, cfg.video_mlp_hidden, cfg.video_layers, cfg)
        self.audio = SequenceEncoder(audio_dim, cfg.audio_mlp_hidden, cfg.audio_layers, cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / objective.tau_init)))
        self.log_lambda = nn.Parameter(torch.tensor(math.log(objective.lambda_init)))
        # A temperature the objective never uses stays fixed: DDP expects every
        # trainable parameter to receive a gradient each step.
        self.logit_scale.requires_grad_(objective.uses_cav)
        self.log_lambda.requires_grad_(objective.uses_scav)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @staticmethod
    def _resample(x: torch.Tensor, mask: torch.Tensor, target_lengths: torch.Tensor | None):
        if target_lengths is None:
            return x, mask
        return interpolate_to_lengths(x, mask, target_lengths)

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor, target_lengths: torch.Tensor | None = None):
        """video (B, T, Dv), mask (B, T) -> (seq (B, T', c), mask (B, T')).

        ``target_lengths`` (B,) resamples each raw sequence first (interp='pre').
        """
        video, video_mask = self._resample(video, video_mask, target_lengths)
        return self.video(video, video_mask), video_mask

    def encode_audio(self, audio: torch.Tensor, audio_mask: torch.Tensor, target_lengths: torch.Tensor | None = None):
        """audio (B, S, Da), mask (B, S) -> (seq (B, S', c), mask (B, S'))."""
        audio, audio_mask = self._resample(audio, audio_mask, target_lengths)
        return self.audio(audio, audio_mask), audio_mask

    def forward(self, video, video_mask, audio, audio_mask, pre_lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Clips: video (B, T, Dv), audio (B, S, Da) -> latent sequences and embeddings.

        With interp='pre' the resampled side (objective.resample) is resampled to
        ``pre_lengths`` (B,) when given (retrieval: each clip's own length, see
        ``scav.model.clip_lengths.pre_lengths``), else to its partner's valid length (training:
        the paired clip of the same row).
        """
        v_target = a_target = None
        if self.objective.interp == "pre":
            if resamples_video(self.objective.resample):
                v_target = audio_mask.sum(1) if pre_lengths is None else pre_lengths
            else:
                a_target = video_mask.sum(1) if pre_lengths is None else pre_lengths
        video_seq, video_mask = self.encode_video(video, video_mask, v_target)
        audio_seq, audio_mask = self.encode_audio(audio, audio_mask, a_target)
        return {
            "video_seq": video_seq,
            "video_mask": video_mask,
            "audio_seq": audio_seq,
            "audio_mask": audio_mask,
            "video_emb": masked_mean(video_seq, video_mask),
            "audio_emb": masked_mean(audio_seq, audio_mask),
            # Returned so the loss reaches them through forward's outputs (DDP).
            "logit_scale": self.logit_scale,
            "log_lambda": self.log_lambda,
        }
