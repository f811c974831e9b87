"""What every command shares: stderr console, notes about defaults, writable outputs.

Numbers are checked where they are parsed: gpt2cli.bounds.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from gpt2cli.errors import UserError

# Where no standard stream is a terminal (CI logs, cron, a script's subprocess) and COLUMNS is
# unset, rich falls back to 80 columns, which crops eval's loss table ("cro…" for cross-entropy).
# Logs have no width to fit, so such output gets room for every table the commands print.
PIPE_WIDTH = 120


def _fallback_width() -> int | None:
    if "COLUMNS" in os.environ:
        return None
    for fd in (0, 1, 2):
        try:
            os.get_terminal_size(fd)
        except (OSError, ValueError):
            continue
        return None
    return PIPE_WIDTH


# stdout stays clean for --json; everything for humans goes to stderr.
err_console = Console(stderr=True, highlight=False, width=_fallback_width())
out_console = Console(highlight=False, width=_fallback_width())


def note(message: str) -> None:
    """One line on stderr naming a default that was used (a path's [brackets] shown as they are)."""
    err_console.print(f"[dim]using {escape(message)}[/dim]", soft_wrap=True)


def wrote(what) -> None:
    """`wrote WHAT` on stderr, its paths as they are (no markup), on one line."""
    err_console.print(f"wrote {what}", markup=False, soft_wrap=True)


def require_writable_file(flag: str, path: str | os.PathLike) -> None:
    """Refuse an output path that cannot be written, before the work rather than after it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory, expected a file name")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise UserError(f"{flag} {path}: cannot write there ({parent} {what})")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: cannot write there ({parent} is not writable)")
