"""Latent sequences and pooled embeddings of one split: cache + trained model -> Latents.

Streams the split in cache order (``scav.core.loader.iter_eval_batches``), runs the
model's own ``forward`` and writes each clip's valid latent steps into preallocated flat
arrays: in RAM, or ``.npy`` files (memory-mapped) when exporting.

With interp='pre' training resamples each video (resample='video') to its partner
audio's length. Here a clip's latents must depend on the clip alone (a candidate
resampled to the length of the query it should match would carry that query's length),
so the resampled side takes a length of its own: the clip's duration x the other
modality's step rate (:func:`scav.model.clip_lengths.pre_lengths`).

Export layout (``save`` / :func:`load_export`), one folder per (split, checkpoint)::

    <cache>.retrieval/<split>-<checkpoint sha256[:12]>/
      video_seq.npy (sum T'_i, c) float32   video_offsets.npy (N + 1,) int64   video_emb.npy (N, c)
      audio_seq.npy (sum S'_i, c) float32   audio_offsets.npy (N + 1,) int64   audio_emb.npy (N, c)
      clips.json    clip ids in order       meta.json   checkpoint, step, encoders, objective,
                                            every file's size and crc32c, sealed

the stored-latents format of :mod:`scav.model.stored_latents` (a gallery index is the same
format with more files), written under a temporary name and renamed when complete, so a
folder that exists is whole; a later run with the same checkpoint and split reuses it
after the same integrity check as an index (a folder that fails it is recomputed).
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
from scav.core.loader import iter_eval_batches
from scav.core.schema import CacheError, CacheMeta, ClipInfo, TrackSelector
from scav.model.clip_lengths import pre_lengths
from scav.sequence.pooling import masked_mean
from scav.sequence.spec import resamples_video

from . import stored_latents as SL
from .latents import Latents

log = logging.getLogger(__name__)

RAM_WARN_BYTES = 8 << 30
# meta.json's "export_version": 2 = the 'pre' side at each clip's own length (pre_lengths);
# 3 = sealed (stored_latents); exports of other versions are recomputed, not reused
EXPORT_VERSION = 3


@dataclass
class SplitLatents:
    clip_ids: list[str]
    video: Latents
    audio: Latents
    folder: Path | None = None  # where they are stored when exported


def checkpoint_hash(path: str | os.PathLike) -> str:
    """sha256[:12] of the checkpoint file (names the export folder)."""
    return sha256_file(path)[:12]


def usable_clips(clips: list[ClipInfo], track: TrackSelector = 0) -> tuple[list[ClipInfo], list[ClipInfo]]:
    """(clips with video steps and steps in the selected audio track, the others): a clip
    without one side has no sequence to compare and is left out (with a warning by the caller)."""

    def usable(c: ClipInfo) -> bool:
        j = c.find_track(track)
        return c.n_video > 0 and j is not None and c.tracks[j].n_steps > 0

    ok = [c for c in clips if usable(c)]
    bad = [c for c in clips if not usable(c)]
    return ok, bad


def latent_lengths(clips: list[ClipInfo], objective, pre: np.ndarray | None,
                   track: TrackSelector = 0) -> tuple[np.ndarray, np.ndarray]:
    """Latent steps per clip (video, audio of the selected track): the stored steps, except the
    side that interp='pre' resamples, which has ``pre`` (from :func:`scav.model.clip_lengths.pre_lengths`)."""
    nv = np.array([c.n_video for c in clips], dtype=np.int64)
    na = np.array([c.n_audio_steps(track) for c in clips], dtype=np.int64)
    if pre is not None:
        if resamples_video(objective.resample):
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
    cache_path,  # a path or an open FeatureCache (validation passes its own: no reopening)
    meta: CacheMeta,
    split: str,
    clips: list[ClipInfo],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    folder: Path | None = None,
    progress=None,
    track: TrackSelector = 0,
) -> SplitLatents:
    """Encode ``clips`` (a split's usable clips, cache order) with ``model`` (eval mode).

    meta: the cache's metadata (step rates for 'pre' lengths, see :func:`scav.model.clip_lengths.pre_lengths`).

    folder: write ``.npy`` files there (memory-mapped) instead of RAM arrays.
    track: the audio track to encode (index or language tag, see ``scav.core.schema``).
    progress: optional callable(n_clips_done) for a progress bar.
    """
    ids = [c.clip_id for c in clips]
    pre = pre_lengths(clips, model.objective, meta)
    nv, na = latent_lengths(clips, model.objective, pre, track)
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
    for batch in iter_eval_batches(cache_path, split=split, clip_ids=ids, batch_size=batch_size, track=track):
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


def export_folder(root: Path, split: str, ckpt_hash: str, track: TrackSelector = 0) -> Path:
    """``<root>/<split>-<ckpt hash>`` for the first audio track, ``...-track-<sel>`` for another."""
    return root / (f"{split}-{ckpt_hash}" + ("" if track == 0 else f"-track-{track}"))


def load_export(folder: Path, clip_ids: list[str], dim: int | None = None) -> SplitLatents | None:
    """A complete earlier export for the same clips, memory-mapped, after the stored-latents
    check (:func:`scav.model.stored_latents.open_sealed`); None if absent, stale or damaged."""
    if not (folder / SL.META).exists():
        return None
    try:
        meta = SL.open_sealed(folder, "export")
        if meta.get("export_version") != EXPORT_VERSION:
            log.warning("%s was exported by an older SCAV (latents of another layout); recomputing", folder)
            return None
        if SL.read_small_json(folder / "clips.json", "the export's clips.json", 1 << 34) != clip_ids:
            log.warning("%s was exported for other clips; recomputing", folder)
            return None
        video, audio = (SL.load_latents(folder, m, dim=dim) for m in SL.MODALITIES)
    except SL.StoredLatentsError as e:
        log.warning("%s cannot be reused (%s); recomputing", folder, e)
        return None
    if not len(video) == len(audio) == len(clip_ids):
        log.warning("%s holds %d/%d clips, not %d; recomputing", folder, len(video), len(audio), len(clip_ids))
        return None
    return SplitLatents(clip_ids, video, audio, folder)


def embed_and_export(model, cache_path, meta: CacheMeta, split, clips, final: Path, export_meta: dict, **kw) -> SplitLatents:
    """embed_split into ``final`` (written as ``final``.tmp-<pid>, renamed when complete),
    with ``clips.json`` and ``meta.json`` (= export_meta)."""
    remove_stale_tmp(final)
    with atomic_path(final) as tmp:  # a stale export of other clips at ``final`` is replaced
        tmp.mkdir()
        lat = embed_split(model, cache_path, meta, split, clips, folder=tmp, **kw)
        (tmp / "clips.json").write_text(json.dumps(lat.clip_ids))
        del lat  # close the write maps before sealing
        SL.seal(tmp, {**export_meta, "export_version": EXPORT_VERSION})
    out = load_export(final, [c.clip_id for c in clips])
    if out is None:
        raise CacheError(f"{final}: the export just written does not read back")
    return out
