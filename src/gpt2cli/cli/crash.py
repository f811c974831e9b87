"""Crash reports: a bug's traceback goes to a file, the user gets one line naming it.

Reports live in the user's cache dir (XDG_CACHE_HOME, else ~/.cache) under
gpt2cli/crashes, or the system's temp dir where that cannot be written; never
beside the user's data.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from gpt2cli.errors import shown_path


def crash_dirs() -> list[Path]:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(cache) / "gpt2cli" / "crashes", Path(tempfile.gettempdir()) / "gpt2cli-crashes"]


def write_crash_report(err: BaseException, argv: list[str] | None) -> Path | None:
    """Write the traceback, command line and versions to a new file; its path (None if nowhere worked)."""
    from gpt2cli import __version__

    stamp = time.strftime("%Y%m%d-%H%M%S")
    lines = [
        f"gpt2cli {__version__}, Python {sys.version.split()[0]}, {sys.platform}",
        "command: gpt2 " + " ".join(shown_path(a) for a in (sys.argv[1:] if argv is None else argv)),
        "",
        *traceback.format_exception(type(err), err, err.__traceback__),
    ]
    text = "\n".join(line.rstrip("\n") for line in lines) + "\n"
    for folder in crash_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # mkstemp: a new file every time, never one that exists.
            fd, name = tempfile.mkstemp(prefix=f"crash-{stamp}-", suffix=".txt", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
                fh.write(text)
            return Path(name)
        except OSError:
            continue
    return None


def internal_error_line(err: BaseException, report: Path | None) -> str:
    """`internal error: TYPE: first line of the message (details in PATH)` as one line."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    first = first if len(first) <= 200 else first[:199] + "…"
    what = f"{type(err).__name__}: {first}" if first else type(err).__name__
    where = f"details in {report}" if report is not None else "no crash report could be written"
    return f"internal error: {shown_path(what)} ({where}); please report it"
