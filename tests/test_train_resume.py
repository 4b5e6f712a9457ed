"""--resume continues a killed run exactly: same per-step losses as an uninterrupted run."""

from __future__ import annotations

import json

import pytest

from scav.train import loop
from scav.model.config import ModelConfig, ObjectiveConfig
from scav.train.config import TrainConfig

from cache_factory import make_learnable_cache

# dropout > 0 and random crops: the resumed run must restore the RNG, not only the weights
TINY = ModelConfig(c=16, video_layers=1, audio_layers=1, heads=2, video_mlp_hidden=32, audio_mlp_hidden=32, dropout=0.2)


def _losses(out) -> dict[int, float]:
    events = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["event"] == "train"]
    assert len({e["step"] for e in train}) == len(train)  # no step logged twice
    return {e["step"]: e["loss"] for e in train}


def test_resume_matches_uninterrupted(tmp_path, monkeypatch):
    cache = make_learnable_cache(tmp_path / "c.zarr", {"train": 28}, video_dim=8, audio_dim=8, lengths=(1.0, 3.0))
    # 24 training clips / batch 8 = 3 batches per epoch: 12 steps cross 3 epoch boundaries
    kw = dict(cache=str(cache), val_clips=4, val_every=4, steps=12, batch_size=8, lr=2e-3, warmup_steps=2,
              log_every=1, random_crop=1.5, model=TINY, objective=ObjectiveConfig())
    full = TrainConfig(out=str(tmp_path / "full"), **kw)
    loop.run(full)

    part = TrainConfig(out=str(tmp_path / "part"), **kw)
    real = loop.compute_loss
    calls = {"n": 0}

    def killed_after_6_steps(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # killed mid-run; last.pt was written at step 4
        return real(*a, **k)

    monkeypatch.setattr(loop, "compute_loss", killed_after_6_steps)
    with pytest.raises(KeyboardInterrupt):
        loop.run(part)
    monkeypatch.setattr(loop, "compute_loss", real)
    assert max(_losses(tmp_path / "part")) == 6
    summary = loop.run(TrainConfig(out=str(tmp_path / "part"), resume=True, **kw))
    assert summary["steps"] == 12

    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6, rel=1e-6), step


def test_resume_before_the_first_checkpoint_starts_again_from_step_0(tmp_path, monkeypatch, caplog):
    cache = make_learnable_cache(tmp_path / "c.zarr", {"train": 28}, video_dim=8, audio_dim=8)
    kw = dict(cache=str(cache), val_clips=4, val_every=4, steps=8, batch_size=8, lr=2e-3, warmup_steps=2,
              log_every=1, model=TINY, objective=ObjectiveConfig())
    loop.run(TrainConfig(out=str(tmp_path / "full"), **kw))

    out = tmp_path / "part"
    real = loop.compute_loss
    calls = {"n": 0}

    def killed_at_step_3(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # before step 4: no last.pt yet
        return real(*a, **k)

    monkeypatch.setattr(loop, "compute_loss", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        loop.run(TrainConfig(out=str(out), **kw))
    monkeypatch.setattr(loop, "compute_loss", real)
    assert (out / "config.json").is_file() and not (out / "last.pt").exists()

    # other settings than the folder's config.json: refused, even with nothing to continue
    with pytest.raises(ValueError, match=r"other settings for \['lr'\]"):
        loop.run(TrainConfig(out=str(out), resume=True, **{**kw, "lr": 1e-3}))
    with caplog.at_level("WARNING", logger="scav.train.loop"):
        summary = loop.run(TrainConfig(out=str(out), resume=True, **kw))
    assert "holds no last.pt" in caplog.text and "starting it from step 0" in caplog.text
    assert summary["steps"] == 8
    assert _losses(out) == pytest.approx(_losses(tmp_path / "full"), abs=1e-6, rel=1e-6)
    # a --resume into a folder that does not exist yet is a first run (requeue scripts can always pass it)
    assert loop.run(TrainConfig(out=str(tmp_path / "new"), resume=True, **{**kw, "steps": 2}))["steps"] == 2


