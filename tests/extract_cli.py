"""Run `scav-extract` in-process as a user would, returning its exit code."""

from __future__ import annotations

from scav.extract.cli import main


def cli(*args: str) -> int:
    """``scav-extract ARGS...``; the exit code (0 when the command returns normally)."""
    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0
