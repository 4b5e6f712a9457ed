"""Latent sequences and pooled embeddings of one split: cache + trained model -> Latents.

Streams the split in cache order (``scav.core.loader.iter_eval_batches``), runs the
model's own ``forward`` and writes each clip's valid latent steps into preallocated flat
arrays: in RAM, or ``.npy`` files (memory-mapped) when exporting.

With interp='pre' training resamples each video (resample='video') to its partner
audio's length. Here a clip's latents must depend on the clip alone (a candidate
resampled to the length of the query it should match would carry that query's length),
so the resampled side takes a length of its own: the clip's duration x the other
modality's step rate (:func:`pre_lengths`).

Export layout (``save`` / :func:`load_export`), one folder per (split, checkpoint)::

    <cache>.retrieval/<split>-<checkpoint sha256[:12]>/
      video_seq.npy (sum T'_i, c) float32   video_offsets.npy (N + 1,) int64   video_emb.npy (N, c)
      audio_seq.npy (sum S'_i, c) float32   audio_offsets.npy (N + 1,) int64   audio_emb.npy (N, c)
      clips.json    clip ids in order       meta.json   checkpoint, step, encoders, objective

written under a temporary name and renamed when complete, so a folder that exists
is whole; a later run with the same checkpoint and split reuses it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scav.core.files import atomic_path, remove_stale_tmp, sha256_file
from scav.core.schema import CacheError, CacheMeta, ClipInfo

from scav.sequence.pooling import masked_mean

from .search import Latents

log = logging.getLogger(__name__)

RAM_WARN_BYTES = 8 << 30
# meta.json's "export_version": 2 = the 'pre' side at each clip's own length (pre_lengths);
# exports without it (partner lengths) are recomputed, not reused
EXPORT_VERSION = 2


@dataclass
class SplitLatents:
    clip_ids: list[str]
    video: Latents
    audio: Latents
    folder: Path | None = None  # where they are stored when exported


def checkpoint_hash(path: str | os.PathLike) -> str:
    """sha256[:12] of the checkpoint file (names the export folder)."""
    return sha256_file(path)[:12]


def usable_clips(clips: list[ClipInfo]) -> tuple[list[ClipInfo], list[ClipInfo]]:
    """(clips with both video and audio steps, the others): a clip without one side
    has no sequence to compare and is left out (with a warning by the caller)."""
    ok = [c for c in clips if c.n_video > 0 and c.n_audio > 0]
    bad = [c for c in clips if not (c.n_video > 0 and c.n_audio > 0)]
    return ok, bad


def _own_duration(clip: ClipInfo) -> float:
    """Seconds of the clip's range; for caches that record none, its frames over its fps."""
    if clip.duration > 0:
        return clip.duration
    if clip.fps > 0 and clip.n_video > 0:
        return clip.n_video / clip.fps
    raise CacheError(f"clip {clip.clip_id} records neither a duration nor a frame rate")


def pre_lengths(clips: list[ClipInfo], objective, meta: CacheMeta) -> np.ndarray | None:
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
        if objective.resample == "video":
            rate = meta.audio.steps_per_second
            if not rate:
                raise CacheError(f"the audio encoder {meta.audio.name} records no steps_per_second")
        else:
            rate = meta.video.steps_per_second or c.fps
            if not rate:
                raise CacheError(f"clip {c.clip_id} records no fps and the video encoder no step rate")
        out[i] = max(1, int(round(_own_duration(c) * rate)))
    return out


def latent_lengths(clips: list[ClipInfo], objective, pre: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Latent steps per clip (video, audio): the stored steps, except the side that
    interp='pre' resamples, which has ``pre`` (from :func:`pre_lengths`)."""
    nv = np.array([c.n_video for c in clips], dtype=np.int64)
    na = np.array([c.n_audio for c in clips], dtype=np.int64)
    if pre is not None:
        if objective.resample == "video":
            nv = pre.copy()
        else:
            na = pre.copy()
    return nv, na


def _offsets(lengths: np.ndarray) -> np.ndarray:
    off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    return off


def _alloc(shape, folder: Path | None, name: str) -> np.ndarray:
    if folder is None:
        return np.empty(shape, dtype=np.float32)
    return np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32, shape=shape)


@torch.no_grad()
def embed_split(
    model,
    cache_path: str | os.PathLike,
    meta: CacheMeta,
    split: str,
    clips: list[ClipInfo],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    folder: Path | None = None,
    progress=None,
) -> SplitLatents:
    """Encode ``clips`` (a split's usable clips, cache order) with ``model`` (eval mode).

    meta: the cache's metadata (step rates for 'pre' lengths, see :func:`pre_lengths`).

    folder: write ``.npy`` files there (memory-mapped) instead of RAM arrays.
    progress: optional callable(n_clips_done) for a progress bar.
    """
    from scav.core.loader import iter_eval_batches

    ids = [c.clip_id for c in clips]
    pre = pre_lengths(clips, model.objective, meta)
    nv, na = latent_lengths(clips, model.objective, pre)
    voff, aoff = _offsets(nv), _offsets(na)
    c = int(model.cfg.c)
    need = 4 * c * (int(voff[-1]) + int(aoff[-1]) + 2 * len(ids))
    if folder is None and need > RAM_WARN_BYTES:
        log.warning("latents of %s need %.1f GiB of RAM; --export keeps them on disk (memory-mapped)", split, need / 2**30)
    arrays = {}
    for m, off in (("video", voff), ("audio", aoff)):
        arrays[f"{m}_seq"] = _alloc((int(off[-1]), c), folder, f"{m}_seq")
        arrays[f"{m}_emb"] = _alloc((len(ids), c), folder, f"{m}_emb")
    model.eval()
    dev = torch.device(device)
    done = 0
    for batch in iter_eval_batches(str(cache_path), split=split, clip_ids=ids, batch_size=batch_size):
        if batch.clip_ids != ids[done : done + len(batch)]:
            raise CacheError(f"cache order changed while reading {split}: expected {ids[done]}, got {batch.clip_ids[0]}")
        b = batch.to(dev)
        own = None if pre is None else torch.from_numpy(pre[done : done + len(batch)]).to(dev)
        out = model(b.video, b.video_mask, b.audio, b.audio_mask, pre_lengths=own)
        for m, off in (("video", voff), ("audio", aoff)):
            seq, mask = out[f"{m}_seq"].float(), out[f"{m}_mask"]
            lens = mask.sum(1).cpu().numpy()
            want = np.diff(off)[done : done + len(batch)]
            if not np.array_equal(lens, want):
                raise CacheError(f"{m} steps of {split} do not match the clip table (got {lens}, expected {want})")
            emb = masked_mean(seq, mask)  # the model's own pooling (its video_emb / audio_emb)
            flat = seq[mask].cpu().numpy()  # valid steps, clip after clip
            arrays[f"{m}_seq"][off[done] : off[done + len(batch)]] = flat
            arrays[f"{m}_emb"][done : done + len(batch)] = emb.cpu().numpy()
        done += len(batch)
        if progress is not None:
            progress(len(batch))
    if done != len(ids):
        raise CacheError(f"read {done} of {len(ids)} clips of {split}")
    if folder is not None:
        for a in arrays.values():
            a.flush()
        np.save(folder / "video_offsets.npy", voff)
        np.save(folder / "audio_offsets.npy", aoff)
    video = Latents(arrays["video_seq"], voff, arrays["video_emb"])
    audio = Latents(arrays["audio_seq"], aoff, arrays["audio_emb"])
    return SplitLatents(ids, video, audio, folder)


def export_folder(root: Path, split: str, ckpt_hash: str) -> Path:
    return root / f"{split}-{ckpt_hash}"


def load_export(folder: Path, clip_ids: list[str]) -> SplitLatents | None:
    """A complete earlier export for the same clips, memory-mapped; None if absent/stale."""
    try:
        stored = json.loads((folder / "clips.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if stored != clip_ids:
        log.warning("%s was exported for other clips; recomputing", folder)
        return None
    try:
        version = json.loads((folder / "meta.json").read_text()).get("export_version")
    except (OSError, json.JSONDecodeError):
        version = None
    if version != EXPORT_VERSION:
        log.warning("%s was exported by an older SCAV (latents of another layout); recomputing", folder)
        return None
    return SplitLatents(clip_ids, Latents.load(folder, "video"), Latents.load(folder, "audio"), folder)


def embed_and_export(model, cache_path, meta: CacheMeta, split, clips, final: Path, export_meta: dict, **kw) -> SplitLatents:
    """embed_split into ``final`` (written as ``final``.tmp-<pid>, renamed when complete),
    with ``clips.json`` and ``meta.json`` (= export_meta)."""
    remove_stale_tmp(final)
    with atomic_path(final) as tmp:  # a stale export of other clips at ``final`` is replaced
        tmp.mkdir()
        lat = embed_split(model, cache_path, meta, split, clips, folder=tmp, **kw)
        (tmp / "clips.json").write_text(json.dumps(lat.clip_ids))
        (tmp / "meta.json").write_text(
            json.dumps({**export_meta, "export_version": EXPORT_VERSION}, indent=2, sort_keys=True)
        )
        del lat  # close the write maps before the rename
    out = load_export(final, [c.clip_id for c in clips])
    assert out is not None
    return out
