"""The mapper's failure rows for what encoders cannot take, through the real stand-in encoders and part writer."""

from __future__ import annotations

import numpy as np

from scav.core.cache import CacheWriter, FeatureCache
from scav.data_manifests.manifest import ManifestRow
from scav.extract.clip_encode import cache_meta_for
from scav.extract.config import EncoderSpec
from scav.extract.decode import AudioPiece, TrackEnd, TrackStart, VideoChunk, VideoEnd
from scav.extract.runner import build_encoders
from scav.extract.shard import write_clips


def _events(n_samples: int):
    frames = np.zeros((3, 16, 16, 3), np.float32)  # pixels' prepared frames
    yield VideoChunk(frames, np.arange(3) / 25.0)
    yield VideoEnd(n_frames=3, fps=25.0, start=0.0, end=0.12)
    yield TrackStart(index=0, language=None, original=True, n_samples=n_samples)
    yield AudioPiece(np.zeros(n_samples, np.float32))
    yield TrackEnd(index=0)


def test_audio_too_short_for_one_step_is_a_failure_row_and_the_next_clip_lands(tmp_path):
    video, audio = build_encoders(EncoderSpec(), "cpu")
    rows = [ManifestRow("short", "a.mp4", split="s"), ManifestRow("ok", "b.mp4", split="s")]
    source = [(rows[0], _events(800)), (rows[1], _events(16000))]  # 50 ms (no step), then 1 s
    with CacheWriter.create_or_open(tmp_path / "c.zarr", cache_meta_for(EncoderSpec())) as w:
        result = write_clips(source, w, video, audio, part_clips=8)
    assert result.extracted == 1 and [f.clip_id for f in result.failures] == ["short"]
    failure = result.failures[0]
    assert failure.stage == "encode" and failure.reason.startswith("audio too short for one step: 800 samples")
    cache = FeatureCache.open(tmp_path / "c.zarr")
    got = cache.get("ok")
    assert got.video.shape == (3, 768) and len(got.audio) == got.info.tracks[0].n_steps > 0
