"""The interpolated Euclidean with host lengths: no device->host sync, values and gradients
bit-identical to the code before (a verbatim copy below) and to the checked path."""

from __future__ import annotations

import pytest
import torch

from scav.sequence.blockwise import valid_lengths
from scav.sequence.euclidean import interp_euclidean_matrix, length_groups
from scav.sequence.interpolation import interpolate_to_length
from scav.sequence.spec import DistanceSpec


def old_x2y(x, x_mask, y, y_mask):
    """The all-pairs form as it was before host lengths (one sync per distinct length)."""
    y_len = valid_lengths(y_mask)
    b2 = y.shape[0]
    cols, order = [], []
    for length in torch.unique(y_len).tolist():
        idx = (y_len == length).nonzero(as_tuple=True)[0]
        p = interpolate_to_length(x, x_mask, length).flatten(1)
        q = y[idx, :length].flatten(1)
        d = (p * p).sum(1)[:, None] + (q * q).sum(1)[None, :] - 2.0 * (p @ q.T)
        cols.append(d.clamp_min(0.0) / length)
        order.append(idx)
    d = torch.cat(cols, dim=1)
    inverse = torch.empty(b2, dtype=torch.long, device=y.device)
    inverse[torch.cat(order)] = torch.arange(b2, device=y.device)
    return d[:, inverse]


def batch(n, lengths, c, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    lmax = max(lengths)
    mask = torch.arange(lmax)[None, :] < torch.tensor(lengths)[:, None]
    x = torch.randn(n, lmax, c, generator=g) * mask[..., None]
    return x.to(device), mask.to(device), torch.tensor(lengths)


CASES = {
    "mixed": ([7, 3, 9, 9, 1, 5], [4, 8, 4, 2, 8, 8, 6]),
    "uniform_y": ([7, 3, 9, 9, 1, 5], [6] * 7),
    "all_equal": ([6] * 6, [6] * 7),
    "x_at_target": ([4] * 6, [4, 4, 4, 4, 4, 4, 4]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("direction", ["x2y", "y2x"])
def test_host_lengths_bit_identical_values_and_gradients(case, direction):
    xl, yl = CASES[case]
    x, xm, xlen = batch(len(xl), xl, 5, 0)
    y, ym, ylen = batch(len(yl), yl, 5, 1)
    results = []
    for kind in ("old", "checked", "host_list", "host_tensor"):
        xx, yy = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        if kind == "old":
            d = old_x2y(xx, xm, yy, ym) if direction == "x2y" else old_x2y(yy, ym, xx, xm).T
        elif kind == "checked":
            d = interp_euclidean_matrix(xx, xm, yy, ym, direction)
        elif kind == "host_list":
            d = interp_euclidean_matrix(xx, xm, yy, ym, direction, x_lengths=xl, y_lengths=yl)
        else:
            d = interp_euclidean_matrix(xx, xm, yy, ym, direction, x_lengths=xlen, y_lengths=ylen.numpy())
        (d * torch.linspace(0.5, 2.0, d.numel()).view_as(d)).sum().backward()
        results.append((kind, d.detach(), xx.grad, yy.grad))
    _, d0, gx0, gy0 = results[0]
    for kind, d, gx, gy in results[1:]:
        assert torch.equal(d, d0), kind
        assert torch.equal(gx, gx0) and torch.equal(gy, gy0), kind


@pytest.mark.parametrize("resample", ["video", "audio"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_device_to_host_read_with_host_lengths(resample, precision):
    """Meta tensors hold no data: any read on the host (.tolist, bool(), torch.equal) raises,
    so getting a result proves the path never syncs."""
    spec = DistanceSpec("euclidean", resample=resample)
    xl, yl = [7, 5, 6, 7, 3], [9, 9, 2, 3, 9, 4]
    x = torch.empty(5, 7, 4, device="meta")
    y = torch.empty(6, 9, 4, device="meta")
    xm = torch.empty(5, 7, dtype=torch.bool, device="meta")
    ym = torch.empty(6, 9, dtype=torch.bool, device="meta")
    for v_len, a_len in ((xl, yl), ([7] * 5, [9] * 6), ([7] * 5, [7] * 6)):
        d = spec.matrix(x, xm, y, ym, video_lengths=v_len, audio_lengths=a_len, precision=precision)
        assert d.shape == (5, 6)
    with pytest.raises((NotImplementedError, RuntimeError)):
        spec.matrix(x, xm, y, ym)  # the checked path reads the masks: the test can see syncs


def test_length_groups_match_nonzero_grouping():
    _, mask, lengths = batch(9, [3, 1, 3, 5, 1, 1, 5, 2, 3], 2, 0)
    for host in (None, lengths, lengths.tolist()):
        groups = length_groups(mask, host)
        assert [length for length, _ in groups] == [1, 2, 3, 5]
        for length, idx in groups:
            assert idx.tolist() == (lengths == length).nonzero(as_tuple=True)[0].tolist()
    assert length_groups(mask[:2].clone().fill_(True), [2, 2]) == [(2, None)]
    with pytest.raises(ValueError):
        length_groups(mask, [1, 2])


@pytest.mark.gpu
def test_cuda_interp_euclidean_with_host_lengths_never_syncs():
    dev = torch.device("cuda")
    xl, yl = CASES["mixed"]
    x, xm, _ = batch(len(xl), xl, 8, 0, dev)
    y, ym, _ = batch(len(yl), yl, 8, 1, dev)
    spec = DistanceSpec("euclidean")
    want = spec.matrix(x, xm, y, ym)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = spec.matrix(x, xm, y, ym, video_lengths=xl, audio_lengths=yl)
        got_bf16 = spec.matrix(x, xm, y, ym, video_lengths=xl, audio_lengths=yl, precision="bf16")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got, want)
    torch.testing.assert_close(got_bf16, want, rtol=2e-2, atol=2e-2)
