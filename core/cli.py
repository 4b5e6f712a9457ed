"""What every SCAV command line shares: one help style, ``--version``, ``--json PATH``.

Help is click's plain format everywhere (``rich_markup_mode=None``): option
texts are printed as written, so ``[default: ...]`` and example lines survive.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from scav import __version__


def make_app(help: str, **kw: Any) -> typer.Typer:
    """A typer app in the project's help style."""
    return typer.Typer(add_completion=False, rich_markup_mode=None, help=help, **kw)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"scav {__version__}")
        raise typer.Exit()


VERSION_OPTION = typer.Option(
    False, "--version", callback=_print_version, is_eager=True, help="Print the SCAV version and exit."
)

def track_selector(text: str):
    """typer callback: '1' -> 1 (track index), 'spa' -> 'spa' (language tag); bad -> a usage error."""
    from scav.core.schema import CacheError, parse_track_selector

    try:
        return parse_track_selector(text)
    except CacheError as e:
        raise typer.BadParameter(str(e)) from None


JSON_HELP = "Write the result as JSON to this file ('-' = standard output)."


def json_option(help: str = JSON_HELP):
    return typer.Option(None, "--json", help=help, metavar="PATH")


def write_json(path: Optional[str | Path], payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` (atomically) or to stdout for '-'; nothing for None."""
    if path is None:
        return
    text = json.dumps(payload, indent=2)
    if str(path) == "-":
        typer.echo(text)
        return
    from scav.core.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
