"""Small feature caches with random features, written through the real CacheWriter.

``make_random_cache``: independent random video / audio (nothing to learn).
``make_learnable_cache``: audio = a fixed random linear map of the video
features resampled to the audio length, plus noise, so a model can learn to
match the pairs (retrieval recall rises well above chance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scav.core.cache import CacheWriter, ClipRecord, new_meta
from scav.core.schema import AudioTrack, ClipInfo, EncoderInfo

AUDIO_STEPS_PER_SECOND = 6.25


def _meta(video_dim: int, audio_dim: int, video_name: str, audio_name: str):
    return new_meta(
        EncoderInfo(name=video_name, dim=video_dim, stand_in=True),
        EncoderInfo(name=audio_name, dim=audio_dim, stand_in=True, steps_per_second=AUDIO_STEPS_PER_SECOND),
    )


def _lengths_for(rng: np.random.Generator, lengths, fps: float) -> tuple[int, int, float]:
    """(video steps, audio steps, duration) for one clip."""
    lo, hi = lengths
    duration = float(rng.uniform(lo, hi))
    return max(1, int(round(duration * fps))), max(1, int(round(duration * AUDIO_STEPS_PER_SECOND))), duration


def _resample(x: np.ndarray, n: int) -> np.ndarray:
    """Linear resampling of (T, D) to (n, D) over the clip's time span."""
    t_src = (np.arange(len(x)) + 0.5) / len(x)
    t_dst = (np.arange(n) + 0.5) / n
    return np.stack([np.interp(t_dst, t_src, x[:, d]) for d in range(x.shape[1])], axis=1)


def _write(path: Path, meta, clips: list[tuple[ClipInfo, np.ndarray, np.ndarray]], part_clips: int = 16) -> Path:
    writer = CacheWriter.create_or_open(path, meta)
    for a in range(0, len(clips), part_clips):
        records = [
            ClipRecord(info, video, (np.arange(len(video)) / info.fps).astype(np.float64), [audio])
            for info, video, audio in clips[a : a + part_clips]
        ]
        writer.write_part(records)
    return Path(path)


def _clip_infos(rng, n_clips_by_split, lengths, fps):
    out = []
    for split, n in n_clips_by_split.items():
        for k in range(n):
            nv, na, dur = _lengths_for(rng, lengths, fps)
            info = ClipInfo(
                clip_id=f"{split}-{k:04d}", split=split, source=f"src{k % 7}", fps=fps,
                duration=dur, n_video=nv, tracks=[AudioTrack(index=0, n_steps=na)],
            )
            out.append(info)
    return out


def make_random_cache(
    path,
    n_clips_by_split: dict[str, int] | None = None,
    video_dim: int = 16,
    audio_dim: int = 24,
    lengths: tuple[float, float] = (2.0, 4.0),
    seed: int = 0,
    fps: float = 10.0,
    video_name: str = "pixels",
    audio_name: str = "fbank",
) -> Path:
    """A cache of independent random features; clip durations uniform in ``lengths`` seconds.

    Video at ``fps`` steps/s, audio at 6.25 steps/s (the BEATs rate). Clip ids are
    ``{split}-{k:04d}``. Returns ``path``.
    """
    n_clips_by_split = n_clips_by_split or {"train": 40, "test": 10}
    rng = np.random.default_rng(seed)
    clips = []
    for info in _clip_infos(rng, n_clips_by_split, lengths, fps):
        video = rng.standard_normal((info.n_video, video_dim)).astype(np.float16)
        audio = rng.standard_normal((info.n_audio, audio_dim)).astype(np.float16)
        clips.append((info, video, audio))
    return _write(Path(path), _meta(video_dim, audio_dim, video_name, audio_name), clips)


def make_learnable_cache(
    path,
    n_clips_by_split: dict[str, int] | None = None,
    video_dim: int = 16,
    audio_dim: int = 24,
    lengths: tuple[float, float] = (2.0, 4.0),
    seed: int = 0,
    fps: float = 10.0,
    noise: float = 0.3,
    smooth: int = 3,
    static: float = 1.0,
    video_name: str = "pixels",
    audio_name: str = "fbank",
) -> Path:
    """Like :func:`make_random_cache`, but audio_i = resample(video_i) @ W + noise.

    Video steps are a smoothed random walk (``smooth``-step moving average) so
    the sequences have temporal structure; W (video_dim, audio_dim) is one fixed
    random matrix for the whole cache. ``static`` scales a per-clip constant
    vector added to every video step, so mean-pooled embeddings (CAV) also
    identify the clip, not only the temporal pattern (SCAV).
    """
    n_clips_by_split = n_clips_by_split or {"train": 40, "test": 10}
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((video_dim, audio_dim)) / np.sqrt(video_dim)
    clips = []
    kernel = np.ones(smooth) / smooth
    for info in _clip_infos(rng, n_clips_by_split, lengths, fps):
        raw = rng.standard_normal((info.n_video + smooth - 1, video_dim))
        video = np.stack([np.convolve(raw[:, d], kernel, mode="valid") for d in range(video_dim)], axis=1)
        video = video / video.std() + static * rng.standard_normal((1, video_dim))
        audio = _resample(video, info.n_audio) @ w
        audio = audio + noise * rng.standard_normal(audio.shape)
        clips.append((info, video.astype(np.float16), audio.astype(np.float16)))
    return _write(Path(path), _meta(video_dim, audio_dim, video_name, audio_name), clips)


def cache_contents(path) -> dict:
    """clip_id -> (ClipInfo, video, audio) of a whole cache, for comparing two caches."""
    from scav.core.cache import FeatureCache

    c = FeatureCache.open(path)
    return {i.clip_id: (i, c.get(i.clip_id).video, c.get(i.clip_id).audio) for i in c.clips()}


def assert_same_contents(a: dict, b: dict) -> None:
    import numpy as np

    assert a.keys() == b.keys()
    for k in a:
        assert a[k][0] == b[k][0]
        np.testing.assert_array_equal(a[k][1], b[k][1])
        np.testing.assert_array_equal(a[k][2], b[k][2])
