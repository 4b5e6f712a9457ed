"""Stored latents: the one folder format of an exported split and of a gallery index, and its
one integrity check.

A folder holds, per modality m (video, audio), ``m_seq.npy (sum L_i, c)`` float32,
``m_offsets.npy (N + 1,)`` int64 and ``m_emb.npy (N, c)`` float32 (:class:`Latents`), plus
whatever its writer adds (``clips.json``, an index's normalised embeddings and ANN files),
and ``meta.json``. :func:`seal` records in meta.json every file's size and crc32c and a
sha256 over the whole record (the "seal"), so arrays copied in from another folder, a file
swapped or truncated, or a meta.json edited by hand (another checkpoint claimed, a file
entry changed) are refused by :func:`open_sealed`, in one line naming the file.

What :func:`open_sealed` and :func:`load_latents` guarantee for a folder they accept:

- meta.json is a regular file of at most ``MAX_META_BYTES`` (a FIFO or device is refused
  without being read, so it cannot hang), a JSON object, sealed, and the seal matches;
- every file it lists is a plain name inside the folder (no path, no ``..``), a regular
  file (no symlink, FIFO or device) of the recorded size whose crc32c matches; float arrays
  hold only finite values;
- each ``.npy`` has the expected dtype and shape (no object arrays, no float16 / int32
  stand-ins) and exactly the bytes its header claims;
- offsets start at 0, never decrease, end at the row count, and every clip has between 1
  and ``MAX_CLIP_STEPS`` steps (what a search can hold in one padded row).

The crc32c pass reads every byte once (4-5 GB/s on one core). A folder that passed is
stamped (``.verified``: each file's inode, size, mtime and ctime, and the seal); while the
stamp matches, later opens skip the pass (any change to a file changes its ctime). A
folder that cannot be written is checked in full at every open.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
from scav.core.checksum import crc32c
from scav.core.files import atomic_path

from .latents import Latents

log = logging.getLogger(__name__)

MODALITIES = ("video", "audio")
META = "meta.json"
STAMP = ".verified"
MAX_META_BYTES = 64 << 20
# a clip's steps: one padded row of a block is steps x c float32 (plus interpolation
# temporaries); 2**16 steps x 512 = 128 MiB, ~36 min of 30 fps video at native rate
MAX_CLIP_STEPS = 1 << 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_READ = 8 << 20  # bytes per read in the crc32c pass


class StoredLatentsError(ValueError):
    """A stored-latents folder that cannot be trusted; the message names the file and says why."""


# ----------------------------------------------------------------------------- small helpers


def latent_files(modality: str) -> tuple[str, str, str]:
    return tuple(f"{modality}_{a}.npy" for a in ("seq", "offsets", "emb"))  # type: ignore[return-value]


def write_latents(folder: Path, modality: str, lat: Latents) -> None:
    """The three arrays of ``lat`` as ``<modality>_{seq,offsets,emb}.npy`` in ``folder``."""
    for name, arr, dtype in (("seq", lat.seq, np.float32), ("offsets", lat.offsets, np.int64), ("emb", lat.emb, np.float32)):
        np.save(folder / f"{modality}_{name}.npy", np.asarray(arr, dtype=dtype))


def _regular(path: Path, what: str) -> os.stat_result:
    """lstat of ``path``, refused unless a regular file (no symlink, FIFO, device, folder)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise StoredLatentsError(f"{path}: {what} unreadable ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise StoredLatentsError(f"{path}: {what} is {kind}; refused")
    return st


def read_small_json(path: Path, what: str, limit: int = MAX_META_BYTES) -> Any:
    """JSON of a regular file of at most ``limit`` bytes, opened without blocking (a FIFO
    never hangs the reader), or StoredLatentsError naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise StoredLatentsError(f"{path}: {what} unreadable ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoredLatentsError(f"{path}: {what} is not a regular file; refused")
        if st.st_size > limit:
            raise StoredLatentsError(f"{path}: {what} is {st.st_size} bytes, more than {limit}; refused")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoredLatentsError(f"{path}: {what} is not valid JSON ({e})") from None


def _header(f) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran order, dtype) of an open .npy file (its header only)."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f, max_header_size=1 << 16) if version != (1, 0) else read(f)


def _seal_of(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "seal"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _scan(path: Path) -> tuple[int, bool | None]:
    """(crc32c of the file's bytes, all float values finite or None for a non-float file), in
    one pass over a read-only map (no copies; ``_READ`` bytes at a time)."""
    size = path.stat().st_size
    if size == 0:
        return 0, None
    dtype, start = None, 0
    with open(path, "rb") as f:
        if path.suffix == ".npy":
            try:
                _shape, _fortran, dtype = _header(f)
                start = f.tell()
            except ValueError:
                dtype = None
            if dtype is not None and (dtype.kind != "f" or dtype.hasobject):
                dtype = None
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)  # closed when the last view goes
    data = np.frombuffer(m, np.uint8)
    crc, finite = 0, None if dtype is None else True
    for a in range(0, size, _READ):
        crc = crc32c(data[a : a + _READ], crc)
    if dtype is not None:
        step = _READ - _READ % dtype.itemsize
        usable = (size - start) - (size - start) % dtype.itemsize
        for a in range(start, start + usable, step):
            if not np.isfinite(data[a : min(a + step, start + usable)].view(dtype)).all():
                finite = False
                break
    return crc, finite


def _file_record(path: Path) -> dict:
    crc, finite = _scan(path)
    rec = {"bytes": path.stat().st_size, "crc32c": f"{crc:08x}"}
    if finite is False:
        raise StoredLatentsError(f"{path}: holds non-finite values (NaN or inf); refused")
    return rec


# ----------------------------------------------------------------------------- seal / open


def seal(folder: Path, meta: dict) -> dict:
    """Record every file of ``folder`` (but meta.json) in ``meta["files"]`` (bytes, crc32c),
    seal the record and write it as meta.json. Refuses non-finite float arrays. Returns it."""
    folder = Path(folder)
    files = {}
    for p in sorted(folder.iterdir()):
        if p.name in (META, STAMP):
            continue
        _regular(p, "a stored file")
        files[p.name] = _file_record(p)
    meta = {**{k: v for k, v in meta.items() if k != "seal"}, "files": files}
    meta["seal"] = _seal_of(meta)
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def open_sealed(folder: str | Path, what: str = "stored latents") -> dict:
    """meta.json of ``folder`` after every check in the module docstring but the arrays'
    shapes (:func:`load_latents`); StoredLatentsError naming the file otherwise."""
    folder = Path(folder)
    meta = read_small_json(folder / META, f"the {what}'s meta.json")
    if not isinstance(meta, dict):
        raise StoredLatentsError(f"{folder / META}: not a JSON object")
    if "seal" not in meta or not isinstance(meta.get("files"), dict):
        raise StoredLatentsError(f"{folder / META}: not sealed (written by an older SCAV or by hand); rebuild the {what}")
    if meta["seal"] != _seal_of(meta):
        raise StoredLatentsError(f"{folder / META}: edited after it was written (its seal does not match); rebuild the {what}")
    stats = {}
    for name, rec in meta["files"].items():
        if not isinstance(name, str) or not _NAME.match(name) or name in (META, STAMP):
            raise StoredLatentsError(f"{folder / META}: lists a file outside the folder ({name!r}); refused")
        if not isinstance(rec, dict) or not isinstance(rec.get("bytes"), int) or not isinstance(rec.get("crc32c"), str):
            raise StoredLatentsError(f"{folder / META}: bad entry for {name!r}")
        st = _regular(folder / name, f"a file of the {what}")
        if st.st_size != rec["bytes"]:
            raise StoredLatentsError(f"{folder / name}: {st.st_size} bytes, {rec['bytes']} recorded; "
                                     f"the file was changed or replaced; rebuild the {what}")
        stats[name] = _stat_key(st)
    stamp = {"seal": meta["seal"], "files": stats}
    try:
        if read_small_json(folder / STAMP, "stamp", 1 << 24) == stamp:
            return meta
    except StoredLatentsError:
        pass
    for name, rec in meta["files"].items():
        crc, finite = _scan(folder / name)
        if f"{crc:08x}" != rec["crc32c"]:
            raise StoredLatentsError(f"{folder / name}: content differs from what meta.json records (crc32c "
                                     f"{crc:08x}, recorded {rec['crc32c']}): mixed or changed; rebuild the {what}")
        if finite is False:
            raise StoredLatentsError(f"{folder / name}: holds non-finite values (NaN or inf); rebuild the {what}")
    try:
        with atomic_path(folder / STAMP) as tmp:
            tmp.write_text(json.dumps(stamp))
    except OSError:  # a read-only folder: checked in full at every open
        log.debug("cannot stamp %s as verified", folder)
    return meta


# ----------------------------------------------------------------------------- arrays


def load_npy(path: Path, dtype: np.dtype, ndim: int) -> np.ndarray:
    """A memory-mapped (copy-on-write) array after checking its header against the file size."""
    try:
        with open(path, "rb") as f:
            shape, fortran, have = _header(f)
            start = f.tell()
    except (OSError, ValueError) as e:
        raise StoredLatentsError(f"{path}: not a readable .npy array ({e})") from None
    if have != dtype or len(shape) != ndim or fortran:
        raise StoredLatentsError(f"{path}: {have} array of shape {shape}, expected {ndim}-D {dtype}; refused")
    need = start + int(np.prod(shape, dtype=object)) * dtype.itemsize
    size = path.stat().st_size
    if size != need:
        raise StoredLatentsError(f"{path}: {size} bytes but its header claims shape {shape} ({need} bytes); refused")
    if need == start:
        return np.zeros(shape, dtype=dtype)
    return np.load(path, mmap_mode="c")


def load_latents(folder: str | Path, modality: str, max_steps: int = MAX_CLIP_STEPS,
                 dim: int | None = None) -> Latents:
    """:class:`Latents` of ``modality`` (memory-mapped) with every array check of the module
    docstring; ``dim``: the width the caller's model needs (None = any)."""
    folder = Path(folder)
    f_seq, f_off, f_emb = (folder / n for n in latent_files(modality))
    seq = load_npy(f_seq, np.dtype("<f4"), 2)
    emb = load_npy(f_emb, np.dtype("<f4"), 2)
    offsets = np.array(load_npy(f_off, np.dtype("<i8"), 1))
    if len(offsets) < 1 or offsets[0] != 0:
        raise StoredLatentsError(f"{f_off}: offsets must start at 0")
    lengths = np.diff(offsets)
    if len(lengths) and (lengths.min() < 1 or lengths.max() > max_steps):
        bad = int(np.argmax((lengths < 1) | (lengths > max_steps)))
        raise StoredLatentsError(f"{f_off}: clip {bad} has {int(lengths[bad])} steps; each clip needs 1 to "
                                 f"{max_steps} (offsets must increase); refused")
    if int(offsets[-1]) != seq.shape[0]:
        raise StoredLatentsError(f"{f_off}: offsets end at {int(offsets[-1])}, {f_seq.name} has {seq.shape[0]} rows")
    if emb.shape[0] != len(lengths):
        raise StoredLatentsError(f"{f_emb}: {emb.shape[0]} rows for {len(lengths)} clips")
    if seq.shape[1] != emb.shape[1] or (dim is not None and seq.shape[1] != dim):
        want = dim if dim is not None else emb.shape[1]
        raise StoredLatentsError(f"{f_seq}: latent width {seq.shape[1]} (emb {emb.shape[1]}), the model's is {want}")
    return Latents(seq, offsets, emb)
