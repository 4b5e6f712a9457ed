"""How long a clip's resampled side is when the model encodes it with interp='pre'.

Training pairs each clip with its partner's length (the paper's training); validation and
retrieval need a representation of the clip alone: its own duration x the step rate of
the modality it is resampled to. Only cache metadata enters; validation (``scav.train``) and
retrieval use it through :mod:`scav.model.embed`.
"""

from __future__ import annotations

import numpy as np
from scav.core.schema import CacheError, CacheMeta, ClipInfo
from scav.sequence.spec import resamples_video

from .config import ObjectiveConfig


def _own_duration(clip: ClipInfo) -> float:
    """Seconds of the clip's range; for caches that record none, its frames over its fps."""
    if clip.duration > 0:
        return clip.duration
    if clip.fps > 0 and clip.n_video > 0:
        return clip.n_video / clip.fps
    raise CacheError(f"clip {clip.clip_id} records neither a duration nor a frame rate")


def pre_lengths(clips: list[ClipInfo], objective: ObjectiveConfig, meta: CacheMeta) -> np.ndarray | None:
    """(N,) int64 length each clip's resampled side is encoded at with interp='pre'; None
    for interp='post'.

    resample='video': round(duration x the audio encoder's steps per second) (6.25 for
    BEATs), at least 1; resample='audio': round(duration x the video rate: the encoder's
    steps per second, or the clip's own fps for per-frame encoders). Nothing of another
    clip, nor of the clip's other modality's step count, enters.
    """
    if objective.interp != "pre":
        return None
    out = np.empty(len(clips), dtype=np.int64)
    for i, c in enumerate(clips):
        if resamples_video(objective.resample):
            rate = meta.audio.steps_per_second
            if not rate:
                raise CacheError(f"the audio encoder {meta.audio.name} records no steps_per_second")
        else:
            rate = meta.video.steps_per_second or c.fps
            if not rate:
                raise CacheError(f"clip {c.clip_id} records no fps and the video encoder no step rate")
        out[i] = max(1, int(round(_own_duration(c) * rate)))
    return out
