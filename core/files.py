"""Small file helpers every stage shares: atomic writes and content hashes.

Everything SCAV writes that a later run trusts (checkpoints, manifests, media,
exports, reports) goes through :func:`atomic_path`, so a kill leaves either the
old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_TMP_RE = re.compile(r"^\.(?P<stem>.+)\.tmp-(?P<pid>\d+)(?P<suffix>(\.[^.]+)?)$")


def tmp_name(path: Path) -> Path:
    """The temporary sibling of ``path`` this process writes: ``.<stem>.tmp-<pid><suffix>``.

    The suffix is kept so that writers which pick a format from it (PyAV,
    matplotlib) still do; the pid keeps two processes apart.
    """
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_tmp(path: Path) -> list[Path]:
    """Remove temporaries of ``path`` left by processes that no longer exist.

    A kill -9 inside a write leaves ``.<stem>.tmp-<pid><suffix>`` behind;
    those of live processes (another writer at work) are left alone.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.iterdir():
        m = _TMP_RE.match(p.name)
        if not m or m["stem"] != path.stem or m["suffix"] != path.suffix:
            continue
        if int(m["pid"]) != os.getpid() and _pid_alive(int(m["pid"])):
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; rename it over ``path`` on success.

    On an exception the temporary (file or folder) is removed and ``path`` is
    untouched. The parent folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():  # os.replace cannot replace a non-empty folder
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: str | os.PathLike, payload: Any, indent: int = 2) -> Path:
    """Write ``payload`` as JSON (+ newline) to ``path`` through :func:`atomic_path`: the one
    JSON writer of files a later run trusts (configs, stamps, records, ``--json`` outputs)."""
    path = Path(path)
    text = json.dumps(payload, indent=indent) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
