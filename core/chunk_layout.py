"""Where the rows of one Zarr v3 array lie in its chunk files, checked before they are served.

The fast loader reads feature rows straight from chunk files (no Zarr calls), so it
must understand the on-disk format itself.  Understood here: arrays chunked along
rows only (every chunk spans the full width), chunk keys ``c/<i>[/0]``, and inner
codecs ``bytes`` (little endian) optionally followed by ``crc32c``, either as plain
chunks or inside ``sharding_indexed`` shards (index at either end, optionally
``crc32c``-checked).  Anything else (compression) is "not raw": the caller reads
through Zarr, but presence of chunk files is still checked here.

Zarr's regular grid stores edge chunks at full size, so every chunk file (or
inner chunk) has the same byte size; a file of another size is damaged.

Checksums are checked once per chunk and open cache, before any byte of the chunk
is served: inline (``pieces`` without ``checks``), or deferred as :class:`ChunkCheck`
items the reader runs just before its copy, so that another thread may have run them
first (``verify_chunk``: one computation per chunk, other threads wait for it).

``strict`` (caches written with ``CacheLayout.checksums``: every chunk is written,
even all-zero ones) makes a missing chunk an error; caches from before that wrote
no chunk that equals the fill value, so there a missing chunk reads as zeros.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

from typing import NamedTuple

import numpy as np

from .checksum import crc32c_ok
from .mapped import MappedFile, MappedFiles
from .schema import CacheError

MISSING = np.uint64(2**64 - 1)  # shard index entry of an inner chunk that was never written
_RAW = {"name": "bytes", "configuration": {"endian": "little"}}
_CRC = {"name": "crc32c"}


class ChunkError(CacheError):
    """A chunk file that is missing, has the wrong size or fails its checksum."""


class ChunkCheck(NamedTuple):
    """A chunk's crc32c, still to be checked before any byte of it is served (``run``)."""

    chunks: "ArrayChunks"
    f: MappedFile
    key: int
    inner: int
    offset: int
    nbytes: int

    def run(self) -> None:
        self.chunks.verify_chunk(self.f, self.key, self.inner, self.offset, self.nbytes)


def _codec_names(codecs) -> list[str]:
    return [c.get("name") for c in codecs]


class ArrayChunks:
    """Byte layout of one row-chunked Zarr v3 array (1-D, or 2-D with full-width chunks)."""

    def __init__(self, root: Path, meta: dict, files: MappedFiles, strict: bool):
        self.root, self.files, self.strict = root, files, strict
        shape = meta["shape"]
        self.rows = int(shape[0])
        self.ndim = len(shape)
        self.width = int(shape[1]) if self.ndim == 2 else 1
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.row_bytes = self.dtype.itemsize * self.width
        outer = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        codecs = meta.get("codecs", [])
        self.shard_rows: int | None = None
        self.index_at_end, self.index_crc = True, False
        if len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
            cfg = codecs[0]["configuration"]
            self.shard_rows, self.chunk_rows = outer, int(cfg["chunk_shape"][0])
            self.index_at_end = cfg.get("index_location", "end") == "end"
            idx = cfg.get("index_codecs", [])
            self.index_crc = _codec_names(idx) == ["bytes", "crc32c"]
            inner = cfg.get("codecs", [])
            if _codec_names(idx) not in (["bytes"], ["bytes", "crc32c"]) or (
                idx[0].get("configuration", {}).get("endian", "little") != "little"
            ):
                raise ValueError("shard index codecs")
        else:
            self.chunk_rows, inner = outer, codecs
        self.chunk_crc = inner == [_RAW, _CRC]
        self.raw = inner == [_RAW] or self.chunk_crc  # rows addressable by byte offset
        self.chunk_nbytes = self.chunk_rows * self.row_bytes + (4 if self.chunk_crc else 0)
        self._index: dict[int, np.ndarray | None] = {}
        # crc32c state per (file, inner chunk), for the life of the open cache: passed, failed
        # (the message), or being checked by a thread (others wait for its Event)
        self._verified: set[tuple[int, int]] = set()
        self._bad: dict[tuple[int, int], str] = {}
        self._busy: dict[tuple[int, int], threading.Event] = {}
        self._lock = threading.Lock()
        self._paths: dict[int, str] = {}

    @classmethod
    def open(cls, root: Path, files: MappedFiles | None = None, strict: bool = False) -> "ArrayChunks | None":
        """The array's layout, or None if it is not row-chunked in a way read here."""
        try:
            meta = json.loads((root / "zarr.json").read_text())
        except FileNotFoundError:
            raise ChunkError(f"{root}: zarr.json is missing") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ChunkError(f"{root / 'zarr.json'} is damaged: {e}") from None
        try:
            shape = meta["shape"]
            outer = meta["chunk_grid"]["configuration"]["chunk_shape"]
            key = meta.get("chunk_key_encoding", {})
            if (len(shape) not in (1, 2) or key.get("name") != "default"
                    or key.get("configuration", {}).get("separator", "/") != "/"
                    or (len(shape) == 2 and int(outer[1]) != int(shape[1]))):
                return None
            if meta.get("codecs", [{}])[0].get("name") == "sharding_indexed":
                inner = meta["codecs"][0]["configuration"]["chunk_shape"]
                if len(shape) == 2 and int(inner[1]) != int(shape[1]):
                    return None
            return cls(root, meta, files if files is not None else MappedFiles(), strict)
        except (KeyError, IndexError, TypeError, ValueError):
            return None

    # -- files -------------------------------------------------------------
    @property
    def n_files(self) -> int:
        return math.ceil(self.rows / (self.shard_rows or self.chunk_rows)) if self.rows else 0

    def path(self, key: int) -> str:
        p = self._paths.get(key)
        if p is None:  # a str, built once: pathlib per read cost as much as the read
            p = self._paths[key] = str(self.root / "c" / str(key) / "0") if self.ndim == 2 else str(
                self.root / "c" / str(key))
        return p

    def _file(self, key: int) -> MappedFile | None:
        f = self.files.get(self.path(key))
        if f is None and self.strict:
            raise ChunkError(f"chunk file {self.path(key)} is missing")
        return f

    def missing_files(self, a: int = 0, b: int | None = None) -> list[str]:
        """Chunk (or shard) files covering rows [a, b) that do not exist (strict caches only)."""
        b = self.rows if b is None else b
        if not self.strict or a >= b:
            return []
        step = self.shard_rows or self.chunk_rows
        return [self.path(k) for k in range(a // step, (b - 1) // step + 1)
                if self.files.get(self.path(k)) is None]

    # -- shards ------------------------------------------------------------
    def _shard_index(self, s: int) -> np.ndarray | None:
        if s in self._index:
            return self._index[s]
        f = self._file(s)
        idx = None
        if f is not None:
            n = self.shard_rows // self.chunk_rows
            nbytes = 16 * n + (4 if self.index_crc else 0)
            at = len(f.data) - nbytes if self.index_at_end else 0
            if at < 0:
                raise ChunkError(f"shard {self.path(s)} has {len(f.data)} bytes, shorter than its "
                                 f"{nbytes}-byte index (truncated)")
            raw = f.data[at : at + nbytes]
            if self.index_crc and not crc32c_ok(raw):
                raise ChunkError(f"shard {self.path(s)}: index checksum mismatch (damaged or truncated)")
            idx = raw[: 16 * n].copy().view("<u8").reshape(n, 2)
        self._index[s] = idx
        return idx

    @property
    def fully_verified(self) -> bool:
        """Has every chunk of the array passed its crc32c (or is there none to check)?"""
        return not self.chunk_crc or len(self._verified) >= math.ceil(self.rows / self.chunk_rows)

    def chunk_verified(self, c: int) -> bool:
        """Has row chunk ``c`` (rows ``c * chunk_rows`` on) passed its crc32c, or has it none?"""
        if not self.chunk_crc:
            return True
        if self.shard_rows is None:
            return (c, 0) in self._verified
        per = self.shard_rows // self.chunk_rows
        return (c // per, c % per) in self._verified

    def verify_chunk(self, f: MappedFile, key: int, inner: int, offset: int, nbytes: int) -> None:
        """The chunk's crc32c, computed once per open cache; a thread asking for a chunk that
        another thread is checking waits for that result (ChunkError if it failed)."""
        k = (key, inner)
        while k not in self._verified:
            with self._lock:
                if k in self._verified:
                    return
                if k in self._bad:
                    raise ChunkError(self._bad[k])
                busy = self._busy.get(k)
                if busy is None:
                    busy = self._busy[k] = threading.Event()
                    break
            busy.wait()
        else:
            return
        ok = False
        try:
            ok = crc32c_ok(f.data[offset : offset + nbytes])  # releases the GIL (32 KiB and up)
        finally:
            with self._lock:
                if ok:
                    self._verified.add(k)
                else:
                    self._bad[k] = f"chunk {self._where(key, inner)}: checksum mismatch (damaged)"
                del self._busy[k]
            busy.set()
        if not ok:
            raise ChunkError(self._bad[k])

    def _where(self, key: int, inner: int) -> str:
        return self.path(key) if self.shard_rows is None else f"{self.path(key)} (inner chunk {inner})"

    def _check_chunk(self, f: MappedFile, key: int, inner: int, offset: int, nbytes: int,
                     checks: list | None) -> None:
        """Size of one chunk, then its checksum: now, or (``checks`` given) appended there as a
        :class:`ChunkCheck` that the caller runs before serving any byte of the chunk."""
        if nbytes != self.chunk_nbytes or offset + nbytes > len(f.data):
            raise ChunkError(f"chunk {self._where(key, inner)} has "
                             f"{min(nbytes, max(0, len(f.data) - offset))} bytes, "
                             f"expected {self.chunk_nbytes} (truncated or damaged)")
        if self.chunk_crc and (key, inner) not in self._verified:
            if checks is None:
                self.verify_chunk(f, key, inner, offset, nbytes)
            else:
                checks.append(ChunkCheck(self, f, key, inner, offset, nbytes))

    def pieces(self, a: int, b: int, checks: list | None = None):
        """(mapped file or None = zeros, byte offset, first row, end row) covering rows [a, b) of a
        raw array; every chunk touched is size-checked first, and crc-checked first too unless
        ``checks`` is given: then the crc checks still due are appended there (``ChunkCheck``)."""
        r = a
        while r < b:
            c, within = divmod(r, self.chunk_rows)
            end = min(b, (c + 1) * self.chunk_rows)
            if self.shard_rows is None:
                f = self._file(c)
                if f is None:
                    yield None, 0, r, end
                else:
                    self._check_chunk(f, c, 0, 0, len(f.data), checks)
                    yield f, within * self.row_bytes, r, end
            else:
                s, in_shard = divmod(r, self.shard_rows)
                idx = self._shard_index(s)
                i = in_shard // self.chunk_rows
                if idx is None or idx[i, 0] == MISSING:
                    if self.strict:
                        raise ChunkError(f"shard {self.path(s)}: inner chunk {i} was never written")
                    yield None, 0, r, end
                else:
                    f = self._file(s)
                    off, n = int(idx[i, 0]), int(idx[i, 1])
                    self._check_chunk(f, s, i, off, n, checks)
                    yield f, off + within * self.row_bytes, r, end
            r = end

    def copies(self, a: int, b: int, checks: list | None = None) -> list[tuple[MappedFile | None, int, int, int]]:
        """Rows [a, b) as (mapped file or None = zeros, byte offset, dst start, dst end) byte
        copies; ``checks`` as for :meth:`pieces`."""
        return [(f, off, (r0 - a) * self.row_bytes, (r1 - a) * self.row_bytes)
                for f, off, r0, r1 in self.pieces(a, b, checks)]

    def read(self, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of a raw array as a new array, every chunk checked first."""
        out = np.empty((b - a, self.width) if self.ndim == 2 else (b - a,), dtype=self.dtype)
        dst = out.reshape(-1).view(np.uint8)
        for f, off, lo, hi in self.copies(a, b):
            dst[lo:hi] = 0 if f is None else f.data[off : off + hi - lo]
        return out

    def verify_all(self) -> list[str]:
        """Every chunk of the array checked (presence in strict caches, size, checksums):
        the problems found, one line each (empty = healthy)."""
        missing = set(self.missing_files())
        problems = [f"chunk file {p} is missing" for p in sorted(missing)]
        if not self.raw:
            return problems
        step = self.shard_rows or self.chunk_rows
        for k in range(self.n_files):
            if self.path(k) in missing:
                continue
            try:
                for _ in self.pieces(k * step, min(self.rows, (k + 1) * step)):
                    pass
            except ChunkError as e:
                problems.append(str(e))
        return problems
