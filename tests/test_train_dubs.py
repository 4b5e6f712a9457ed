"""Dub-augmented training wired end to end: quadruplet batches, one forward for both
instances, the loss under DDP, exact resume, and every variant of the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scav.core.cache import CacheWriter, ClipRecord, new_meta
from scav.core.loader import Batch
from scav.core.schema import AudioTrack, CacheLayout, ClipInfo, EncoderInfo
from scav.model.network import SCAVModel
from scav.model.objective import compute_loss, compute_quad_loss
from scav.train import ddp, feed, loop
from scav.model.config import ModelConfig, ObjectiveConfig
from scav.train.config import DubsConfig, TrainConfig
from scav.train.ddp import DistInfo, cleanup

DV, DA = 6, 5
TINY = ModelConfig(c=16, video_layers=1, audio_layers=1, heads=2, video_mlp_hidden=24, audio_mlp_hidden=24, dropout=0.0)
LANGS = ("eng", "spa", "fra")


def _record(i: int, split: str, rng, rate: float = 6.25) -> ClipRecord:
    """A clip of 2-3 s at 10 fps with audio (``rate`` steps/s) = video resampled through a fixed
    map; dubs add their own 'speech' (a track-specific offset pattern); every 4th clip has no dub."""
    t = 20 + i % 11
    s = int(round(t / 10 * rate))
    video = rng.standard_normal((t, DV))
    base = np.stack([np.interp(np.linspace(0, t - 1, s), np.arange(t), video[:, d]) for d in range(DA)], 1)
    langs = LANGS[:1] if i % 4 == 3 else LANGS
    tracks, audio = [], []
    for j, lang in enumerate(langs):
        tracks.append(AudioTrack(j, lang, s, original=(j == 0)))
        audio.append((base + 0.5 * rng.standard_normal((s, DA)) * (j > 0)).astype(np.float16))
    info = ClipInfo(f"{split}-{i:03d}", split, source=f"src{i % 5}", n_video=t, fps=10.0, duration=t / 10.0,
                    tracks=tracks)
    return ClipRecord(info, video.astype(np.float16), np.arange(t) / 10.0, audio)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("dubs") / "c.zarr"
    rng = np.random.default_rng(0)
    meta = new_meta(EncoderInfo("pixels", DV, stand_in=True), EncoderInfo("fbank", DA, stand_in=True, steps_per_second=6.25),
                    layout=CacheLayout(chunk_rows=8))
    with CacheWriter.create_or_open(path, meta) as w:
        w.write_part([_record(i, "train", rng) for i in range(36)])
    return path


def _cfg(cache, out, variant="multilingual", **kw):
    dubs = kw.pop("dubs", {})
    return TrainConfig(cache=str(cache), out=str(out), val_clips=4, val_every=4, steps=kw.pop("steps", 8),
                       batch_size=8, lr=2e-3, warmup_steps=2, log_every=1, model=TINY,
                       objective=kw.pop("objective", ObjectiveConfig(kind="scav", interp="post", resample="audio")),
                       dubs=DubsConfig(variant=variant, window=dubs.pop("window", 1.5), **dubs), **kw)


def _events(out) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


# -- one forward for both instances ---------------------------------------------------------


def _batch(g, n, t, s) -> Batch:
    lv, la = torch.randint(2, t + 1, (n,), generator=g), torch.randint(2, s + 1, (n,), generator=g)
    vm, am = torch.arange(t)[None] < lv[:, None], torch.arange(s)[None] < la[:, None]
    v, a = torch.randn(n, t, DV, generator=g) * vm[..., None], torch.randn(n, s, DA, generator=g) * am[..., None]
    return Batch([str(i) for i in range(n)], ["x"] * n, v, vm, a, am)


@pytest.mark.parametrize("interp", ["pre", "post"])
def test_forward_pair_equals_two_separate_forwards(interp):
    g = torch.Generator().manual_seed(3)
    obj = ObjectiveConfig(kind="scav", interp=interp, resample="video")
    torch.manual_seed(0)
    model = SCAVModel(TINY, DV, DA, obj).eval()
    p, s = _batch(g, 4, 7, 5), _batch(g, 4, 11, 3)  # different padded lengths
    out_p, out_s = loop.forward_pair(model, p, s)
    for got, b in ((out_p, p), (out_s, s)):
        want = model(b.video, b.video_mask, b.audio, b.audio_mask)
        for m in ("video", "audio"):
            mask = want[f"{m}_mask"]
            n_steps = mask.shape[1]
            assert torch.equal(got[f"{m}_mask"][:, :n_steps], mask) and not got[f"{m}_mask"][:, n_steps:].any()
            torch.testing.assert_close(got[f"{m}_seq"][:, :n_steps][mask], want[f"{m}_seq"][mask], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got[f"{m}_emb"], want[f"{m}_emb"], atol=1e-5, rtol=1e-5)


def test_identical_instances_give_the_pair_loss():
    """With v_s = v_p and a_s = a_p, the SCAV quadruplet cross term is the pair objective's loss:
    the quadruplet path scores the same pairs through the same distance and z-scoring."""
    g = torch.Generator().manual_seed(5)
    obj = ObjectiveConfig(kind="scav", interp="post", resample="audio")
    torch.manual_seed(0)
    model = SCAVModel(TINY, DV, DA, obj).eval()
    b = _batch(g, 6, 8, 6)
    out = model(b.video, b.video_mask, b.audio, b.audio_mask)
    quad = compute_quad_loss(out, out, model, obj, DubsConfig(variant="monolingual"))
    pair = compute_loss(out, model, obj)
    torch.testing.assert_close(quad["loss"], pair["loss"])
    assert set(k for k in quad if k.endswith("_loss")) == {"scav_quad_loss"}


# -- DDP: the gathered quadruplet loss equals one process on the whole batch ----------------

N, WORLD = 3, 2
DDP_CASES = {
    "cav_within": (ObjectiveConfig(kind="cav", interp="post"), DubsConfig(variant="multilingual", lambda_a=0.5,
                                                                          lambda_v=0.25)),
    "scav_post": (ObjectiveConfig(kind="scav", interp="post", resample="audio"), DubsConfig(variant="multilingual",
                                                                                            lambda_a=0.5)),
    "cav+scav_audio_only": (ObjectiveConfig(kind="cav+scav", interp="post"),
                            DubsConfig(variant="audio-only", lambda_a=1.0)),
}


def _quad_full():
    g = torch.Generator().manual_seed(11)
    return _batch(g, 2 * N, 9, 6), _batch(g, 2 * N, 7, 6)


def _slice(b: Batch, sl) -> Batch:
    return Batch(b.clip_ids[sl], b.sources[sl], b.video[sl], b.video_mask[sl], b.audio[sl], b.audio_mask[sl])


def _quad_grads(model, net, p, s, obj, dubs, info):
    out_p, out_s = loop.forward_pair(net, p, s)
    got = compute_quad_loss(out_p, out_s, model, obj, dubs, info)
    got["loss"].backward()
    return got["loss"].detach(), {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}


def _ddp_worker(rank, init_file, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    info = DistInfo(rank=rank, world_size=WORLD)
    p, s = _quad_full()
    sl = slice(rank * N, (rank + 1) * N)
    results = {}
    for name, (obj, dubs) in DDP_CASES.items():
        torch.manual_seed(0)
        model = SCAVModel(TINY, DV, DA, obj)
        net = torch.nn.parallel.DistributedDataParallel(model)
        loss, grads = _quad_grads(model, net, _slice(p, sl), _slice(s, sl), obj, dubs, info)
        results[name] = (loss, grads)
    if rank == 0:
        torch.save(results, path)
    cleanup()


def test_two_process_quadruplet_loss_equals_single_process(tmp_path):
    path = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(str(tmp_path / "rendezvous"), str(path)), nprocs=WORLD, join=True)
    results = torch.load(path, weights_only=True)
    p, s = _quad_full()
    for name, (obj, dubs) in DDP_CASES.items():
        torch.manual_seed(0)
        model = SCAVModel(TINY, DV, DA, obj)
        loss, grads = _quad_grads(model, model, p, s, obj, dubs, None)
        d_loss, d_grads = results[name]
        torch.testing.assert_close(d_loss, loss, atol=1e-5, rtol=1e-5, msg=name)
        assert set(d_grads) == set(grads), name
        for k in grads:
            torch.testing.assert_close(d_grads[k], grads[k], atol=1e-5, rtol=1e-4, msg=f"{name}: {k}")


# -- the training loop ---------------------------------------------------------------------


@pytest.mark.parametrize("variant,extra", [
    ("monolingual", {}),
    ("bilingual", {"language": "spa"}),
    ("multilingual", {"lambda_v": 0.5, "lambda_a": 0.5, "video_time_mask": 0.3}),
    ("audio-only", {"lambda_a": 1.0}),
])
def test_every_variant_trains(cache, tmp_path, variant, extra):
    out = tmp_path / variant
    summary = loop.run(_cfg(cache, out, variant, steps=4, same_source_fraction=0.25, dubs=extra))
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"])
    train = [e for e in _events(out) if e["event"] == "train"]
    keys = set(train[-1])
    assert ("scav_quad_loss" in keys) == (variant != "audio-only")
    assert ("scav_within_audio_loss" in keys) == (extra.get("lambda_a", 0) > 0)
    # the within-modal terms are logged whatever their weight (lambda 0: computed without gradient)
    assert {"scav_within_audio", "scav_within_video"} <= keys
    assert "lambda" in keys and "tau" not in keys  # SCAV's temperature only
    assert (out / "averaged.pt").is_file()


def test_cav_variant_trains_and_tracks_within_modal_terms(cache, tmp_path):
    out = tmp_path / "cav"
    loop.run(_cfg(cache, out, "multilingual", steps=3, objective=ObjectiveConfig(kind="cav", interp="post")))
    last = [e for e in _events(out) if e["event"] == "train"][-1]
    # not trained (lambda 0) but logged, as the paper tracks them
    assert "cav_quad_loss" in last and "cav_within_audio" in last and "cav_within_video" in last
    assert "tau" in last and "lambda" not in last


def test_dub_training_resumes_exactly(cache, tmp_path, monkeypatch):
    kw = dict(steps=10, same_source_fraction=0.25, dubs={"video_time_mask": 0.2})  # masks on every view
    loop.run(_cfg(cache, tmp_path / "full", **kw))
    real = loop.compute_quad_loss
    calls = {"n": 0}

    def killed_after_6_steps(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "compute_quad_loss", killed_after_6_steps)
    with pytest.raises(KeyboardInterrupt):
        loop.run(_cfg(cache, tmp_path / "part", **kw))
    monkeypatch.setattr(loop, "compute_quad_loss", real)
    loop.run(_cfg(cache, tmp_path / "part", resume=True, **kw))
    a = {e["step"]: e["loss"] for e in _events(tmp_path / "full") if e["event"] == "train"}
    b = {e["step"]: e["loss"] for e in _events(tmp_path / "part") if e["event"] == "train"}
    assert sorted(a) == sorted(b) == list(range(1, 11))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6, rel=1e-6), step


def test_config_rejects_inconsistent_dub_options(cache, tmp_path):
    with pytest.raises(ValueError, match="required by the bilingual variant"):
        _cfg(cache, tmp_path, "bilingual").validate()
    with pytest.raises(ValueError, match="within-modal terms only"):
        _cfg(cache, tmp_path, "audio-only").validate()
    with pytest.raises(ValueError, match="use dubs.window instead"):
        _cfg(cache, tmp_path, "monolingual", random_crop=1.0).validate()
    # configs written before dubs existed read as dubs off
    d = _cfg(cache, tmp_path, "off").to_dict()
    del d["dubs"], d["same_source_fraction"]
    assert TrainConfig.from_dict(d).dubs == DubsConfig()


def test_cli_passes_the_dub_options(cache, tmp_path):
    from scav.train.cli import app
    from typer.testing import CliRunner

    out = tmp_path / "cli"
    res = CliRunner().invoke(app, [
        "--cache", str(cache), "--out", str(out), "--steps", "2", "--batch-size", "8", "--val-clips", "4",
        "--val-every", "2", "--warmup", "1", "--c", "16", "--video-layers", "1", "--audio-layers", "1",
        "--heads", "2", "--dubs", "bilingual", "--dub-language", "fra", "--dub-window", "1.5",
        "--same-source", "0.25", "--lambda-a", "0.5", "--dub-windows", "same", "--audio-time-mask", "0.25",
        "--video-time-mask", "0.1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["dubs"]["variant"] == "bilingual" and saved["dubs"]["language"] == "fra"
    assert saved["same_source_fraction"] == 0.25 and saved["dubs"]["lambda_a"] == 0.5
    assert saved["dubs"]["windows"] == "same" and saved["dubs"]["audio_time_mask"] == 0.25
    assert saved["dubs"]["video_time_mask"] == 0.1 and saved["dubs"]["audio_freq_mask"] is None
    # this cache's audio features record no frequency layout: an explicit frequency mask is refused
    bad = CliRunner().invoke(app, ["--cache", str(cache), "--out", str(tmp_path / "f"), "--dubs", "monolingual",
                                   "--audio-freq-mask", "0.5", "--batch-size", "8", "--val-clips", "4"])
    assert bad.exit_code == 2 and "records no frequency layout" in bad.output
    bad = CliRunner().invoke(app, ["--cache", str(cache), "--out", str(tmp_path / "x"), "--dubs", "bilingual"])
    assert bad.exit_code == 2 and "bilingual" in bad.output


# -- the paper's augmentation by default --------------------------------------------------------


def _fed(cfg, n: int = 3):
    """The first ``n`` batches the training feed prepares for ``cfg`` (CPU, inline)."""
    t = loop.setup(cfg, torch.device("cpu"), ddp.DistInfo())
    f = feed.BatchFeed(t, ahead=False)
    out = []
    for _ in range(n):
        out.append(f.next()[2])
        t.state.step += 1
    f.close()
    return t, out


@pytest.mark.parametrize("objective", [ObjectiveConfig(kind="scav", interp="post", resample="audio"),
                                       ObjectiveConfig(kind="cav", interp="post")])
def test_monolingual_control_feeds_two_differently_augmented_views(cache, tmp_path, objective):
    """The paper's control: the same track, yet v_s != v_p and a_s != a_p (two windows; the
    audio masked independently in each view), through the loader and the feed."""
    t, batches = _fed(_cfg(cache, tmp_path / "mono", "monolingual", objective=objective))
    assert t.masks.audio_time == 0.5 and t.masks.video_time == 0.0
    n = v_same = a_same = 0
    for q in batches:
        p, s = q.primary, q.secondary
        assert p.tracks == s.tracks  # one track, twice
        for i in range(len(q)):
            n += 1
            v_same += p.video_mask[i].sum() == s.video_mask[i].sum() and torch.equal(p.video[i], s.video[i])
            a_same += p.audio_mask[i].sum() == s.audio_mask[i].sum() and torch.equal(p.audio[i], s.audio[i])
    # clips of 2-3 s, windows of 1.5 s: two windows start in the same video step now and then
    assert n == 24 and v_same <= 6 and a_same <= 3


def test_windows_follow_the_caches_audio_rate(tmp_path):
    """A cache that records 12.5 audio steps/s: 1.5 s windows hold round(1.5 x 12.5) = 19 audio
    steps (the former constant 6.25 gave 9)."""
    rng = np.random.default_rng(1)
    path = tmp_path / "fast.zarr"
    meta = new_meta(EncoderInfo("pixels", DV, stand_in=True),
                    EncoderInfo("fbank", DA, stand_in=True, steps_per_second=12.5), layout=CacheLayout(chunk_rows=8))
    with CacheWriter.create_or_open(path, meta) as w:
        w.write_part([_record(i, "train", rng, rate=12.5) for i in range(16)])
    t, batches = _fed(_cfg(path, tmp_path / "r", "monolingual", dubs={"windows": "same", "audio_time_mask": 0.0}))
    assert t.audio_rate == 12.5
    for q in batches:
        assert set(q.primary.audio_mask.sum(1).tolist()) == {19}
        assert set(q.primary.video_mask.sum(1).tolist()) == {15}


def test_frequency_masks_follow_the_recorded_layout(tmp_path, caplog):
    video = EncoderInfo("pixels", DV, stand_in=True)
    fbank = EncoderInfo("fbank", 2048, stand_in=True, steps_per_second=6.25,
                        preprocessing={"stacking": "step s = fbank frames 16s..16s+15, (16, 128) flattened time-major"})
    unknown = EncoderInfo("fbank", DA, stand_in=True, steps_per_second=6.25)
    cfg = _cfg("c", tmp_path, "multilingual")
    m = feed.view_masks(cfg, new_meta(video, fbank))
    assert (m.audio_time, m.audio_freq, m.video_time) == (0.5, 0.5, 0.0)  # the paper's recipe
    assert tuple(m.freq_layout) == (16, 128, 1)
    with caplog.at_level("WARNING", logger="scav.train.feed"):
        m = feed.view_masks(cfg, new_meta(video, unknown))
    assert m.audio_freq == 0.0 and "time masks only" in caplog.text
    with pytest.raises(ValueError, match="records no frequency layout"):
        feed.view_masks(_cfg("c", tmp_path, "multilingual", dubs={"audio_freq_mask": 0.3}), new_meta(video, unknown))
    assert feed.view_masks(_cfg("c", tmp_path, "off"), new_meta(video, fbank)).audio_time == 0.0  # no dubs
