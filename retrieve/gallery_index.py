"""A gallery to search: latents of a set of cache clips, in RAM or saved as a reusable index.

``scav-retrieve index`` saves one folder (written as a temporary sibling, renamed when whole)::

    <cache>.retrieval/index-<checkpoint sha256[:12]>-<cache fingerprint[:8]>[-<splits>][-track-<t>]/
      video_seq.npy video_offsets.npy video_emb.npy   latents, as model/embed.py exports them
      audio_seq.npy audio_offsets.npy audio_emb.npy   (memory-mapped when loaded)
      video_norm.npy audio_norm.npy   (N, c) float32 pooled embeddings, L2-normalised (first stage)
      clips.json     the clip-table columns results show: clip_id split label source path start end,
                     and stored_crc32c: each clip's stored features (video rows, then the audio track's)
      ann-<modality>-<ivf|hnsw>.faiss  optional approximate first-stage indexes (index --ann)
      meta.json      format + format_version, checkpoint (sha256[:12], step), cache (fingerprint,
                     its meta: encoders), objective, gallery splits, audio track, clip count, ann,
                     and every file's size and crc32c, sealed (:mod:`scav.model.stored_latents`)

``search --index`` then encodes only the queries. Loading checks the folder as
:mod:`scav.model.stored_latents` says (digests, sizes, dtypes, offsets, finite values, plain
files inside the folder; verified once, then stamped) and refuses an index of another format
version (rebuild it); :func:`check_index` refuses one built with another checkpoint, cache
fingerprint (encoders) or audio track, and :func:`check_query_clips` one built from another
cache whose clips carry the same ids.
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
from scav.core.schema import CacheMeta, ClipInfo, TrackSelector, require_same_encoders
from scav.core.checksum import crc32c
from scav.model import embed
from scav.model import stored_latents as SL
from scav.model.latents import Latents

from scav import __version__

from .first_stage import FirstStageConfig, ann_kind, normalize_rows

INDEX_FORMAT = "scav-gallery-index"
INDEX_VERSION = 2  # bump when the layout changes; older indexes are refused (rebuild). 2: sealed
MODALITIES = ("video", "audio")
CLIP_COLUMNS = ("clip_id", "split", "label", "source", "path", "start", "end")
_ROWS_PER_PASS = 1 << 16  # rows normalised per pass (bounded temporaries over a memmap)


GalleryIndexError = SL.StoredLatentsError  # an index that cannot be used as asked; the message says why


@dataclass
class ClipTable:
    """The gallery's clip-table columns (``CLIP_COLUMNS``), row i = gallery clip i."""

    columns: dict[str, list]
    source: str = "clip table"  # where it was read (named in errors)

    def __post_init__(self) -> None:
        if not isinstance(self.columns, dict) or not all(isinstance(self.columns.get(c), list) for c in CLIP_COLUMNS):
            raise GalleryIndexError(f"{self.source}: must map each of {', '.join(CLIP_COLUMNS)} to a list")
        lengths = {len(self.columns[c]) for c in CLIP_COLUMNS}
        if len(lengths) != 1:
            raise GalleryIndexError(f"{self.source}: columns differ in length: {sorted(lengths)}")
        # values are checked per row as they are used (row, ids): a 1M-row table is not walked at load

    def __len__(self) -> int:
        return len(self.columns["clip_id"])

    @property
    def ids(self) -> list[str]:
        ids = self.columns["clip_id"]
        if not getattr(self, "_ids_checked", False):
            if not all(isinstance(v, str) for v in ids):
                raise GalleryIndexError(f"{self.source}: column 'clip_id' must hold strings")
            if len(set(ids)) != len(ids):
                raise GalleryIndexError(f"{self.source}: clip ids repeat")
            self._ids_checked = True
        return ids

    def stored_crc(self, i: int) -> int | None:
        """crc32c of clip i's stored features when the index was built (None if not recorded)."""
        col = self.columns.get("stored_crc32c")
        return None if col is None else col[i]

    def row(self, i: int) -> dict[str, Any]:
        r = {c: self.columns[c][i] for c in CLIP_COLUMNS}
        for c in ("clip_id", "split", "label", "source", "path"):
            if not isinstance(r[c], str):
                raise GalleryIndexError(f"{self.source}: column {c!r} must hold strings (row {i}: {r[c]!r})")
        for c in ("start", "end"):
            v = r[c]
            if not (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))):
                raise GalleryIndexError(f"{self.source}: column {c!r} must hold numbers or null (row {i}: {v!r})")
        return r

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
        ann = self.meta.get("ann") or {}
        entry = ann.get(modality) if isinstance(ann, dict) else None
        if self.folder is None or not isinstance(entry, dict) or entry.get("kind") != kind:
            return None
        if (modality, kind) not in self._ann:
            import faiss

            name = entry.get("file")
            if name not in (self.meta.get("files") or {}) or name != f"ann-{modality}-{kind}.faiss":
                raise GalleryIndexError(f"{self.folder / 'meta.json'}: the {modality} {kind} entry names "
                                        f"{name!r}, not a file of this index; rebuild it")
            try:
                index = faiss.read_index(str(self.folder / name))
            except RuntimeError as e:
                raise GalleryIndexError(f"{self.folder / name}: unreadable FAISS index "
                                        f"({str(e).strip().splitlines()[-1][:200]}); rebuild it") from None
            if index.ntotal != len(self) or index.d != self.normed[modality].shape[1] or ann_kind(index) != kind:
                raise GalleryIndexError(f"{self.folder / name}: a {ann_kind(index)} index of {index.ntotal} x "
                                        f"{index.d}, not this gallery's {kind} of {len(self)} x "
                                        f"{self.normed[modality].shape[1]}; rebuild it")
            self._ann[(modality, kind)] = index
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
    from .first_stage import build_ann

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
    SL.seal(tmp, meta)


def _refuse_foreign(folder: Path) -> None:
    """An existing ``folder`` that is not an index is never replaced (it may be anything)."""
    if (folder.exists() or folder.is_symlink()) and _read_meta(folder, quiet=True).get("format") != INDEX_FORMAT:
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
        table = ClipTable.from_infos(clips)
        table.columns["stored_crc32c"] = stored_crcs(cache_path, clips, embed_kw.get("track", 0))
        _finish(tmp, table, meta, ann)
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
            SL.write_latents(tmp, m, lat)
        _finish(tmp, clips, meta, ann)
    return load_index(folder)


def stored_crc(cache, clip_id: str, track: TrackSelector = 0) -> int:
    """crc32c of one clip's stored features as the cache holds them: video rows, then the rows of
    audio track ``track`` (binds an index to the cache content, not only to the clip ids)."""
    f = cache.get(clip_id, track)
    return crc32c(np.ascontiguousarray(f.audio), crc32c(np.ascontiguousarray(f.video)))


def stored_crcs(cache_path, clips: list[ClipInfo], track: TrackSelector = 0) -> list[int]:
    from scav.core.cache import FeatureCache

    cache = FeatureCache.open(cache_path)
    return [stored_crc(cache, c.clip_id, track) for c in clips]


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
        meta = SL.read_small_json(Path(folder) / "meta.json", "the index's meta.json")
        return meta if isinstance(meta, dict) else {}
    except SL.StoredLatentsError as e:
        if quiet:
            return {}
        raise GalleryIndexError(f"{folder} is not a readable gallery index ({e})") from None


def load_index(folder: str | Path, dim: int | None = None) -> Gallery:
    """Open a saved index (latents memory-mapped) after every check of
    :mod:`scav.model.stored_latents`; GalleryIndexError (one line naming the file) for a missing
    folder, another layout, an older/newer format version, or anything changed since it was
    written. dim: the latent width the searching model has (None = not checked here)."""
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
    meta = SL.open_sealed(folder, "gallery index")
    clips = ClipTable(SL.read_small_json(folder / "clips.json", "the index's clips.json", 1 << 34),
                      str(folder / "clips.json"))
    crcs = clips.columns.get("stored_crc32c")
    if crcs is not None and (not isinstance(crcs, list) or len(crcs) != len(clips)):
        raise GalleryIndexError(f"{folder / 'clips.json'}: stored_crc32c must hold one integer per clip")
    video, audio = (SL.load_latents(folder, m, dim=dim) for m in MODALITIES)
    normed = {}
    for m in MODALITIES:
        normed[m] = SL.load_npy(folder / f"{m}_norm.npy", np.dtype("<f4"), 2)
        if normed[m].shape != getattr(video if m == "video" else audio, "emb").shape:
            raise GalleryIndexError(f"{folder / f'{m}_norm.npy'}: shape {normed[m].shape}, the latents' is "
                                    f"{(video if m == 'video' else audio).emb.shape}")
    n = meta.get("clips")
    if not len(clips) == len(video) == len(audio) == n:
        raise GalleryIndexError(f"{folder}: damaged gallery index (clip counts differ: clips.json {len(clips)}, "
                                f"video {len(video)}, audio {len(audio)}, meta {n}); rebuild it")
    if meta.get("dim") is not None and meta["dim"] != video.dim:
        raise GalleryIndexError(f"{folder / 'meta.json'}: says {meta['dim']}-d latents, the arrays are {video.dim}-d")
    if audio.dim != video.dim:
        raise GalleryIndexError(f"{folder}: video latents are {video.dim}-d, audio {audio.dim}-d; rebuild it")
    ann = meta.get("ann")
    if ann is not None and not (isinstance(ann, dict) and all(isinstance(e, dict) for e in ann.values())):
        raise GalleryIndexError(f"{folder / 'meta.json'}: 'ann' must map modalities to entries; rebuild it")
    return Gallery(clips, video, audio, normed, meta, folder)


def check_index(meta: dict, folder: Path, ckpt_hash: str, cache_meta: CacheMeta, track: TrackSelector,
                dim: int | None = None) -> None:
    """Refuse an index built with another checkpoint, other features (cache fingerprint:
    encoders and their preprocessing) or another audio track than this search uses."""
    if meta.get("checkpoint_sha256_12") != ckpt_hash:
        raise GalleryIndexError(
            f"index {folder} was built with checkpoint {meta.get('checkpoint')} (sha256 {meta.get('checkpoint_sha256_12')}), "
            f"not this one (sha256 {ckpt_hash}); search with that checkpoint or rebuild the index"
        )
    if meta.get("cache_fingerprint") != cache_meta.fingerprint():
        try:
            recorded = CacheMeta.from_dict(meta["cache_meta"])
        except Exception:  # noqa: BLE001 - an unreadable record: the fingerprints alone say enough
            recorded = None
        if recorded is not None:
            require_same_encoders(recorded, cache_meta, f"index {folder}", "the cache has",
                                  "rebuild the index for this cache", error=GalleryIndexError)
        raise GalleryIndexError(  # no record, or one that contradicts the recorded fingerprint
            f"index {folder} holds features of other encoders (fingerprint {meta.get('cache_fingerprint')}) than "
            f"the cache (fingerprint {cache_meta.fingerprint()}); rebuild the index for this cache"
        )
    if meta.get("dim") is not None and dim is not None and meta.get("dim") != dim:
        raise GalleryIndexError(f"index {folder} holds {meta.get('dim')}-d latents, the checkpoint's are {dim}-d")
    if meta.get("audio_track", 0) != track:
        raise GalleryIndexError(
            f"index {folder} holds audio track {meta.get('audio_track')!r}, not {track!r}; "
            f"pass --audio-track {meta.get('audio_track')} or build an index for track {track!r}"
        )


def check_query_clips(gallery: Gallery, cache, infos: list[ClipInfo], track: TrackSelector) -> None:
    """Refuse an index built from another cache whose clips carry the same ids: every query clip
    that is also a gallery clip must have the stored features the index was built from."""
    if gallery.folder is None or "stored_crc32c" not in gallery.clips.columns:
        return
    row = {cid: i for i, cid in enumerate(gallery.clips.ids)}
    for info in infos:
        i = row.get(info.clip_id)
        if i is not None and stored_crc(cache, info.clip_id, track) != gallery.clips.stored_crc(i):
            # (a non-integer recorded crc never equals one computed: refused as another cache's)
            raise GalleryIndexError(
                f"index {gallery.folder} was built from another cache: clip {info.clip_id!r} holds other features "
                f"in {cache.path} than when the index was built; search with the index's cache "
                f"({gallery.meta.get('cache')}) or rebuild the index"
            )
