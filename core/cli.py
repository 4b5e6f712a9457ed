"""What every SCAV command line shares: one help style, ``--version``, ``--json PATH``, and
how data and errors are printed.

Help is click's plain format everywhere (``rich_markup_mode=None``): option
texts are printed as written, so ``[default: ...]`` and example lines survive.

Data is data: ids, labels and paths read from manifests, caches or indexes may hold
``[...]``; :func:`data_console` never reads markup, and tables are given :class:`rich.text.Text`
cells. When the output is not a terminal (and ``COLUMNS`` is unset), rich would assume 80
columns and cut ids ("disc-s3-…") or wrap lines: :func:`data_console` then never wraps or
truncates, and :func:`print_error` writes one unwrapped line.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
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
    if str(path) == "-":
        typer.echo(json.dumps(payload, indent=2))
        return
    from scav.core.files import write_json_atomic

    write_json_atomic(path, payload)


def _piped(stream) -> bool:
    try:
        return not stream.isatty() and "COLUMNS" not in os.environ
    except (AttributeError, ValueError):
        return True


def data_console(stderr: bool = False):
    """A rich Console for output that holds data strings: no markup, no highlighting, no emoji
    codes; when piped, no width limit (tables keep whole ids; lines are not wrapped)."""
    from rich.console import Console

    piped = _piped(sys.stderr if stderr else sys.stdout)
    return Console(stderr=stderr, markup=False, highlight=False, emoji=False,
                   width=1 << 20 if piped else None, soft_wrap=piped)


def text(value) -> "object":
    """A table cell or title that is shown as written (``[/bold]`` stays text)."""
    from rich.text import Text

    return Text("" if value is None else str(value))


def print_error(message: str) -> None:
    """``error: <message>`` on stderr (red on a terminal), never wrapped, never read as markup."""
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True, markup=False, highlight=False, emoji=False, soft_wrap=True)
    console.print(Text.assemble(("error:", "red"), " ", str(message)))


@contextlib.contextmanager
def errors_exit_2(*kinds: type[BaseException]):
    """Bad input (cache, checkpoint, index, queries, values, files) -> :func:`print_error`, exit 2.
    kinds: the exception types that mean bad input (default: ValueError, OSError, ImportError and
    scav.core.schema.CacheError; CheckpointError, QueryError, ... are ValueErrors)."""
    from scav.core.schema import CacheError

    try:
        yield
    except (kinds or (CacheError, ValueError, OSError, ImportError, UnicodeDecodeError)) as e:
        print_error(str(e) if str(e) else type(e).__name__)
        raise typer.Exit(code=2) from None
