"""Search queries: clips of the cache, or media files encoded on the fly, as latents.

Cache clips are encoded exactly as a gallery is (:func:`scav.model.embed.embed_split`).
A media file is decoded (``scav.extract.decode``) and encoded with the encoders the cache's
meta names (stand-ins need no weights; CLIP / BEATs need the files ``scav-extract`` took,
checked against the weights' sha256 the cache recorded), its features rounded to the cache's
float16 as the cache stores them, then run through the model alone (no padding). Each query's
lengths are its own (interp='pre': ``scav.model.clip_lengths.pre_lengths``), so a media file
and the cache clip extracted from it give the same latents.

Every problem (an unknown clip id, a file that does not decode, missing or other weights)
is a :class:`QueryError` raised before anything is searched or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scav.core.cache import FeatureCache, new_meta
from scav.core.schema import (
    FEATURE_DTYPE,
    AudioTrack,
    CacheMeta,
    ClipInfo,
    TrackSelector,
    require_same_encoders,
)
from scav.model import embed
from scav.model.clip_lengths import pre_lengths
from scav.model.latents import Latents

_SHOW = 20  # ids listed in a message


class QueryError(ValueError):
    """Queries that cannot be used; the message names them."""


@dataclass
class Query:
    """What a result record says about its query (``media`` set for a file, ``clip_id`` for a clip)."""

    clip_id: str | None
    media: str | None
    split: str | None
    label: str | None
    source: str | None
    path: str | None
    start: float | None
    end: float | None


@dataclass
class Queries:
    items: list[Query]
    video: Latents
    audio: Latents


def _listing(ids: list[str]) -> str:
    more = f" and {len(ids) - _SHOW} more" if len(ids) > _SHOW else ""
    return ", ".join(ids[:_SHOW]) + more


def take_latents(lat: Latents, idx: list[int] | np.ndarray) -> Latents:
    """Clips ``idx`` of ``lat`` (any order, repeats allowed) as a new RAM store, values copied exactly."""
    idx = np.asarray(idx, dtype=np.int64)
    lengths = lat.lengths[idx]
    offsets = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rows = np.concatenate([np.arange(lat.offsets[i], lat.offsets[i + 1]) for i in idx]) if len(idx) else np.zeros(0, np.int64)
    seq = np.asarray(lat.seq[rows], dtype=np.float32).reshape(-1, lat.dim)
    return Latents(seq, offsets, np.asarray(lat.emb[idx], dtype=np.float32))


def concat_latents(parts: list[Latents], dim: int) -> Latents:
    """Stores one after the other (queries of several kinds)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Latents(np.zeros((0, dim), np.float32), np.zeros(1, np.int64), np.zeros((0, dim), np.float32))
    lengths = np.concatenate([p.lengths for p in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Latents(np.concatenate([np.asarray(p.seq, np.float32) for p in parts]), offsets,
                   np.concatenate([np.asarray(p.emb, np.float32) for p in parts]))


# ----------------------------------------------------------------------------- cache clips


def read_ids_file(path: str | Path) -> list[str]:
    """Clip ids, one per line (blank lines and '#' comments skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise QueryError(f"cannot read the query id file {path}: {e}") from None
    ids = [line.strip() for line in text.splitlines()]
    ids = [i for i in ids if i and not i.startswith("#")]
    if not ids:
        raise QueryError(f"the query id file {path} lists no clip ids")
    return ids


def resolve_clips(cache: FeatureCache, ids: list[str], track: TrackSelector) -> list[ClipInfo]:
    """ClipInfo of each id, in the order given; every unknown id (or one without the selected
    audio track or without video) named in one QueryError."""
    unknown = list(dict.fromkeys(i for i in ids if i not in cache))
    if unknown:
        raise QueryError(f"{len(unknown)} query clip id(s) not in {cache.path}: {_listing(unknown)}")
    infos = [cache.info(i) for i in ids]
    ok, bad = embed.usable_clips(list({c.clip_id: c for c in infos}.values()), track)
    if bad:
        raise QueryError(f"{len(bad)} query clip(s) lack video steps or audio track {track!r}: "
                         f"{_listing([c.clip_id for c in bad])}")
    return infos


def clip_items(infos: list[ClipInfo]) -> list[Query]:
    return [Query(c.clip_id, None, c.split, c.label, c.source, c.path, c.start, c.end) for c in infos]


def encode_clips(model, cache: FeatureCache, infos: list[ClipInfo], **embed_kw) -> tuple[Latents, Latents]:
    """Latents of ``infos`` in the order given (each distinct clip encoded once, in cache order)."""
    order = {cid: n for n, cid in enumerate(c.clip_id for c in cache.clips())}
    distinct = sorted({c.clip_id: c for c in infos}.values(), key=lambda c: order[c.clip_id])
    lat = embed.embed_split(model, cache.path, cache.meta, None, distinct, **embed_kw)
    at = {c.clip_id: n for n, c in enumerate(distinct)}
    idx = [at[c.clip_id] for c in infos]
    return take_latents(lat.video, idx), take_latents(lat.audio, idx)


# ----------------------------------------------------------------------------- media files


@dataclass
class DecodedMedia:
    path: Path
    clip: object  # scav.extract.decode.DecodedClip
    info: ClipInfo  # what pre_lengths needs: duration, fps, steps
    track: int | None  # position of the selected audio track in clip.audio; None: a video-only query


def _extract_import():
    try:
        from scav.extract import decode, encoders  # noqa: F401
    except ImportError as e:
        raise QueryError(f"--query-media needs the decoding extra (pip install 'scav[extract]'): {e}") from None
    return decode, encoders


def decode_media(paths: list[str | Path], track: TrackSelector, need_audio: bool = True) -> list[DecodedMedia]:
    """Decode each file whole; a file that does not decode, or lacks the audio track, is a QueryError.
    need_audio False (video queries, v2a): a file without that audio track is a video-only query."""
    decode, encoders = _extract_import()
    out = []
    for p in paths:
        p = Path(p)
        try:
            clip = decode.decode_clip(p, require_audio=need_audio)
        except decode.DecodeError as e:
            raise QueryError(f"cannot decode query media {p}: {e}") from None
        n_audio = [encoders.audio_steps(len(a.samples)) for a in clip.audio]
        tracks = [AudioTrack(index=int(a.index), language=a.language, n_steps=n) for a, n in zip(clip.audio, n_audio)]
        info = ClipInfo(clip_id=str(p), split="", path=str(p), start=clip.start, end=clip.end, fps=clip.fps,
                        duration=clip.duration, n_video=len(clip.frames), tracks=tracks)
        j = info.find_track(track)
        if not need_audio and (j is None or tracks[j].n_steps == 0):
            if len(clip.frames) == 0:
                raise QueryError(f"query media {p} has no video frames")
            out.append(DecodedMedia(p, clip, info, None))
            continue
        if j is None:
            raise QueryError(f"query media {p} has no audio track {track!r} ({len(tracks)} audio track(s))")
        if tracks[j].n_steps == 0:
            raise QueryError(f"query media {p}: audio track {track!r} is too short for one audio step")
        out.append(DecodedMedia(p, clip, info, j))
    return out


def media_items(decoded: list[DecodedMedia]) -> list[Query]:
    return [Query(None, str(d.path), None, None, None, str(d.path), d.info.start, d.info.end) for d in decoded]


def build_encoders(meta: CacheMeta, clip_weights: str | None, beats_ckpt: str | None, device: str = "cpu"):
    """(video, audio) encoders that produce this cache's features; QueryError if the weights
    are missing or are not the ones the cache was extracted with (sha256, preprocessing)."""
    _, enc = _extract_import()
    v, a = meta.video, meta.audio
    if v.name not in enc.VIDEO_ENCODERS or a.name not in enc.AUDIO_ENCODERS:
        raise QueryError(f"the cache's encoders (video={v.name}, audio={a.name}) cannot be built here; "
                         f"known: {enc.VIDEO_ENCODERS}, {enc.AUDIO_ENCODERS}")
    if not a.stand_in and beats_ckpt is None:
        raise QueryError(f"the cache's audio features come from {a.name} (sha256 {a.checksum}); "
                         "pass that checkpoint with --beats-ckpt FILE to encode query media")
    preprocess = "pil" if v.preprocessing.get("resize_backend", "PIL") == "PIL" else "tensor"
    try:
        venc = enc.build_video_encoder(v.name, weights=clip_weights, device=device, preprocess=preprocess)
        aenc = enc.build_audio_encoder(a.name, weights=beats_ckpt, device=device, expected_sha256=a.checksum)
    except (FileNotFoundError, ValueError, OSError, ImportError) as e:
        raise QueryError(f"cannot build the cache's encoders for query media: {e}") from None
    require_same_encoders(meta, new_meta(venc.info, aenc.info), "the cache", "--clip-weights / --beats-ckpt give",
                          "these are not the ones the cache was extracted with: give the weights it records",
                          error=QueryError)
    return venc, aenc


@torch.no_grad()
def encode_media(model, meta: CacheMeta, decoded: list[DecodedMedia], venc, aenc,
                 device: str | torch.device = "cpu") -> tuple[Latents, Latents]:
    """Latents of each decoded file, encoded alone (features rounded to the cache's float16)."""
    _, enc = _extract_import()
    dev = torch.device(device)
    model.eval()
    per = {"video": [], "audio": []}
    for d in decoded:
        try:
            video = np.asarray(venc.encode(d.clip.frames))
            # a video-only query: one silent audio step stands in (the towers are separate; only
            # the video latents of such a query are used, as a v2a query)
            audio = (np.asarray(aenc.encode(d.clip.audio[d.track].samples)) if d.track is not None
                     else np.zeros((1, meta.audio.dim), np.float32))
        except enc.EncodeError as e:
            raise QueryError(f"cannot encode query media {d.path}: {e}") from None
        v = torch.from_numpy(video.astype(FEATURE_DTYPE).astype(np.float32))[None].to(dev)  # (1, T, Dv)
        a = torch.from_numpy(audio.astype(FEATURE_DTYPE).astype(np.float32))[None].to(dev)  # (1, S, Da)
        d.info.n_video = v.shape[1]
        if d.track is not None:
            d.info.tracks[d.track].n_steps = a.shape[1]
        pre = pre_lengths([d.info], model.objective, meta)
        own = None if pre is None else torch.from_numpy(pre).to(dev)
        out = model(v, torch.ones(v.shape[:2], dtype=torch.bool, device=dev),
                    a, torch.ones(a.shape[:2], dtype=torch.bool, device=dev), pre_lengths=own)
        for m in ("video", "audio"):
            per[m].append(Latents.from_padded(out[f"{m}_seq"].float(), out[f"{m}_mask"]))
    c = int(model.cfg.c)
    result = [concat_latents(per[m], c) for m in ("video", "audio")]
    return result[0], result[1]
