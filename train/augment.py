"""Feature-level augmentation of cached sequences and the dubs paper's quadruplet views.

The cache holds encoder features, not spectrograms or frames, so the paper's augmentations
(Appendix A) are mapped onto feature sequences:

- temporal windows (step 2's two 3-second windows) cut steps, at each modality's own step
  rate: the video clip's fps and the audio encoder's recorded rate (``EncoderInfo.
  steps_per_second``; 6.25 for BEATs and the fbank stand-in);
- the spectrogram's time mask (up to 50 % of the axis) zeroes one span of steps
  (:func:`time_mask`; a BEATs step is 160 ms = 16 spectrogram frames);
- the spectrogram's frequency mask (up to 50 % of the axis) zeroes one range of frequency
  bands in every step (:func:`freq_mask`), where the cache records how a step's vector
  is laid out over frequency (:func:`frequency_layout`): BEATs stacks 8 frequency patches
  (16 mel bins each) x 768 dims per step, so a band is a 768-dim patch block; the fbank
  stand-in stacks 16 frames x 128 mel bins, so a band is one mel bin in all 16 frames.
  A BEATs patch's output has attended to the other patches, so this is the analogue of the
  input mask on the features the cache holds, not the same operation.

A quadruplet batch (:class:`QuadBatch`) holds two :class:`~scav.core.loader.Batch`: the
primary (v_p, a_p: track 1) and the secondary (v_s, a_s: the second audio track, e.g. a
dub). Everything runs on the CPU before the copy to the device (as pair training's
:func:`random_crop`), drawing only from the step's ``torch.Generator``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
from scav.core.loader import Batch
from scav.core.schema import EncoderInfo

from .config import WINDOW_MODES

__all__ = ["WINDOW_MODES", "Window", "window_pair", "random_crop", "time_mask", "FreqLayout", "frequency_layout",
           "freq_mask", "ViewMasks", "QuadBatch", "make_quadruplets"]

# How the two views' windows are drawn (make_quadruplets; the names: scav.train.config.WINDOW_MODES):
#   same     one window for both views;
#   jitter   two independent windows, primary = (v, a) in the first, secondary = (v, a2) in the
#            second (the paper's: v_p and a_s cover different seconds);
#   aligned  the same two windows, crossed: (v_p, a_s) in the first, (v_s, a_p) in the second,
#            so each contrasted cross-modal pair covers the same seconds (what a sequence
#            distance compares) while v_p != v_s and a_p != a_s.


class Window(NamedTuple):
    """One temporal window of a clip: video steps [v0, v0 + v_len), audio steps [a0, a0 + a_len)."""

    v0: int
    v_len: int
    a0: int
    a_len: int


def _draw_window(n_video: int, n_audio: int, fps: float, rate: float, dur: float, seconds: float, gen) -> Window:
    """One start time, floored to a step in each modality; lengths rounded (Python's round)."""
    t0 = float(torch.rand((), generator=gen)) * (dur - seconds)
    v0, a0 = int(t0 * fps), int(t0 * rate)
    v_len = max(1, min(n_video - v0, round(seconds * fps)))
    a_len = max(1, min(n_audio - a0, round(seconds * rate)))
    return Window(v0, v_len, a0, a_len)


def window_pair(
    n_video: int, n_audio: int, fps: float, seconds: float | None, gen: torch.Generator, *, audio_rate: float,
    same_window: bool,
) -> tuple[Window, Window]:
    """Primary and secondary windows of ``seconds`` in a clip of n_video / n_audio real steps.

    fps, audio_rate: video and audio steps per second (the cache's). Each window
    starts at one time t0 ~ U[0, duration - seconds] in both modalities (each start floored
    to its step, so the two starts differ by less than one step of the slower modality),
    with lengths rounded to whole steps. same_window=True: the secondary is the primary;
    False: drawn independently (the paper's temporal jitter). seconds=None, or a
    clip no longer than ``seconds``: the whole clip, twice, and nothing drawn from ``gen``.
    """
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds must be > 0 or None, got {seconds}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not audio_rate > 0:
        raise ValueError(f"audio_rate must be > 0, got {audio_rate}")
    dur = min(n_video / fps, n_audio / audio_rate)
    if seconds is None or dur <= seconds:
        whole = Window(0, n_video, 0, n_audio)
        return whole, whole
    first = _draw_window(n_video, n_audio, fps, audio_rate, dur, seconds, gen)
    second = first if same_window else _draw_window(n_video, n_audio, fps, audio_rate, dur, seconds, gen)
    return first, second


def random_crop(batch: Batch, fps: list[float], seconds: float, gen: torch.Generator, *, audio_rate: float) -> Batch:
    """Crop every clip to the same ``seconds`` window in both modalities (pair training's
    ``--crop``): the primary window of :func:`window_pair`. fps[i]: video steps per second
    of clip i; audio_rate: audio steps per second. Clips no longer than the window are kept
    whole. Masks stay prefix masks."""
    n_video, n_audio = batch.video_mask.sum(1).tolist(), batch.audio_mask.sum(1).tolist()
    windows = [window_pair(n_video[i], n_audio[i], fps[i], seconds, gen, audio_rate=audio_rate, same_window=True)[0]
               for i in range(len(batch))]
    return _crop(batch, windows, batch.audio, batch.tracks, windows)


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


class FreqLayout(NamedTuple):
    """How one step's feature vector (D,) lies over frequency: viewed as (outer, bands, inner)
    (D = outer x bands x inner), band k is ``[:, k, :]``."""

    outer: int
    bands: int
    inner: int


# The layouts the encoders record in EncoderInfo.preprocessing["stacking"] (extract/encoders):
_BEATS_STACKING = re.compile(r"token t\*(\d+)\+p -> step t, dims \[p\*(\d+):\(p\+1\)\*\2\]")  # BEATs
_FRAMES_STACKING = re.compile(r"\((\d+), (\d+)\) flattened time-major")  # fbank: (frames, mel bins)


def frequency_layout(info: EncoderInfo) -> FreqLayout | None:
    """The frequency layout an audio encoder records for its cache, or None when unknown.

    BEATs ("token t*8+p -> step t, dims [p*768:(p+1)*768]"): 8 frequency patches of 768
    dims, FreqLayout(1, 8, 768). fbank ("(16, 128) flattened time-major"): 16 frames x 128
    mel bins, FreqLayout(16, 128, 1). Anything else (another encoder, an older cache, a
    layout that does not multiply to ``info.dim``) is unknown: no frequency mask can be placed.
    """
    stacking = str((info.preprocessing or {}).get("stacking", ""))
    m = _BEATS_STACKING.search(stacking)
    layout = None
    if m:
        layout = FreqLayout(1, int(m.group(1)), int(m.group(2)))
    elif m := _FRAMES_STACKING.search(stacking):
        layout = FreqLayout(int(m.group(1)), int(m.group(2)), 1)
    if layout is None or layout.outer * layout.bands * layout.inner != info.dim:
        return None
    return layout


def freq_mask(seq: torch.Tensor, lengths: torch.Tensor, max_fraction: float, layout: FreqLayout,
              gen: torch.Generator) -> torch.Tensor:
    """Zero one contiguous range of frequency bands in every real step of each clip (a copy).

    seq (B, L, D) with D laid out as ``layout``; lengths (B,) real steps per clip (prefix).
    Per clip, in clip order: width ~ U{0, ..., floor(max_fraction * bands)}, then start ~
    U{0, ..., bands - width}; bands [start, start + width) are zeroed at every real step
    (SpecAugment's frequency mask, one per clip). Padded steps are never touched.
    """
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
    b, length, d = seq.shape
    if layout.outer * layout.bands * layout.inner != d:
        raise ValueError(f"frequency layout {tuple(layout)} does not multiply to the feature dim {d}")
    out = seq.clone()
    view = out.view(b, length, layout.outer, layout.bands, layout.inner)
    for i, n in enumerate(lengths.tolist()):
        width = int(torch.randint(0, int(max_fraction * layout.bands) + 1, (), generator=gen))
        start = int(torch.randint(0, layout.bands - width + 1, (), generator=gen))
        view[i, :n, :, start : start + width] = 0
    return out


@dataclass(frozen=True)
class ViewMasks:
    """Masks applied to each view of a quadruplet, drawn independently per view and clip.

    Maximum fractions: ``video_time`` of the video steps, ``audio_time`` of the audio steps,
    ``audio_freq`` of the frequency bands of ``freq_layout`` (needed when audio_freq > 0).
    The default masks nothing.
    """

    video_time: float = 0.0
    audio_time: float = 0.0
    audio_freq: float = 0.0
    freq_layout: FreqLayout | None = None

    def __post_init__(self) -> None:
        if self.audio_freq > 0 and self.freq_layout is None:
            raise ValueError("a frequency mask needs the audio features' frequency layout")

    def apply(self, b: Batch, gen: torch.Generator) -> Batch:
        """``b`` with its masks (draw order: video time, audio time, audio frequency)."""
        video, audio = b.video, b.audio
        if self.video_time > 0:
            video = time_mask(video, b.video_mask.sum(1), self.video_time, gen)
        if self.audio_time > 0:
            audio = time_mask(audio, b.audio_mask.sum(1), self.audio_time, gen)
        if self.audio_freq > 0:
            audio = freq_mask(audio, b.audio_mask.sum(1), self.audio_freq, self.freq_layout, gen)
        return dataclasses.replace(b, video=video, audio=audio)


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


def _crop(batch: Batch, video_windows: list[Window], audio: torch.Tensor, tracks: list[int] | None,
          audio_windows: list[Window]) -> Batch:
    """One view: the batch's video cut to ``video_windows`` and the given audio track cut to
    ``audio_windows`` (clip i: window i)."""
    video, video_mask = _padded([batch.video[i, w.v0 : w.v0 + w.v_len] for i, w in enumerate(video_windows)])
    audio, audio_mask = _padded([audio[i, w.a0 : w.a0 + w.a_len] for i, w in enumerate(audio_windows)])
    return Batch(batch.clip_ids, batch.sources, video, video_mask, audio, audio_mask, tracks=tracks)


def make_quadruplets(
    batch: Batch,
    fps: list[float],
    seconds: float | None,
    gen: torch.Generator,
    *,
    audio_rate: float,
    windows: str,
    masks: ViewMasks = ViewMasks(),
) -> QuadBatch:
    """(v_p, a_p, v_s, a_s) views of every clip of a loader batch.

    fps[i]: video steps per second of clip i; audio_rate: audio steps per second. Per clip,
    :func:`window_pair` gives two windows (one when ``windows`` is 'same'), assigned to the
    views by ``windows`` (see WINDOW_MODES): a_p is ``batch.audio``, a_s ``batch.audio2``, or
    track 1 again when the batch has no second track. Windows are drawn on min(track 1,
    track 2) real audio steps, so that a window is valid in both tracks and both tracks
    cover the same time. Then ``masks``, the primary's then the secondary's, each drawn
    independently. Draw order: all windows (clip order), then the masks, so the windows do
    not depend on the masks; with 'same' the unmasked primary is exactly :func:`random_crop`'s
    crop for the same generator. Each view holds one track (its ``tracks`` names it: the batch's
    ``tracks`` for the primary, ``tracks2`` for the secondary; no ``audio2``). Outputs:
    prefix masks, zero padding, the input's dtype (float16 from the loader; ``.to()`` casts).
    """
    if len(fps) != len(batch):
        raise ValueError(f"{len(fps)} fps values for a batch of {len(batch)} clips")
    if windows not in WINDOW_MODES:
        raise ValueError(f"windows must be one of {WINDOW_MODES}, got {windows!r}")
    audio2, audio2_mask, tracks2 = batch.audio2, batch.audio2_mask, batch.tracks2
    if audio2 is None:
        audio2, audio2_mask, tracks2 = batch.audio, batch.audio_mask, batch.tracks
    n_video = batch.video_mask.sum(1).tolist()
    n_audio = torch.minimum(batch.audio_mask.sum(1), audio2_mask.sum(1)).tolist()
    pairs = [window_pair(n_video[i], n_audio[i], fps[i], seconds, gen, audio_rate=audio_rate,
                         same_window=windows == "same") for i in range(len(batch))]
    first, second = [w[0] for w in pairs], [w[1] for w in pairs]
    crossed = windows == "aligned"  # a_p in the secondary's window, a_s in the primary's
    primary = _crop(batch, first, batch.audio, batch.tracks, second if crossed else first)
    secondary = _crop(batch, second, audio2, tracks2, first if crossed else second)
    return QuadBatch(batch.clip_ids, batch.sources, masks.apply(primary, gen), masks.apply(secondary, gen))
