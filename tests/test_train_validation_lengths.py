"""Validation encodes clips as retrieval does: the 'pre' side at each clip's own length."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cache_factory import make_random_cache
from scav.core.cache import FeatureCache
from scav.model.clip_lengths import pre_lengths
from scav.model.network import SCAVModel
from scav.model.config import ModelConfig, ObjectiveConfig
from scav.train.config import TrainConfig
from scav.train.validation import validate

TINY = ModelConfig(c=16, video_layers=1, audio_layers=1, heads=2, video_mlp_hidden=32, audio_mlp_hidden=32, dropout=0.0)


@pytest.mark.parametrize("resample", ["video", "audio"])
def test_validation_passes_each_clips_own_pre_length(tmp_path, resample):
    cache_path = make_random_cache(tmp_path / "c.zarr", {"train": 12}, lengths=(1.0, 5.0), seed=3)
    cache = FeatureCache.open(cache_path)
    clips = cache.clips("train")
    objective = ObjectiveConfig(interp="pre", resample=resample)
    cfg = TrainConfig(cache=str(cache_path), out=str(tmp_path / "run"), model=TINY, objective=objective)
    model = SCAVModel(TINY, cache.meta.video.dim, cache.meta.audio.dim, objective)
    forward = model.forward
    captured = []

    def recording_forward(*args, pre_lengths=None, **kw):
        captured.append(None if pre_lengths is None else pre_lengths.cpu().numpy())
        return forward(*args, pre_lengths=pre_lengths, **kw)

    model.forward = recording_forward
    ids = [c.clip_id for c in clips]
    validate(model, cfg, ids, torch.device("cpu"), cache=cache)
    got = np.concatenate(captured)
    want = pre_lengths(clips, objective, cache.meta)
    np.testing.assert_array_equal(got, want)
    # independent: the clip's own duration x the other modality's step rate, never its partner's steps
    rate = {"video": 6.25, "audio": None}[resample]
    for c, n in zip(clips, got):
        r = rate or c.fps
        assert n == max(1, round(c.duration * r))
    assert len(got) == len(clips)
