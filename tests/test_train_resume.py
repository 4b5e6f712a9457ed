"""--resume continues a killed run exactly: same per-step losses as an uninterrupted run."""

from __future__ import annotations

import json

import pytest

from scav.train import loop
from scav.train.config import ModelConfig, ObjectiveConfig, TrainConfig

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
