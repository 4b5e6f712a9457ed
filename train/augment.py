"""Feature-level augmentation of cached sequences and the dubs paper's quadruplet views.

The cache holds encoder features, not spectrograms or frames, so augmentation happens on
feature sequences: temporal windows (the paper's temporal jitter, Appendix A step 2) and
time masks (SpecAugment-like; the paper masks up to 50% of a spectrogram's time and
frequency axes). Frequency masking has no counterpart on features and is left out.

A quadruplet batch (:class:`QuadBatch`) holds two :class:`~scav.core.loader.Batch`: the
primary (video window 1, audio track 1) and the secondary (video window 2, the second audio
track, e.g. a dub). Everything runs on the CPU before the copy to the device (as
pair training's :func:`random_crop`), drawing only from the step's ``torch.Generator``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch

from scav.core.loader import Batch

__all__ = ["AUDIO_STEPS_PER_SECOND", "Window", "window_pair", "random_crop", "time_mask", "QuadBatch",
           "make_quadruplets"]

AUDIO_STEPS_PER_SECOND = 6.25  # BEATs: 16 fbank frames of 10 ms per step


class Window(NamedTuple):
    """One temporal window of a clip: video steps [v0, v0 + v_len), audio steps [a0, a0 + a_len)."""

    v0: int
    v_len: int
    a0: int
    a_len: int


def _draw_window(n_video: int, n_audio: int, fps: float, dur: float, seconds: float, gen) -> Window:
    """One start time, floored to a step in each modality; lengths rounded (Python's round)."""
    rate = AUDIO_STEPS_PER_SECOND
    t0 = float(torch.rand((), generator=gen)) * (dur - seconds)
    v0, a0 = int(t0 * fps), int(t0 * rate)
    v_len = max(1, min(n_video - v0, round(seconds * fps)))
    a_len = max(1, min(n_audio - a0, round(seconds * rate)))
    return Window(v0, v_len, a0, a_len)


def window_pair(
    n_video: int, n_audio: int, fps: float, seconds: float | None, gen: torch.Generator, *, same_window: bool
) -> tuple[Window, Window]:
    """Primary and secondary windows of ``seconds`` in a clip of n_video / n_audio real steps.

    fps: video steps per second; audio has ``AUDIO_STEPS_PER_SECOND`` (6.25). Each window
    starts at one time t0 ~ U[0, duration - seconds] in both modalities (each start floored
    to its step, so the two starts differ by less than one step of the slower modality),
    with lengths rounded to whole steps. same_window=True: the secondary is the primary
    (sequence objectives compare v_p with a_s step by step, so they must cover the same
    time); False: drawn independently (the paper's temporal jitter). seconds=None, or a
    clip no longer than ``seconds``: the whole clip, twice, and nothing drawn from ``gen``.
    """
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds must be > 0 or None, got {seconds}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    dur = min(n_video / fps, n_audio / AUDIO_STEPS_PER_SECOND)
    if seconds is None or dur <= seconds:
        whole = Window(0, n_video, 0, n_audio)
        return whole, whole
    first = _draw_window(n_video, n_audio, fps, dur, seconds, gen)
    second = first if same_window else _draw_window(n_video, n_audio, fps, dur, seconds, gen)
    return first, second


def random_crop(batch: Batch, fps: list[float], seconds: float, gen: torch.Generator) -> Batch:
    """Crop every clip to the same ``seconds`` window in both modalities (pair training's
    ``--crop``): the primary window of :func:`window_pair`. fps[i]: video steps per second
    of clip i. Clips no longer than the window are kept whole. Masks stay prefix masks."""
    n_video, n_audio = batch.video_mask.sum(1).tolist(), batch.audio_mask.sum(1).tolist()
    windows = [window_pair(n_video[i], n_audio[i], fps[i], seconds, gen, same_window=True)[0]
               for i in range(len(batch))]
    return _crop(batch, batch.audio, batch.tracks, windows)


def time_mask(seq: torch.Tensor, lengths: torch.Tensor, max_fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Zero one contiguous span of each clip's real steps (a copy; ``seq`` is not changed).

    seq (B, L, ...), lengths (B,) real steps per clip (prefix). Per clip, in clip order:
    span ~ U{0, ..., floor(max_fraction * len)}, then start ~ U{0, ..., len - span}. Steps stay
    in place (zeroed, not removed) so the timing and the masks are unchanged; padded steps
    are never touched.
    """
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
    out = seq.clone()
    for i, n in enumerate(lengths.tolist()):
        span = int(torch.randint(0, int(max_fraction * n) + 1, (), generator=gen))
        start = int(torch.randint(0, n - span + 1, (), generator=gen))
        out[i, start : start + span] = 0
    return out


@dataclass
class QuadBatch:
    """Quadruplet views of a batch: row i of ``primary`` and ``secondary`` is clip i."""

    clip_ids: list[str]
    sources: list[str]
    primary: Batch  # (v_p, a_p)
    secondary: Batch  # (v_s, a_s)

    def to(self, device, non_blocking: bool = False, dtype: torch.dtype = torch.float32) -> "QuadBatch":
        return QuadBatch(self.clip_ids, self.sources, self.primary.to(device, non_blocking, dtype),
                         self.secondary.to(device, non_blocking, dtype))

    def pin_memory(self) -> "QuadBatch":
        return QuadBatch(self.clip_ids, self.sources, self.primary.pin_memory(), self.secondary.pin_memory())

    def __len__(self) -> int:
        return len(self.clip_ids)


def _padded(parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded (B, L_max, D) and its prefix mask (B, L_max)."""
    lengths = torch.tensor([len(p) for p in parts])
    mask = torch.arange(int(lengths.max()))[None] < lengths[:, None]
    return torch.nn.utils.rnn.pad_sequence(parts, batch_first=True), mask


def _crop(batch: Batch, audio: torch.Tensor, tracks: list[int] | None, windows: list[Window]) -> Batch:
    """One view: the batch's video and the given audio track, each clip cut to its window."""
    video, video_mask = _padded([batch.video[i, w.v0 : w.v0 + w.v_len] for i, w in enumerate(windows)])
    audio, audio_mask = _padded([audio[i, w.a0 : w.a0 + w.a_len] for i, w in enumerate(windows)])
    return Batch(batch.clip_ids, batch.sources, video, video_mask, audio, audio_mask, tracks=tracks)


def _masked(b: Batch, fraction: float, gen: torch.Generator) -> Batch:
    video = time_mask(b.video, b.video_mask.sum(1), fraction, gen)
    audio = time_mask(b.audio, b.audio_mask.sum(1), fraction, gen)
    return dataclasses.replace(b, video=video, audio=audio)


def make_quadruplets(
    batch: Batch,
    fps: list[float],
    seconds: float | None,
    gen: torch.Generator,
    *,
    same_window: bool,
    mask_fraction: float = 0.0,
) -> QuadBatch:
    """(v_p, a_p, v_s, a_s) views of every clip of a loader batch.

    fps[i]: video steps per second of clip i. Per clip, :func:`window_pair` gives two
    windows; primary = (video, ``batch.audio``) in window 1, secondary = (video,
    ``batch.audio2``) in window 2, or track 1 again when the batch has no second track.
    Windows are drawn on min(track 1, track 2) real audio steps, so that a window is valid
    in both tracks and both tracks cover the same time. Then, if mask_fraction > 0, a
    :func:`time_mask` for each of v_p, a_p, v_s, a_s, drawn independently. Draw order: all
    windows (clip order), then the masks, so the windows do not depend on mask_fraction;
    with same_window the primary is exactly :func:`random_crop`'s crop for the same
    generator. Each view holds one track (its ``tracks`` names it: the batch's ``tracks``
    for the primary, ``tracks2`` for the secondary; no ``audio2``). Outputs: prefix masks,
    zero padding, the input's dtype (float16 from the loader; ``.to()`` casts).
    """
    if len(fps) != len(batch):
        raise ValueError(f"{len(fps)} fps values for a batch of {len(batch)} clips")
    audio2, audio2_mask, tracks2 = batch.audio2, batch.audio2_mask, batch.tracks2
    if audio2 is None:
        audio2, audio2_mask, tracks2 = batch.audio, batch.audio_mask, batch.tracks
    n_video = batch.video_mask.sum(1).tolist()
    n_audio = torch.minimum(batch.audio_mask.sum(1), audio2_mask.sum(1)).tolist()
    windows = [window_pair(n_video[i], n_audio[i], fps[i], seconds, gen, same_window=same_window)
               for i in range(len(batch))]
    primary = _crop(batch, batch.audio, batch.tracks, [w[0] for w in windows])
    secondary = _crop(batch, audio2, tracks2, [w[1] for w in windows])
    if mask_fraction > 0:
        primary = _masked(primary, mask_fraction, gen)
        secondary = _masked(secondary, mask_fraction, gen)
    return QuadBatch(batch.clip_ids, batch.sources, primary, secondary)
