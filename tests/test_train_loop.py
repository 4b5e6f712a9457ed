"""Training loop: learning, outputs, checkpoint averaging, NaN stop, bad inputs, crops."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cache_factory import make_learnable_cache, make_random_cache
from scav.core.cache import FeatureCache
from scav.core.loader import Batch
from scav.core.schema import CacheError
from scav.model.checkpoint import CheckpointError, load_model, read_checkpoint
from scav.model.network import SCAVModel
from scav.model.config import ModelConfig, ObjectiveConfig
from scav.train.config import TrainConfig
from scav.train.augment import random_crop
from scav.train.feed import split_train_val
from scav.train.loop import TrainingDiverged, run
from scav.train.schedule import lr_factor
from scav.train.validation import recall_at_1_both_ways, validate

TINY = ModelConfig(c=32, video_layers=1, audio_layers=1, heads=2, video_mlp_hidden=64, audio_mlp_hidden=64, dropout=0.0)


@pytest.fixture(scope="module")
def learnable(tmp_path_factory) -> Path:
    return make_learnable_cache(tmp_path_factory.mktemp("c") / "feat.zarr", {"train": 56, "test": 4},
                                video_dim=16, audio_dim=16, noise=1.0, seed=1)


def _cfg(cache, out, **kw) -> TrainConfig:
    base = dict(cache=str(cache), out=str(out), val_clips=20, val_every=10, steps=20, batch_size=12, lr=3e-3,
                warmup_steps=3, log_every=1, model=TINY, objective=ObjectiveConfig())
    base.update(kw)
    return TrainConfig(**base)


def _events(out: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def _initial_val(cfg: TrainConfig) -> dict:
    cache = FeatureCache.open(cfg.cache)
    _, val_ids = split_train_val(cache, cfg)
    torch.manual_seed(cfg.seed)  # run() builds its model right after this same seeding
    model = SCAVModel(cfg.model, cache.meta.video.dim, cache.meta.audio.dim, cfg.objective)
    return validate(model, cfg, val_ids, torch.device("cpu"))


@pytest.mark.parametrize("kind,method", [("scav", "seq"), ("cav", "agg")])
def test_training_reduces_loss_and_raises_recall(learnable, tmp_path, kind, method):
    cfg = _cfg(learnable, tmp_path / "run", objective=ObjectiveConfig(kind=kind, interp="pre" if kind == "scav" else "post"))
    before = _initial_val(cfg)
    summary = run(cfg)
    losses = [e["loss"] for e in _events(tmp_path / "run", "train")]
    assert len(losses) == 20 and summary["steps"] == 20
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])
    after = _events(tmp_path / "run", "val")[-1]
    r_before = (before[f"{method}_v2a_r1"] + before[f"{method}_a2v_r1"]) / 2
    r_after = (after[f"{method}_v2a_r1"] + after[f"{method}_a2v_r1"]) / 2
    assert r_after >= r_before + 0.3, (before, after)  # 20 val clips: chance is 0.05


def test_outputs_best_checkpoints_and_average(learnable, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(learnable, out, steps=12, val_every=4, keep_best=2)
    summary = run(cfg)
    for name in ("config.json", "metrics.jsonl", "last.pt", "averaged.pt", "curves.png"):
        assert (out / name).is_file(), name
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())) == cfg
    vals = _events(out, "val")
    assert [v["step"] for v in vals] == [4, 8, 12]
    kept = sorted(p.name for p in (out / "ckpt").iterdir())
    ranked = sorted(vals, key=lambda v: (-v["score"], v["step"]))[:2]
    assert kept == sorted(f"step_{v['step']:07d}.pt" for v in ranked)
    # averaged.pt = the mean of the kept checkpoints, computed independently here
    sds = [torch.load(out / "ckpt" / k, weights_only=True)["model"] for k in kept]
    avg = read_checkpoint(out / "averaged.pt")
    assert sorted(avg["averaged_from"]) == sorted(v["step"] for v in ranked) == sorted(summary["averaged_from"])
    for key, value in avg["model"].items():
        torch.testing.assert_close(value, (sds[0][key] + sds[1][key]) / 2)
    model, objective, meta = load_model(out / "averaged.pt")
    assert not model.training and objective == cfg.objective and meta["config"] == cfg.to_dict()
    assert meta["video_dim"] == 16
    assert meta["cache_fingerprint"] == FeatureCache.open(learnable).meta.fingerprint()
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["step"] == 12 and {"optimizer", "scheduler", "rng", "train_state"} <= set(last)


def test_nan_features_stop_the_run_and_keep_last_good_checkpoint(tmp_path):
    from scav.core.cache import CacheWriter, ClipRecord
    from scav.core.schema import AudioTrack, ClipInfo

    cache = make_random_cache(tmp_path / "c.zarr", {"train": 16}, video_dim=8, audio_dim=8)
    # val_clips=0: the NaN clip is surely a training clip; last.pt is written every step
    cfg = _cfg(cache, tmp_path / "run", val_clips=0, batch_size=4, val_every=1, steps=30, seed=3)
    bad = np.full((5, 8), np.nan, dtype=np.float16)
    meta = FeatureCache.open(cache).meta
    info = ClipInfo(clip_id="train-nan", split="train", fps=10.0, duration=0.5, n_video=5, tracks=[AudioTrack(0, None, 3)])
    CacheWriter.create_or_open(cache, meta).write_part([ClipRecord(info, bad, np.arange(5) / 10.0, [bad[:3]])])
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step \d+: .*scav_loss.*lambda"):
        run(cfg)
    (diverged,) = _events(tmp_path / "run", "diverged")
    assert diverged["step"] > 1 and not math.isfinite(diverged["scav_loss"])
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    assert last["step"] == diverged["step"] - 1
    assert all(torch.isfinite(v).all() for v in last["model"].values())


def test_bad_inputs_have_clear_messages(learnable, tmp_path):
    with pytest.raises(CacheError, match="split 'valid' has no clips.*available: test \\(4\\), train \\(56\\)"):
        run(_cfg(learnable, tmp_path / "a", split="valid"))
    with pytest.raises(ValueError, match="batch size 40 .* larger than the 36 training clips"):
        run(_cfg(learnable, tmp_path / "b", batch_size=40))
    with pytest.raises(ValueError, match="val_clips=56 .* smaller --val-clips"):
        run(_cfg(learnable, tmp_path / "c", val_clips=56))
    with pytest.raises(CacheError, match="no cache at"):
        run(_cfg(tmp_path / "missing.zarr", tmp_path / "d"))
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        run(_cfg(learnable, tmp_path / "e", batch_size=1))
    with pytest.raises(ValueError, match="interp='pre'.*only applies to the 'euclidean'"):
        ObjectiveConfig(distance="soft_dtw", interp="pre").validate()
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt (is not a readable SCAV checkpoint|holds Python objects)"):
        load_model(tmp_path / "junk.pt")


def test_resume_refuses_other_encoders_and_existing_out(learnable, tmp_path):
    out = tmp_path / "run"
    run(_cfg(learnable, out, steps=2, val_every=2))
    with pytest.raises(ValueError, match="already holds a run"):
        run(_cfg(learnable, out, steps=4))
    other = make_learnable_cache(tmp_path / "other.zarr", {"train": 56}, video_dim=16, audio_dim=16,
                                 video_name="clip-vit-b32", audio_name="beats-iter3-as2m")
    with pytest.raises(CacheError, match=r"video=clip-vit-b32.*trained on other encoders: video=pixels \(stand-in\), "
                                         r"audio=fbank \(stand-in\)"):
        run(_cfg(other, out, steps=4, resume=True))
    with pytest.raises(ValueError, match=r"other settings for \['lr'\]"):
        run(_cfg(learnable, out, steps=4, val_every=2, resume=True, lr=1e-3))


def test_recall_at_1_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 4, (9, 9), generator=g).float()  # many ties
    v2a, a2v = recall_at_1_both_ways(s)

    def first_by_score_then_index(scores_of_query):  # the retrieval stage's tie rule
        return min(range(9), key=lambda j: (-float(scores_of_query[j]), j))

    hits_r = [first_by_score_then_index(s[i]) == i for i in range(9)]
    hits_c = [first_by_score_then_index(s[:, i]) == i for i in range(9)]
    assert v2a == pytest.approx(np.mean(hits_r)) and a2v == pytest.approx(np.mean(hits_c))


def test_recall_at_1_breaks_ties_by_index_as_retrieval_does():
    # By hand: video 0 ties its partner (audio 0) with audio 1, which comes later -> rank 1, a hit;
    # video 1 ties its partner (audio 1) with audio 0, which comes earlier -> rank 2, a miss;
    # video 2 is a clear hit. The matrix is symmetric, so audio->video is the same: 2/3 both ways.
    # (The old validation rule, "a tie is a miss", gave 1/3.)
    s = torch.tensor([[1.0, 1.0, 0.0],
                      [1.0, 1.0, 0.0],
                      [0.0, 0.0, 1.0]])
    assert recall_at_1_both_ways(s) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    # Not symmetric: video 0 also scores 1.0 with audio 2 (later than its partner: still a hit for video 0),
    # which puts video 0 ahead of video 2 for audio 2 (earlier index on a tie): audio 2 misses.
    s[0, 2] = 1.0
    assert recall_at_1_both_ways(s) == (pytest.approx(2 / 3), pytest.approx(1 / 3))


def test_lr_schedule_warmup_then_cosine():
    cfg = _cfg("x", "y", steps=110, warmup_steps=10)
    f = [lr_factor(s, cfg) for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.5) and f[109] < 0.001
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_random_crop_takes_the_same_time_window_in_both_modalities():
    fps = [10.0, 25.0, 10.0]
    dur = [4.0, 3.0, 0.8]  # the last clip is shorter than the crop: kept whole
    vids = [torch.arange(int(d * f)).float()[:, None] / f for d, f in zip(dur, fps)]  # value = time (s)
    auds = [torch.arange(int(d * 6.25)).float()[:, None] / 6.25 for d in dur]
    pad = torch.nn.utils.rnn.pad_sequence
    vm = torch.arange(100)[None, :] < torch.tensor([len(v) for v in vids])[:, None]
    am = torch.arange(25)[None, :] < torch.tensor([len(a) for a in auds])[:, None]
    b = Batch(["a", "b", "c"], ["", "", ""], pad(vids, batch_first=True)[:, :100], vm[:, : max(map(len, vids))],
              pad(auds, batch_first=True), am[:, : max(map(len, auds))])
    for seed in range(5):
        c = random_crop(b, fps, 1.6, torch.Generator().manual_seed(seed), audio_rate=6.25)
        for i in range(3):
            nv, na = int(c.video_mask[i].sum()), int(c.audio_mask[i].sum())
            assert torch.all(c.video_mask[i, :nv]) and torch.all(c.audio_mask[i, :na])  # prefix masks
            if i < 2:
                assert nv == round(1.6 * fps[i]) and na == 10
                assert abs(float(c.video[i, 0, 0]) - float(c.audio[i, 0, 0])) <= 1 / 6.25 + 1 / fps[i]
            else:
                assert nv == len(vids[2]) and na == len(auds[2])
    assert math.isclose(float(c.video[0, 1, 0] - c.video[0, 0, 0]), 0.1, rel_tol=1e-5)
