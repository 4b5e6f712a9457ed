"""A gallery to search: latents of a set of cache clips, in RAM or saved as a reusable index.

``scav-retrieve index`` saves one folder (written as a temporary sibling, renamed when whole)::

    <cache>.retrieval/index-<checkpoint sha256[:12]>-<cache fingerprint[:8]>[-<splits>][-track-<t>]/
      video_seq.npy video_offsets.npy video_emb.npy   latents, as model/embed.py exports them
      audio_seq.npy audio_offsets.npy audio_emb.npy   (memory-mapped when loaded)
      video_norm.npy audio_norm.npy   (N, c) float32 pooled embeddings, L2-normalised (first stage)
      clips.json     the clip-table columns results show: clip_id split label source path start end
      ann-<modality>-<ivf|hnsw>.faiss  optional approximate first-stage indexes (index --ann)
      meta.json      format + format_version, checkpoint (sha256[:12], step), cache (fingerprint,
                     its meta: encoders), objective, gallery splits, audio track, clip count, ann

``search --index`` then encodes only the queries. Loading refuses an index of another format
version (rebuild it); :func:`check_index` refuses one built with another checkpoint, cache
fingerprint (encoders) or audio track.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scav.core.files import atomic_path, remove_stale_tmp
from scav.core.schema import CacheMeta, ClipInfo, TrackSelector, format_identity_diff
from scav.model import embed
from scav.model.latents import Latents

from scav import __version__

from .first_stage import FirstStageConfig, normalize_rows

INDEX_FORMAT = "scav-gallery-index"
INDEX_VERSION = 1  # bump when the layout changes; older indexes are refused (rebuild)
MODALITIES = ("video", "audio")
CLIP_COLUMNS = ("clip_id", "split", "label", "source", "path", "start", "end")
_ROWS_PER_PASS = 1 << 16  # rows normalised per pass (bounded temporaries over a memmap)


class GalleryIndexError(ValueError):
    """An index that cannot be used as asked; the message says why and what to do."""


@dataclass
class ClipTable:
    """The gallery's clip-table columns (``CLIP_COLUMNS``), row i = gallery clip i."""

    columns: dict[str, list]

    def __post_init__(self) -> None:
        lengths = {len(self.columns.get(c, ())) for c in CLIP_COLUMNS}
        if len(lengths) != 1:
            raise GalleryIndexError(f"clip table columns differ in length or are missing: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.columns["clip_id"])

    @property
    def ids(self) -> list[str]:
        return self.columns["clip_id"]

    def row(self, i: int) -> dict[str, Any]:
        return {c: self.columns[c][i] for c in CLIP_COLUMNS}

    @classmethod
    def from_infos(cls, infos: list[ClipInfo]) -> "ClipTable":
        return cls({c: [getattr(i, c) for i in infos] for c in CLIP_COLUMNS})


@dataclass
class Gallery:
    """Gallery clips with their latents (RAM or memory-mapped) and normalised pooled embeddings."""

    clips: ClipTable
    video: Latents
    audio: Latents
    normed: dict[str, np.ndarray]  # modality -> (N, c) float32, rows of unit norm
    meta: dict[str, Any]
    folder: Path | None = None
    _ann: dict[tuple[str, str], Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clips)

    def side(self, modality: str) -> tuple[Latents, np.ndarray]:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        return getattr(self, modality), self.normed[modality]

    def ann_index(self, modality: str, kind: str):
        """The saved FAISS index of ``kind`` for ``modality``, or None if the index has none."""
        entry = (self.meta.get("ann") or {}).get(modality)
        if self.folder is None or not entry or entry.get("kind") != kind:
            return None
        if (modality, kind) not in self._ann:
            import faiss

            self._ann[(modality, kind)] = faiss.read_index(str(self.folder / entry["file"]))
        return self._ann[(modality, kind)]


# ----------------------------------------------------------------------------- building


def gallery_clips(all_clips: list[ClipInfo], splits: tuple[str, ...] | None,
                  track: TrackSelector = 0) -> tuple[list[ClipInfo], list[ClipInfo]]:
    """(usable clips of ``splits`` (None = all) in cache order, the clips left out)."""
    if splits:
        have = {c.split for c in all_clips}
        unknown = [s for s in splits if s not in have]
        if unknown:
            raise GalleryIndexError(f"no clips of split(s) {', '.join(map(repr, unknown))} in the cache; "
                                    f"it has: {', '.join(sorted(have)) or 'none'}")
        all_clips = [c for c in all_clips if c.split in set(splits)]
    clips, skipped = embed.usable_clips(all_clips, track)
    if not clips:
        raise GalleryIndexError(f"no gallery clip has both video steps and audio track {track!r}")
    return clips, skipped


def _write_normed(folder: Path, lat: Latents, modality: str) -> None:
    out = np.lib.format.open_memmap(folder / f"{modality}_norm.npy", mode="w+", dtype=np.float32, shape=lat.emb.shape)
    for a in range(0, len(lat), _ROWS_PER_PASS):
        out[a : a + _ROWS_PER_PASS] = normalize_rows(lat.emb[a : a + _ROWS_PER_PASS])
    out.flush()
    del out


def _finish(tmp: Path, clips: ClipTable, meta: dict, ann: FirstStageConfig | None) -> None:
    """Everything but the latents (already in ``tmp``): normalised embeddings, ANN, clips, meta."""
    from .first_stage import ann_kind, build_ann

    meta = {**meta, "format": INDEX_FORMAT, "format_version": INDEX_VERSION, "clips": len(clips),
            "scav_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ann": {}}
    for m in MODALITIES:
        _write_normed(tmp, Latents.load(tmp, m), m)
    if ann is not None and ann.ann != "exact":
        import faiss

        for m in MODALITIES:
            t0 = time.perf_counter()
            index = build_ann(np.load(tmp / f"{m}_norm.npy", mmap_mode="c"), ann)
            name = f"ann-{m}-{ann.ann}.faiss"
            faiss.write_index(index, str(tmp / name))
            meta["ann"][m] = {"kind": ann_kind(index), "file": name, "build_seconds": round(time.perf_counter() - t0, 3),
                              **({"nlist": int(index.nlist)} if ann.ann == "ivf" else {"M": ann.hnsw_m,
                                                                                       "ef_construction": ann.ef_construction})}
    (tmp / "clips.json").write_text(json.dumps(clips.columns))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def _refuse_foreign(folder: Path) -> None:
    """An existing ``folder`` that is not an index is never replaced (it may be anything)."""
    if folder.exists() and _read_meta(folder, quiet=True).get("format") != INDEX_FORMAT:
        raise GalleryIndexError(f"{folder} exists and is not a SCAV gallery index; choose another --out")


def build_index(model, cache_path, cache_meta: CacheMeta, clips: list[ClipInfo], folder: Path, meta: dict,
                ann: FirstStageConfig | None = None, **embed_kw) -> Gallery:
    """Encode ``clips`` (cache order) with ``model`` into the index ``folder`` (atomic);
    embed_kw: batch_size, device, track, progress as :func:`scav.model.embed.embed_split`."""
    folder = Path(folder)
    _refuse_foreign(folder)
    remove_stale_tmp(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        # split None: the gallery may span splits; the loader reads the clip ids in cache order
        lat = embed.embed_split(model, cache_path, cache_meta, None, clips, folder=tmp, **embed_kw)
        del lat  # close the write maps before reading them back
        _finish(tmp, ClipTable.from_infos(clips), meta, ann)
    return load_index(folder)


def save_index(folder: Path, clips: ClipTable, video: Latents, audio: Latents, meta: dict,
               ann: FirstStageConfig | None = None) -> Gallery:
    """An index from latents already computed (tests, benches), same layout as :func:`build_index`."""
    folder = Path(folder)
    _refuse_foreign(folder)
    remove_stale_tmp(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for m, lat in (("video", video), ("audio", audio)):
            for name, arr in (("seq", lat.seq), ("offsets", lat.offsets), ("emb", lat.emb)):
                np.save(tmp / f"{m}_{name}.npy", np.asarray(arr, dtype=np.int64 if name == "offsets" else np.float32))
        _finish(tmp, clips, meta, ann)
    return load_index(folder)


def in_memory(clips: list[ClipInfo], lat: embed.SplitLatents, meta: dict) -> Gallery:
    """A gallery held in RAM (search without --index)."""
    normed = {m: normalize_rows(getattr(lat, m).emb) for m in MODALITIES}
    return Gallery(ClipTable.from_infos(clips), lat.video, lat.audio, normed, meta)


# ----------------------------------------------------------------------------- loading and checks


def default_folder(cache_path: str | Path, ckpt_hash: str, fingerprint: str, splits: tuple[str, ...] | None,
                   track: TrackSelector = 0) -> Path:
    """``<cache>.retrieval/index-<ckpt hash>-<fingerprint[:8]>[-<splits>][-track-<t>]``."""
    name = f"index-{ckpt_hash}-{fingerprint[:8]}"
    if splits:
        name += "-" + "+".join(re.sub(r"[^A-Za-z0-9_.-]", "_", s) for s in sorted(set(splits)))
    if track != 0:
        name += f"-track-{track}"
    return Path(f"{cache_path}.retrieval") / name


def _read_meta(folder: Path, quiet: bool = False) -> dict:
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, json.JSONDecodeError) as e:
        if quiet:
            return {}
        raise GalleryIndexError(f"{folder} is not a readable gallery index (meta.json: {e})") from None


def load_index(folder: str | Path) -> Gallery:
    """Open a saved index (latents memory-mapped); GalleryIndexError for a missing folder,
    another layout, or an older/newer format version."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GalleryIndexError(f"no gallery index at {folder} (build one with `scav-retrieve index`)")
    meta = _read_meta(folder)
    if meta.get("format") != INDEX_FORMAT:
        raise GalleryIndexError(f"{folder} is not a SCAV gallery index (meta.json has no format {INDEX_FORMAT!r})")
    version = meta.get("format_version")
    if version != INDEX_VERSION:
        age = "an older" if not isinstance(version, int) or version < INDEX_VERSION else "a newer"
        raise GalleryIndexError(
            f"{folder} is a gallery index of format version {version!r}, written by {age} SCAV; this one reads "
            f"version {INDEX_VERSION}. Rebuild it: scav-retrieve index --checkpoint {meta.get('checkpoint', 'CKPT')} "
            f"--cache {meta.get('cache', 'CACHE')} --out {folder}"
        )
    try:
        clips = ClipTable(json.loads((folder / "clips.json").read_text()))
        video, audio = Latents.load(folder, "video"), Latents.load(folder, "audio")
        normed = {m: np.load(folder / f"{m}_norm.npy", mmap_mode="c") for m in MODALITIES}
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise GalleryIndexError(f"{folder}: damaged gallery index ({e}); rebuild it with `scav-retrieve index`") from None
    if not len(clips) == len(video) == len(audio) == len(normed["video"]) == len(normed["audio"]) == meta.get("clips"):
        raise GalleryIndexError(f"{folder}: damaged gallery index (clip counts differ); rebuild it")
    return Gallery(clips, video, audio, normed, meta, folder)


def check_index(meta: dict, folder: Path, ckpt_hash: str, cache_meta: CacheMeta, track: TrackSelector) -> None:
    """Refuse an index built with another checkpoint, other features (cache fingerprint:
    encoders and their preprocessing) or another audio track than this search uses."""
    if meta.get("checkpoint_sha256_12") != ckpt_hash:
        raise GalleryIndexError(
            f"index {folder} was built with checkpoint {meta.get('checkpoint')} (sha256 {meta.get('checkpoint_sha256_12')}), "
            f"not this one (sha256 {ckpt_hash}); search with that checkpoint or rebuild the index"
        )
    if meta.get("cache_fingerprint") != cache_meta.fingerprint():
        try:
            diff = format_identity_diff(CacheMeta.from_dict(meta["cache_meta"]).identity_diff(cache_meta), "index", "cache")
        except Exception:  # an unreadable record: the fingerprints alone say enough
            diff = ""
        raise GalleryIndexError(
            f"index {folder} holds features of other encoders (fingerprint {meta.get('cache_fingerprint')}) than "
            f"the cache (fingerprint {cache_meta.fingerprint()}); rebuild the index for this cache"
            + (f":\n{diff}" if diff else "")
        )
    if meta.get("audio_track", 0) != track:
        raise GalleryIndexError(
            f"index {folder} holds audio track {meta.get('audio_track')!r}, not {track!r}; "
            f"pass --audio-track {meta.get('audio_track')} or build an index for track {track!r}"
        )
