"""Write a file under a temporary name and rename it, so a crash or a full disk
never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from gpt2cli.errors import UserError, utf8_text, write_failed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`."""
    final = Path(path)
    if not final.parent.is_dir():
        # Writers differ in how they report this (safetensors: its own error
        # type with the temporary name); one clear message for all of them.
        what = "is not a directory" if final.parent.exists() else "does not exist"
        raise UserError(f"{final}: could not write ({final.parent} {what})")
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as err:
        _discard(tmp)
        raise write_failed(final, err) from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    # Best effort: when the parent is missing or a regular file, unlink raises
    # NotADirectoryError, which would hide the error that matters.
    with contextlib.suppress(OSError):
        tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        # A path with bytes that are not UTF-8 may be quoted in the text: written as \\xNN, not refused.
        tmp.write_text(utf8_text(text), encoding="utf-8")
