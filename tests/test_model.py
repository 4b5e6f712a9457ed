"""SCAV model: shapes, masks, padding invariance, relative positions, attention, size."""

from __future__ import annotations

import math

import pytest
import torch
from scav.model.network import (
    Block,
    RelativePositionBias,
    SCAVModel,
    relative_position_bucket,
)
from scav.sequence.distances import interpolate_to_lengths
from scav.model.config import ModelConfig, ObjectiveConfig

TINY = ModelConfig(c=32, video_layers=2, audio_layers=1, heads=4, video_mlp_hidden=48, audio_mlp_hidden=40, dropout=0.1,
                   rel_pos_buckets=8, rel_pos_max_distance=16)


def _batch(lengths, dim, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), max(lengths), dim)
    m = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, dim, generator=g)
        m[i, :n] = True
    return x, m


@pytest.mark.parametrize("interp,resample", [("post", "video"), ("pre", "video"), ("pre", "audio")])
def test_padding_invariance_and_shapes(interp, resample):
    torch.manual_seed(0)
    model = SCAVModel(TINY, 12, 20, ObjectiveConfig(interp=interp, resample=resample)).eval()
    v, vm = _batch([9, 4, 7], 12, 1)
    a, am = _batch([3, 5, 2], 20, 2)
    with torch.no_grad():
        out = model(v, vm, a, am)
        assert out["video_emb"].shape == (3, 32) and out["audio_emb"].shape == (3, 32)
        if interp == "pre" and resample == "video":
            assert torch.equal(out["video_mask"].sum(1), am.sum(1))  # video resampled to its audio's length
        if interp == "pre" and resample == "audio":
            assert torch.equal(out["audio_mask"].sum(1), vm.sum(1))
        for key in ("video", "audio"):
            seq, mask = out[f"{key}_seq"], out[f"{key}_mask"]
            assert seq.shape[:2] == mask.shape and seq.shape[2] == 32
            assert torch.all(seq[~mask] == 0)
        for i in range(3):
            nv, na = int(vm[i].sum()), int(am[i].sum())
            alone = model(v[i : i + 1, :nv], vm[i : i + 1, :nv], a[i : i + 1, :na], am[i : i + 1, :na])
            for key in ("video", "audio"):
                n = int(out[f"{key}_mask"][i].sum())
                torch.testing.assert_close(out[f"{key}_seq"][i, :n], alone[f"{key}_seq"][0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(out[f"{key}_emb"][i], alone[f"{key}_emb"][0], atol=1e-5, rtol=1e-5)
                # embedding = mean of the valid steps
                torch.testing.assert_close(out[f"{key}_emb"][i], alone[f"{key}_seq"][0].mean(0), atol=1e-5, rtol=1e-5)


def test_pre_interpolation_happens_before_the_encoder():
    torch.manual_seed(0)
    model = SCAVModel(TINY, 12, 20, ObjectiveConfig(interp="pre", resample="video")).eval()
    v, vm = _batch([9, 4], 12, 3)
    target = torch.tensor([3, 6])
    with torch.no_grad():
        seq, mask = model.encode_video(v, vm, target)
        rv, rm = interpolate_to_lengths(v, vm, target)
        ref = model.video(rv, rm)
    assert torch.equal(mask, rm)
    torch.testing.assert_close(seq, ref)


@pytest.mark.parametrize("resample", ["video", "audio"])
def test_pre_lengths_replace_the_partner_length(resample):
    """Retrieval's forward(pre_lengths=...): the resampled side takes the given lengths, so
    its latents do not change when the partner clip's length changes."""
    torch.manual_seed(0)
    model = SCAVModel(TINY, 12, 20, ObjectiveConfig(interp="pre", resample=resample)).eval()
    v, vm = _batch([9, 4], 12, 5)
    a, am = _batch([3, 6], 20, 6)
    own = torch.tensor([5, 8])
    side = resample
    with torch.no_grad():
        out = model(v, vm, a, am, pre_lengths=own)
        if side == "video":  # other partners, of other lengths
            out2 = model(v, vm, *_batch([7, 2], 20, 7), pre_lengths=own)
            ref, _ = model.encode_video(v, vm, own)
        else:
            out2 = model(*_batch([2, 11], 12, 8), a, am, pre_lengths=own)
            ref, _ = model.encode_audio(a, am, own)
    assert torch.equal(out[f"{side}_mask"].sum(1), own)
    torch.testing.assert_close(out[f"{side}_seq"], ref)
    torch.testing.assert_close(out2[f"{side}_seq"], out[f"{side}_seq"])


def _t5_bucket_naive(rel: int, num_buckets: int, max_distance: int) -> int:
    """Scalar transcription of T5's _relative_position_bucket (bidirectional)."""
    n = -rel
    half = num_buckets // 2
    ret = half if n < 0 else 0
    n = abs(n)
    max_exact = half // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (half - max_exact))
    return ret + min(val, half - 1)


def test_relative_position_bucket_matches_t5_and_is_shift_equivariant():
    rel = torch.arange(-300, 301)
    got = relative_position_bucket(rel, 32, 128)
    want = torch.tensor([_t5_bucket_naive(int(r), 32, 128) for r in rel])
    assert torch.equal(got, want)
    assert got.min() == 0 and got.max() == 31
    bias = RelativePositionBias(heads=3, num_buckets=8, max_distance=16)
    torch.nn.init.normal_(bias.table.weight)
    b = bias(20)[0]  # (H, T, T)
    assert torch.equal(b[:, 1:, 1:], b[:, :-1, :-1])  # depends on key - query only
    assert not torch.equal(b[:, 0, 1], b[:, 1, 0])  # direction matters


def test_block_attention_matches_naive_softmax():
    torch.manual_seed(0)
    blk = Block(c=16, heads=4, ff_mult=2, dropout=0.0).eval()
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    rel = torch.randn(1, 4, 5, 5)
    bias = rel + torch.zeros(2, 1, 1, 5).masked_fill(~mask[:, None, None, :], float("-inf"))
    got = blk(x, bias)
    h = blk.ln1(x)
    q, k, v = blk.qkv(h).view(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    att = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(4) + bias
    a = torch.einsum("bhqk,bhkd->bhqd", att.softmax(-1), v).transpose(1, 2).reshape(2, 5, 16)
    y = x + blk.proj(a)
    y = y + blk.ff(blk.ln2(y))
    torch.testing.assert_close(got, y, atol=1e-5, rtol=1e-5)


def _expected_params(cfg: ModelConfig, dv: int, da: int, scav: bool = True) -> int:
    """Independent count from the layer formulas."""
    lin = lambda i, o: i * o + o  # noqa: E731
    c = cfg.c
    block = 2 * (2 * c) + lin(c, 3 * c) + lin(c, c) + lin(c, cfg.ff_mult * c) + lin(cfg.ff_mult * c, c)
    enc = lambda d, hid, layers: lin(d, hid) + lin(hid, c) + cfg.rel_pos_buckets * cfg.heads + layers * block + 2 * c  # noqa: E731
    return enc(dv, cfg.video_mlp_hidden, cfg.video_layers) + enc(da, cfg.audio_mlp_hidden, cfg.audio_layers) + 1


def test_parameter_count_at_paper_sizes():
    model = SCAVModel(ModelConfig(), 768, 6144, ObjectiveConfig())
    n = model.num_trainable_parameters()
    assert n == _expected_params(ModelConfig(), 768, 6144)
    assert 36e6 < n < 41e6, n  # paper: "38 M"
    assert n == sum(p.numel() for p in model.parameters()) - 1  # the unused CAV temperature is frozen


def test_temperatures_initialised_from_objective():
    m = SCAVModel(TINY, 4, 4, ObjectiveConfig(kind="cav+scav", lambda_init=0.07, tau_init=0.07))
    assert m.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert m.log_lambda.item() == pytest.approx(math.log(0.07))
    assert m.logit_scale.requires_grad and m.log_lambda.requires_grad
    cav = SCAVModel(TINY, 4, 4, ObjectiveConfig(kind="cav", interp="post"))
    assert cav.logit_scale.requires_grad and not cav.log_lambda.requires_grad


def test_empty_clip_gives_no_nan():
    torch.manual_seed(0)
    model = SCAVModel(TINY, 12, 20, ObjectiveConfig(interp="post")).eval()
    v, vm = _batch([3, 2], 12, 1)
    vm[1] = False
    seq = model.video(v, vm)
    assert torch.isfinite(seq).all() and torch.all(seq[1] == 0)
