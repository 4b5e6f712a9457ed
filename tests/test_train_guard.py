"""The training step without per-step host syncs: the device-side NaN guard, the fused
optimizer against the plain one, bf16 autocast, and the host reads only every N steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cache_factory import make_random_cache
from scav.core.cache import CacheWriter, ClipRecord, FeatureCache
from scav.core.loader import Batch
from scav.core.schema import AudioTrack, ClipInfo
from scav.model.checkpoint import read_checkpoint
from scav.train import ddp, feed, guard, loop
from scav.model.config import ModelConfig, ObjectiveConfig
from scav.train.config import TrainConfig
from scav.train.loop import TrainingDiverged, read_losses, run, setup, train_step
from scav.train.schedule import make_optimizer, make_scheduler

TINY = ModelConfig(c=16, video_layers=1, audio_layers=1, heads=2, video_mlp_hidden=24, audio_mlp_hidden=24, dropout=0.0)
CPU = torch.device("cpu")
FP32 = torch.autocast("cpu", enabled=False)


def _cfg(cache, out, **kw) -> TrainConfig:
    base = dict(cache=str(cache), out=str(out), val_clips=0, val_every=100, steps=100, batch_size=4, lr=3e-3,
                warmup_steps=1, log_every=5, model=TINY, objective=ObjectiveConfig(), device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _batches(n: int, b: int = 4, seed: int = 0, dim: int = 8) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lv, la = torch.randint(3, 9, (b,), generator=g), torch.randint(2, 6, (b,), generator=g)
        vm = torch.arange(8)[None] < lv[:, None]
        am = torch.arange(5)[None] < la[:, None]
        v = torch.randn(b, 8, dim, generator=g) * vm[..., None]
        a = torch.randn(b, 5, dim, generator=g) * am[..., None]
        out.append(Batch([f"c{i}" for i in range(b)], [""] * b, v, vm, a, am))
    return out


def _snapshot(t) -> tuple[dict, dict]:
    weights = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    opt = {k: {n: (x.clone() if torch.is_tensor(x) else x) for n, x in st.items()} for k, st in
           t.opt.state_dict()["state"].items()}
    return weights, opt


def _assert_same(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
    for k in a[1]:
        for n in a[1][k]:
            assert torch.equal(torch.as_tensor(a[1][k][n]), torch.as_tensor(b[1][k][n])), (k, n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_random_cache(tmp_path_factory.mktemp("c") / "c.zarr", {"train": 16}, video_dim=8, audio_dim=8)


@pytest.mark.parametrize("bad", ["features", "gradient"])
def test_a_nan_at_step_k_leaves_the_weights_of_step_k_minus_1(cache, tmp_path, bad):
    t = setup(_cfg(cache, tmp_path / "run"), CPU, ddp.DistInfo())
    batches = _batches(6)
    for i in range(3):
        train_step(t, (0, i, batches[i]), FP32)
    after_3 = _snapshot(t)
    if bad == "features":
        batches[3].video[0, 0, 0] = float("nan")  # a NaN feature: NaN loss
        train_step(t, (0, 3, batches[3]), FP32)
    else:  # a finite loss whose gradient is not: the guard checks the gradients too
        real = t.model.video.mlp[0].weight.register_hook(lambda g: g * float("inf"))
        train_step(t, (0, 3, batches[3]), FP32)
        real.remove()
    train_step(t, (0, 4, batches[4]), FP32)  # later good steps are skipped too: the run stops at the read
    _assert_same(after_3, _snapshot(t))
    assert t.state.step == 5
    what = "loss" if bad == "features" else "gradient"
    with pytest.raises(TrainingDiverged, match=rf"non-finite {what} at step 4: .*scav_loss.*lambda"):
        read_losses(t)


def test_fused_guarded_step_equals_the_plain_loop(cache, tmp_path):
    """The new step (no host read, fused AdamW, guard) gives the losses and weights of the
    plain loop it replaced (float(loss) every step, foreach AdamW)."""
    from scav.model.objective import compute_loss

    t = setup(_cfg(cache, tmp_path / "a", log_every=1), CPU, ddp.DistInfo())
    ref = setup(_cfg(cache, tmp_path / "b", log_every=1), CPU, ddp.DistInfo())
    opt = torch.optim.AdamW(ref.opt.param_groups, lr=ref.cfg.lr, betas=ref.cfg.betas, foreach=True)
    for g in opt.param_groups:
        g["fused"] = None
    sched = make_scheduler(opt, ref.cfg)
    for i, b in enumerate(_batches(8)):
        train_step(t, (0, i, b), FP32)
        new = read_losses(t)["loss"]
        out = ref.model(b.video, b.video_mask, b.audio, b.audio_mask)
        loss = compute_loss(out, ref.model, ref.cfg.objective)["loss"]
        old = float(loss.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        assert new == pytest.approx(old, rel=1e-5, abs=1e-6), i
    for (n, p), q in zip(t.model.named_parameters(), ref.model.parameters()):
        if n.endswith("qkv.bias"):
            # the key bias: its true gradient is 0 (softmax ignores a constant per query), so
            # Adam normalises rounding noise into steps of lr size; compare query and value parts
            c = p.shape[0] // 3
            p, q = torch.cat([p[:c], p[2 * c :]]), torch.cat([q[:c], q[2 * c :]])
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-5, msg=n)


def test_bf16_runs_and_matches_fp32(cache, tmp_path):
    """CPU bf16 autocast: the model in bf16, the loss and the temperatures in fp32; the
    loss within 2 % of fp32 on the same weights and batch (bf16 has 8 mantissa bits)."""
    b = _batches(1)[0]
    t = setup(_cfg(cache, tmp_path / "a", precision="bf16"), CPU, ddp.DistInfo())
    init = {k: v.clone() for k, v in t.model.state_dict().items()}
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    with bf16:
        out = t.model(b.video, b.video_mask, b.audio, b.audio_mask)
    assert out["video_seq"].dtype == torch.bfloat16  # autocast reached the model
    losses = train_step(t, (0, 0, b), bf16)
    assert losses["loss"].dtype == torch.float32 and losses["lambda"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    assert t.model.log_lambda.grad is not None and t.model.log_lambda.grad.dtype == torch.float32
    v_bf16 = read_losses(t)["loss"]
    t.model.load_state_dict(init)
    with torch.no_grad():
        out = t.model(b.video, b.video_mask, b.audio, b.audio_mask)
        from scav.model.objective import compute_loss

        v_fp32 = float(compute_loss(out, t.model, t.cfg.objective)["loss"])
    assert math.isfinite(v_bf16) and v_bf16 == pytest.approx(v_fp32, rel=2e-2)


def test_fp32_precision_runs_outside_autocast(cache, tmp_path):
    """precision='fp32' runs no op in bf16 (results as before this change)."""
    t = setup(_cfg(cache, tmp_path / "a"), CPU, ddp.DistInfo())
    seen = []
    t.model.video.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=t.cfg.precision == "bf16")
    train_step(t, (0, 0, _batches(1)[0]), autocast)
    assert seen == [torch.float32]


def test_host_reads_only_every_log_every_steps(cache, tmp_path, monkeypatch):
    """Between two due steps neither the loop nor the optimizer reads a tensor on the host:
    the guard reads once per log_every (or val_every) steps. (Reads inside the model and the
    distances are theirs; they are counted, not refused, here.)"""
    import sys

    reads, elsewhere = [], []
    real = guard.NonFiniteGuard.read
    monkeypatch.setattr(guard.NonFiniteGuard, "read", lambda self: reads.append(1) or real(self))
    inside = {"step": False}
    ours = (str(Path(loop.__file__).parent), str(Path(torch.optim.__file__).parent))

    def refuse(name):
        orig = getattr(torch.Tensor, name)

        def f(self, *a, **k):
            if inside["step"]:
                caller = sys._getframe(1).f_code.co_filename
                assert not caller.startswith(ours), f"host read ({name}) in {caller} inside a training step"
                elsewhere.append(caller)
            return orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, f)

    for name in ("__float__", "__int__", "__bool__", "item", "tolist"):
        refuse(name)
    step = loop.train_step

    def watched(t, batch, autocast):
        inside["step"] = True
        try:
            return step(t, batch, autocast)
        finally:
            inside["step"] = False

    monkeypatch.setattr(loop, "train_step", watched)
    summary = run(_cfg(cache, tmp_path / "r", steps=12, log_every=5, val_every=12))
    assert summary["steps"] == 12 and math.isfinite(summary["final_loss"])
    assert len(reads) == 3  # steps 5, 10, 12
    events = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == [5, 10, 12]


def _nan_cache(path: Path) -> Path:
    cache = make_random_cache(path, {"train": 48}, video_dim=8, audio_dim=8)
    bad = np.full((5, 8), np.nan, dtype=np.float16)
    meta = FeatureCache.open(cache).meta
    info = ClipInfo(clip_id="train-nan", split="train", fps=10.0, duration=0.5, n_video=5, tracks=[AudioTrack(0, None, 3)])
    CacheWriter.create_or_open(cache, meta).write_part([ClipRecord(info, bad, np.arange(5) / 10.0, [bad[:3]])])
    return cache


def test_deferred_check_names_the_same_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cache = _nan_cache(tmp_path / "c.zarr")
    names = {}
    for every, (log_every, val_every) in {"each": (1, 1), "deferred": (7, 4)}.items():
        out = tmp_path / every
        with pytest.raises(TrainingDiverged, match=r"non-finite loss at step \d+"):
            run(_cfg(cache, out, seed=3, steps=30, log_every=log_every, val_every=val_every))
        (diverged,) = [e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                       if e["event"] == "diverged"]
        names[every] = diverged
    step = names["each"]["step"]
    assert step > 8 and names["deferred"]["step"] == step  # seed 3: the NaN clip at step 11
    assert not math.isfinite(names["deferred"]["scav_loss"])
    assert names["deferred"]["lambda"] == pytest.approx(names["each"]["lambda"], rel=1e-6)
    # no checkpoint after the bad step: last.pt is the last one written before it
    last = read_checkpoint(tmp_path / "deferred" / "last.pt")
    assert last["step"] == (step - 1) // 4 * 4
    assert all(torch.isfinite(v).all() for v in last["model"].values())


def test_a_saved_fused_optimizer_state_loads_fused_and_still_skips_flagged_steps(cache, tmp_path):
    """last.pt's optimizer state goes back through plain ``load_state_dict``: the groups stay
    fused, the step counts are tensors on the parameters' device, and a flagged step (the
    guard's found_inf) leaves weights and moments untouched."""
    t = setup(_cfg(cache, tmp_path / "a"), CPU, ddp.DistInfo())
    b = _batches(1)[0]
    t.model(b.video, b.video_mask, b.audio, b.audio_mask)["video_emb"].sum().backward()
    t.opt.step()
    saved = t.opt.state_dict()
    opt = make_optimizer(t.model, t.cfg)
    opt.load_state_dict(saved)
    assert all(g["fused"] for g in opt.param_groups)
    steps = [st["step"] for st in opt.state.values()]
    assert steps and all(torch.is_tensor(s) and float(s) == 1.0 for s in steps)
    opt.found_inf = torch.ones(())
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    moments = {id(p): st["exp_avg"].clone() for p, st in opt.state.items()}
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
    assert all(torch.equal(moments[id(p)], st["exp_avg"]) for p, st in opt.state.items())
    assert all(float(st["step"]) == 1.0 for st in opt.state.values())


def test_cli_exits_3_naming_the_step_with_deferred_reads(tmp_path):
    from scav.train.cli import app
    from typer.testing import CliRunner

    cache = _nan_cache(tmp_path / "c.zarr")
    res = CliRunner().invoke(app, ["--cache", str(cache), "--out", str(tmp_path / "r"), "--steps", "30",
                                   "--batch-size", "4", "--val-clips", "0", "--val-every", "4", "--log-every", "7",
                                   "--warmup", "1", "--c", "16", "--video-layers", "1", "--audio-layers", "1",
                                   "--heads", "2", "--seed", "3", "--device", "cpu"])
    assert res.exit_code == 3, res.output
    assert "non-finite loss at step 11" in res.output and "last good checkpoint kept" in res.output


def test_feed_reading_ahead_gives_the_batches_and_crops_of_the_inline_feed(tmp_path):
    """The CUDA feed (next batch prepared in a helper thread) on CPU: same positions,
    clips and random crops as the inline feed, across an epoch boundary."""
    cache = make_random_cache(tmp_path / "c.zarr", {"train": 12}, video_dim=8, audio_dim=8, lengths=(1.0, 4.0))
    seen = {}
    for ahead in (False, True):
        t = setup(_cfg(cache, tmp_path / str(ahead), random_crop=1.5), CPU, ddp.DistInfo())
        feed_ = feed.BatchFeed(t, ahead=ahead)
        got = []
        for _ in range(7):  # 3 batches per epoch
            epoch, index, b = feed_.next()
            got.append((epoch, index, b.clip_ids, b.video.clone(), b.audio_mask.clone()))
            t.state.step += 1
            t.state.epoch, t.state.batch_in_epoch = epoch, index + 1
        feed_.close()
        seen[ahead] = got
    assert [g[:3] for g in seen[True]] == [g[:3] for g in seen[False]]
    assert [g[:2] for g in seen[True]] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    for a, b in zip(seen[True], seen[False]):
        assert torch.equal(a[3], b[3]) and torch.equal(a[4], b[4])
