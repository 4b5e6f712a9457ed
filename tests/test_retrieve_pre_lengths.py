"""interp='pre' at retrieval: each clip is encoded at a length of its own, never its partner's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from cache_factory import cache_contents, make_random_cache
from scav.core.cache import CacheWriter, ClipRecord, FeatureCache
from scav.core.schema import AudioTrack, CacheError, ClipInfo
from scav.model.clip_lengths import pre_lengths
from scav.model.embed import embed_split, latent_lengths
from scav.model.network import SCAVModel
from scav.model.config import ModelConfig, ObjectiveConfig

TINY = ModelConfig(c=8, video_layers=1, audio_layers=1, heads=2, video_mlp_hidden=16, audio_mlp_hidden=16, dropout=0.0)
PRE_VIDEO = ObjectiveConfig(kind="scav", interp="pre", resample="video")


def copy_with_short_audio(src, dst, clip_id: str, keep: int):
    """``src`` rewritten to ``dst`` with clip ``clip_id``'s audio cut to ``keep`` steps."""
    meta = FeatureCache.open(src).meta
    records = []
    for cid, (info, video, audio) in cache_contents(src).items():
        if cid == clip_id:
            audio = audio[:keep]
            info = dataclasses.replace(info, tracks=[AudioTrack(index=0, n_steps=keep)])
        times = (np.arange(len(video)) / info.fps).astype(np.float64)
        records.append(ClipRecord(info, video, times, [audio]))
    CacheWriter.create_or_open(dst, meta).write_part(records)
    return dst


def test_candidate_latents_do_not_depend_on_the_partner_audio_length(tmp_path):
    a = make_random_cache(tmp_path / "a.zarr", {"test": 6}, lengths=(2.0, 4.0), seed=3)
    target = "test-0002"
    n_audio = {c.clip_id: c.n_audio for c in FeatureCache.open(a).clips("test")}[target]
    b = copy_with_short_audio(a, tmp_path / "b.zarr", target, keep=n_audio // 2)
    torch.manual_seed(0)
    meta = FeatureCache.open(a).meta
    model = SCAVModel(TINY, meta.video.dim, meta.audio.dim, PRE_VIDEO).eval()
    lat = {}
    for name, path in (("a", a), ("b", b)):
        clips = FeatureCache.open(path).clips("test")
        lat[name] = embed_split(model, path, FeatureCache.open(path).meta, "test", clips, batch_size=4)
    va, vb = lat["a"].video, lat["b"].video
    np.testing.assert_array_equal(va.offsets, vb.offsets)
    torch.testing.assert_close(torch.from_numpy(va.seq), torch.from_numpy(vb.seq), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(va.emb), torch.from_numpy(vb.emb), rtol=0, atol=1e-6)
    # the audio itself did change, and training's pairing (partner length) would have moved the video
    assert not np.array_equal(lat["a"].audio.offsets, lat["b"].audio.offsets)
    ca = {c.clip_id: c for c in FeatureCache.open(a).clips("test")}[target]
    fa, fb = cache_contents(a)[target], cache_contents(b)[target]
    with torch.no_grad():
        outs = [
            model(torch.from_numpy(f[1].astype("float32"))[None], torch.ones(1, ca.n_video, dtype=torch.bool),
                  torch.from_numpy(f[2].astype("float32"))[None], torch.ones(1, len(f[2]), dtype=torch.bool))
            for f in (fa, fb)
        ]
    assert outs[0]["video_seq"].shape[1] != outs[1]["video_seq"].shape[1]


def clip(duration, fps=10.0, n_video=0, n_audio=0):
    return ClipInfo(clip_id="c", split="s", fps=fps, duration=duration, n_video=n_video,
                    tracks=[AudioTrack(index=0, n_steps=n_audio)])


def test_pre_lengths_hand_worked(tmp_path):
    meta = FeatureCache.open(make_random_cache(tmp_path / "c.zarr", {"test": 1})).meta  # audio 6.25 steps/s
    clips = [clip(10.0, n_video=250, n_audio=61), clip(0.05, n_video=1, n_audio=1), clip(3.3, fps=25.0, n_video=82, n_audio=20)]
    # round(62.5) = 62 (half to even), 0.3125 -> at least 1, 20.625 -> 21
    assert pre_lengths(clips, PRE_VIDEO, meta).tolist() == [62, 1, 21]
    audio_side = ObjectiveConfig(kind="scav", interp="pre", resample="audio")
    assert pre_lengths(clips, audio_side, meta).tolist() == [100, 1, 82]  # duration x the clip's fps
    assert pre_lengths(clips, ObjectiveConfig(kind="scav", interp="post"), meta) is None
    nv, na = latent_lengths(clips, PRE_VIDEO, pre_lengths(clips, PRE_VIDEO, meta))
    assert nv.tolist() == [62, 1, 21] and na.tolist() == [61, 1, 20]
    # a cache that records no duration: the video's own frames over its fps
    assert pre_lengths([clip(0.0, fps=10.0, n_video=35)], PRE_VIDEO, meta).tolist() == [22]  # 3.5 s x 6.25
    no_rate = dataclasses.replace(meta, audio=dataclasses.replace(meta.audio, steps_per_second=None))
    with pytest.raises(CacheError, match="steps_per_second"):
        pre_lengths(clips, PRE_VIDEO, no_rate)
