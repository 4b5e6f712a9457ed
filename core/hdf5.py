"""HDF5 exchange: export a feature cache to one .h5 file, import one into a cache.

Layout (all attributes are numbers or UTF-8 strings; nothing is pickled)::

    /                       attrs: format="scav-features", format_version=1,
                                   scav=<CacheMeta JSON>  (written by export)
                            or, for features made elsewhere, the minimum:
                                   video_encoder=<name>, audio_encoder=<name>
                                   (optional: video_checksum, audio_checksum)
    /clips/<name>/          one group per clip; <name> = clip_id with "%" -> "%25", "/" -> "%2F"
        video               (T, Dv) float16 (any float is cast to float16)
        video_times         (T,) float64 seconds            [optional: else arange(T) / fps]
        audio/t0, t1, ...   (S_j, Da) float16, one per audio track; attrs language (tag, "" = none)
                            and original (1 = the original-language track), read back when
                            the clip has no info JSON
        (or audio)          (S, Da) a single dataset instead of the group
        attrs               split (required), clip_id, label, source, path, fps, duration,
                            start, end (NaN = none), info=<ClipInfo JSON> (written by export;
                            when present it is the clip table row, step counts re-checked)

Import validates the whole file before writing: missing datasets, wrong
ranks, empty sequences (a clip needs >= 1 video step and >= 1 step per audio
track), NaN/Inf values, times that do not match the frames and feature sizes
that differ from the encoders (their recorded size, or the known size of a
named encoder) each give a :class:`CacheError` naming the file and the clip,
and nothing is written.  A cache the import created is removed again if the
import fails.  Clips already in the target cache are skipped (dedupe by clip_id).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from .cache import CacheWriter, ClipRecord, FeatureCache, new_meta
from .files import atomic_path
from .schema import (
    AUDIO,
    ROOT_KEY,
    SCHEMA_MINOR,
    VIDEO,
    AudioTrack,
    CacheError,
    CacheLayout,
    CacheMeta,
    ClipInfo,
    EncoderInfo,
    audio_track_name,
    require_same_encoders,
)

log = logging.getLogger(__name__)

FORMAT = "scav-features"
FORMAT_VERSION = 1


def _group_name(clip_id: str) -> str:
    return clip_id.replace("%", "%25").replace("/", "%2F")


def _clip_id_of(name: str) -> str:
    return name.replace("%2F", "/").replace("%25", "%")


def export_h5(cache_path: str | os.PathLike, out: str | os.PathLike, split: str | None = None) -> int:
    """Write the cache's clips (or one split) to ``out``; returns the number of clips."""
    import h5py

    cache = FeatureCache.open(cache_path)
    clips = cache.require_split(split) if split is not None else cache.clips()
    out = Path(out)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs[ROOT_KEY] = json.dumps(cache.meta.to_dict())
        f.attrs["video_encoder"] = cache.meta.video.name
        f.attrs["audio_encoder"] = cache.meta.audio.name
        root = f.create_group("clips")
        for info in clips:
            g = root.create_group(_group_name(info.clip_id))
            feats = cache.get(info.clip_id)
            g.create_dataset(VIDEO, data=feats.video)
            g.create_dataset("video_times", data=np.asarray(feats.video_times, dtype=np.float64))
            ag = g.create_group(AUDIO)
            ag.create_dataset(audio_track_name(0), data=feats.audio)
            pi, row = cache.locate(info.clip_id)
            for j in range(1, len(info.tracks)):  # the other tracks alone: the video is read once
                ag.create_dataset(audio_track_name(j), data=cache.parts[pi].read(row, AUDIO, j))
            for j, t in enumerate(info.tracks):  # also in the info JSON; here for readers of plain HDF5
                ag[audio_track_name(j)].attrs["language"] = t.language or ""
                ag[audio_track_name(j)].attrs["original"] = np.int8(bool(t.original))
            g.attrs["clip_id"] = info.clip_id
            g.attrs["info"] = json.dumps(info.to_dict())
            for key in ("split", "label", "source", "path"):
                g.attrs[key] = getattr(info, key)
            g.attrs["fps"] = info.fps
            g.attrs["duration"] = info.duration
            g.attrs["start"] = math.nan if info.start is None else info.start
            g.attrs["end"] = math.nan if info.end is None else info.end
    return len(clips)


def _str_attr(attrs, key: str, default: str | None = None) -> str | None:
    if key not in attrs:
        return default
    v = attrs[key]
    return v.decode() if isinstance(v, bytes) else str(v)


def _float_attr(attrs, key: str) -> float | None:
    if key not in attrs:
        return None
    v = float(attrs[key])
    return None if math.isnan(v) else v


def _file_meta(f, path: Path) -> CacheMeta | tuple[str, str, dict]:
    """The file's CacheMeta, or (video name, audio name, checksums) for a minimal file."""
    meta_json = _str_attr(f.attrs, ROOT_KEY)
    if meta_json is not None:
        try:
            return CacheMeta.from_dict(json.loads(meta_json))
        except json.JSONDecodeError as e:
            raise CacheError(f"{path}: root attribute '{ROOT_KEY}' is not JSON: {e}") from e
    names = _str_attr(f.attrs, "video_encoder"), _str_attr(f.attrs, "audio_encoder")
    if None in names:
        raise CacheError(
            f"{path}: root attributes must name the encoders: 'scav' (CacheMeta JSON) or "
            "'video_encoder' and 'audio_encoder'"
        )
    sums = {m: _str_attr(f.attrs, f"{m}_checksum") for m in (VIDEO, AUDIO)}
    return names[0], names[1], sums


def _read_clip(g, name: str, path: Path) -> tuple[ClipInfo, np.ndarray, np.ndarray, list[np.ndarray]]:
    """One clip group -> (info, video, times, audio tracks); arrays are h5py datasets until sliced."""
    where = f"{path}: clip {name!r}"
    if VIDEO not in g:
        raise CacheError(f"{where}: missing dataset 'video' (T, D_video)")
    if AUDIO not in g:
        raise CacheError(f"{where}: missing dataset or group 'audio'")
    video = g[VIDEO]
    if video.ndim != 2:
        raise CacheError(f"{where}: 'video' must be 2-D (T, D_video), has shape {video.shape}")
    a = g[AUDIO]
    if hasattr(a, "keys"):
        tracks = []
        j = 0
        while audio_track_name(j) in a:
            tracks.append(a[audio_track_name(j)])
            j += 1
        if not tracks:
            raise CacheError(f"{where}: group 'audio' has no track 't0'")
    else:
        tracks = [a]
    for j, t in enumerate(tracks):
        if t.ndim != 2:
            raise CacheError(f"{where}: audio track {j} must be 2-D (S, D_audio), has shape {t.shape}")
    split = _str_attr(g.attrs, "split")
    if not split:
        raise CacheError(f"{where}: missing attribute 'split'")
    info_json = _str_attr(g.attrs, "info")
    if info_json is not None:
        info = ClipInfo.from_dict(json.loads(info_json))
    else:
        info = ClipInfo(
            clip_id=_str_attr(g.attrs, "clip_id", _clip_id_of(name)),
            split=split,
            label=_str_attr(g.attrs, "label", ""),
            source=_str_attr(g.attrs, "source", ""),
            path=_str_attr(g.attrs, "path", ""),
            start=_float_attr(g.attrs, "start"),
            end=_float_attr(g.attrs, "end"),
            fps=_float_attr(g.attrs, "fps") or 0.0,
            duration=_float_attr(g.attrs, "duration") or 0.0,
        )
    if info_json is None:  # per-track attributes of a file made elsewhere (or by an export)
        info = replace(info, tracks=[
            AudioTrack(j, _str_attr(t.attrs, "language") or None, 0, bool(t.attrs.get("original", 0)))
            for j, t in enumerate(tracks)])
    n = video.shape[0]
    if "video_times" in g:
        times = g["video_times"]
        if times.shape != (n,):
            raise CacheError(f"{where}: 'video_times' has shape {times.shape}, expected ({n},) like 'video'")
    elif info.fps > 0:
        times = np.arange(n, dtype=np.float64) / info.fps
    else:
        raise CacheError(f"{where}: needs 'video_times' (T,) or an 'fps' attribute")
    info = replace(
        info,
        n_video=n,
        tracks=[
            AudioTrack(
                index=info.tracks[j].index if j < len(info.tracks) else j,
                language=info.tracks[j].language if j < len(info.tracks) else None,
                n_steps=int(t.shape[0]),
                original=info.tracks[j].original if j < len(info.tracks) else False,
            )
            for j, t in enumerate(tracks)
        ],
    )
    return info, video, times, tracks


def import_h5(in_h5: str | os.PathLike, out: str | os.PathLike, part_clips: int | None = None) -> dict:
    """Add the file's clips to cache ``out`` (created if absent); returns {'imported', 'skipped'}.

    The encoders must match the cache's: the full identity when the file carries
    ``scav`` metadata, else name and feature size.
    """
    import h5py

    in_h5, out = Path(in_h5), Path(out)
    if not in_h5.is_file():
        raise CacheError(f"no HDF5 file at {in_h5}")
    try:
        f = h5py.File(in_h5, "r")
    except OSError as e:
        raise CacheError(f"{in_h5} is not a readable HDF5 file: {e}") from e
    with f:
        if "clips" not in f:
            raise CacheError(f"{in_h5}: no group '/clips'")
        clips = [_read_clip(f["clips"][name], name, in_h5) for name in f["clips"]]
        meta = _target_meta(_file_meta(f, in_h5), clips, out, in_h5, part_clips)
        for info, video, times, tracks in clips:
            _check_dims(info.clip_id, video.shape[1], meta.video, VIDEO, in_h5)
            for t in tracks:
                _check_dims(info.clip_id, t.shape[1], meta.audio, AUDIO, in_h5)
            _check_values(info.clip_id, video, times, tracks, in_h5)
        created = not (out / "zarr.json").exists()
        try:
            with CacheWriter.create_or_open(out, meta) as writer:
                return _write_clips(writer, clips, out, part_clips)
        except BaseException:
            if created and (out / "zarr.json").exists():
                shutil.rmtree(out, ignore_errors=True)  # a failed import leaves nothing behind
            raise


def _write_clips(writer: CacheWriter, clips, out: Path, part_clips: int | None) -> dict:
    present = {c.clip_id for c in FeatureCache.open(out).clips()}
    size = part_clips or writer.meta.layout.part_clips
    batch: list[ClipRecord] = []
    imported = skipped = 0
    for info, video, times, tracks in clips:
        if info.clip_id in present:
            skipped += 1
            continue
        present.add(info.clip_id)
        batch.append(
            ClipRecord(
                info,
                np.asarray(video[:], dtype=np.float16),
                np.asarray(times[:], dtype=np.float64),
                [np.asarray(t[:], dtype=np.float16) for t in tracks],
            )
        )
        if len(batch) >= size:
            writer.write_part(batch)
            imported += len(batch)
            batch = []
    writer.write_part(batch)
    imported += len(batch)
    return {"imported": imported, "skipped": skipped}


def _check_values(clip_id: str, video, times, tracks, path: Path) -> None:
    """Lengths >= 1 and finite values, as stored (float16: values beyond 65504 become Inf)."""
    where = f"{path}: clip {clip_id!r}"
    if video.shape[0] < 1:
        raise CacheError(f"{where}: 'video' has no steps (a clip needs at least one)")
    for j, t in enumerate(tracks):
        if t.shape[0] < 1:
            raise CacheError(f"{where}: audio track {j} has no steps (a clip needs at least one)")
    for name, x in [("video", video), *((f"audio track {j}", t) for j, t in enumerate(tracks))]:
        with np.errstate(over="ignore"):  # overflow to Inf is what is being checked
            stored = np.asarray(x[:], dtype=np.float16)
        if not np.isfinite(stored).all():
            raise CacheError(f"{where}: {name} holds NaN or Inf values (or values too large for float16)")
    if not np.isfinite(np.asarray(times[:], dtype=np.float64)).all():
        raise CacheError(f"{where}: 'video_times' holds NaN or Inf values")


# Feature sizes of the encoders SCAV knows by name (core must not import extract/): a file
# that names one of them with another size is refused, not stored as a contradiction.
KNOWN_DIMS = {"clip-vit-b32": 768, "beats-iter3-as2m": 6144}  # CLIP hidden size; BEATs 8 x 768 stacked


def _check_dims(clip_id: str, dim: int, enc: EncoderInfo, modality: str, path: Path) -> None:
    known = KNOWN_DIMS.get(enc.name)
    if known is not None and dim != known:
        raise CacheError(
            f"{path}: clip {clip_id!r} has {modality} features of size {dim}, but encoder {enc.name!r} "
            f"gives {known}"
        )
    if dim != enc.dim:
        raise CacheError(
            f"{path}: clip {clip_id!r} has {modality} features of size {dim}, but the {modality} "
            f"encoder {enc.label} gives {enc.dim}"
        )


def _target_meta(file_meta, clips, out: Path, path: Path, part_clips: int | None) -> CacheMeta:
    """The cache meta to write with; refuses a cache whose encoders differ from the file's."""
    existing = None
    if (out / "zarr.json").exists():
        existing = FeatureCache.open(out).meta
    if isinstance(file_meta, CacheMeta):
        if existing is not None:
            require_same_encoders(existing, file_meta, str(out), f"{path} holds",
                                  "Import into a new cache, or a cache of the same encoders.")
        if existing is None:  # a new cache is written the current way (checksums), whatever the source had
            layout = replace(file_meta.layout, checksums=True, part_clips=part_clips or file_meta.layout.part_clips)
            file_meta = replace(file_meta, layout=layout, schema_minor=SCHEMA_MINOR)
        return existing or file_meta
    vname, aname, sums = file_meta
    if existing is not None:
        for mod, name, enc in ((VIDEO, vname, existing.video), (AUDIO, aname, existing.audio)):
            if name != enc.name or (sums[mod] and enc.checksum and sums[mod] != enc.checksum):
                raise CacheError(f"{path} names {mod} encoder {name!r}; {out} holds {enc.label} features")
        return existing
    if not clips:
        raise CacheError(f"{path}: no clips, and no 'scav' metadata to create a cache from")
    vdim = int(clips[0][1].shape[1])
    adim = int(clips[0][3][0].shape[1])
    layout = CacheLayout(part_clips=part_clips) if part_clips else None
    return new_meta(
        EncoderInfo(vname, vdim, checksum=sums[VIDEO]), EncoderInfo(aname, adim, checksum=sums[AUDIO]), layout
    )
