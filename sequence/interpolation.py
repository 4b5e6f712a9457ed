"""Linear resampling of padded sequences to per-sequence target lengths.

The convention is ``F.interpolate(mode='linear', align_corners=False)`` applied to each
sequence's valid part alone (the zero padding is never interpolated).
"""

from __future__ import annotations

import torch

from .blockwise import valid_lengths


def _interp_weights(
    n: torch.Tensor, lengths: torch.Tensor, out_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices/weights of linear interpolation, align_corners=False convention.

    n (B,) source lengths, lengths (B,) target lengths, out_len = max target length.
    Output step k of sequence b reads src = (k + 0.5) * n_b / L_b - 0.5, clamped below at 0
    (as ``F.interpolate(mode='linear', align_corners=False)``), i0 = floor(src),
    i1 = min(i0 + 1, n_b - 1), w = src - i0. Positions are computed in float64 so the
    weights match PyTorch's own to rounding. Returns i0, i1 (B, out_len) long,
    w (B, out_len) float64, valid (B, out_len) bool (k < L_b).
    """
    k = torch.arange(out_len, device=n.device, dtype=torch.float64)[None, :]
    nf = n.to(torch.float64)[:, None]
    lf = lengths.to(torch.float64)[:, None]
    src = ((k + 0.5) * (nf / lf) - 0.5).clamp_min(0.0)
    i0 = src.floor().long()
    i0 = torch.minimum(i0, n[:, None] - 1)
    i1 = torch.minimum(i0 + 1, n[:, None] - 1)
    w = src - i0.to(torch.float64)
    valid = k < lf
    return i0, i1, w, valid


def interpolate_to_lengths(
    x: torch.Tensor, x_mask: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample each sequence's valid part to its own target length.

    x (B, N, C), x_mask (B, N), lengths (B,) long >= 1 ->
    (y (B, max(lengths), C), y_mask (B, max(lengths))); y is zero at padded steps.
    Sequence b's valid part (n_b = x_mask[b].sum() steps) is resampled exactly as
    ``F.interpolate(x[b, :n_b].T[None], size=lengths[b], mode='linear', align_corners=False)``
    would (the zero padding is never interpolated). Batched with a gather of the two
    neighbouring steps and a lerp.
    """
    n = valid_lengths(x_mask)
    lengths = lengths.to(device=x.device, dtype=torch.long)
    if lengths.shape != n.shape or (lengths.numel() and int(lengths.min()) < 1):
        raise ValueError("lengths must be (B,) with every entry >= 1")
    out_len = int(lengths.max()) if lengths.numel() else 0
    return _lerp(x, n, lengths, out_len)


def _lerp(x: torch.Tensor, n: torch.Tensor, lengths: torch.Tensor, out_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The resampling of :func:`interpolate_to_lengths` from checked n (B,) source and
    lengths (B,) target lengths (both long, on x's device)."""
    i0, i1, w, valid = _interp_weights(n, lengths, out_len)
    c = x.shape[-1]
    x0 = torch.gather(x, 1, i0[:, :, None].expand(-1, -1, c))
    x1 = torch.gather(x, 1, i1[:, :, None].expand(-1, -1, c))
    wt = w.to(x.dtype)[:, :, None]
    y = (x0 + wt * (x1 - x0)) * valid[:, :, None].to(x.dtype)
    return y, valid


def interpolate_to_length(x: torch.Tensor, x_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Resample every sequence's valid part to ``length`` steps.

    x (B, N, C), x_mask (B, N) -> (B, length, C). Same convention as
    :func:`interpolate_to_lengths` (``F.interpolate`` linear, align_corners=False, applied
    to each unpadded sequence).
    """
    lengths = torch.full((x.shape[0],), int(length), dtype=torch.long, device=x.device)
    y, _ = interpolate_to_lengths(x, x_mask, lengths)
    return y


def interpolate_trusted(x: torch.Tensor, n: torch.Tensor, length: int) -> torch.Tensor:
    """:func:`interpolate_to_length` from source lengths n (B,) long on x's device, without
    checking them: no device->host sync (callers hold the lengths on the host and built the
    masks from them). x (B, N, C) -> (B, length, C); identical values."""
    lengths = torch.full((x.shape[0],), int(length), dtype=torch.long, device=x.device)
    y, _ = _lerp(x, n.to(torch.long), lengths, int(length))
    return y


def resampled_or_cut(x: torch.Tensor, mask: torch.Tensor, length: int) -> torch.Tensor:
    """x's valid parts resampled to ``length`` steps: (B, N, C) -> (B, length, C).

    A view, no copy, when every sequence already has exactly ``length`` valid steps
    (the interpolation is then the identity).
    """
    if x.shape[1] >= length and bool(mask[:, :length].all()) and (x.shape[1] == length or not bool(mask[:, length:].any())):
        return x[:, :length]
    return interpolate_to_length(x, mask, length)
