"""The one error type for the user's mistakes (STYLE.md §8), and what the
machine's own refusals mean to a user.

`UserError` is raised anywhere in the library; the CLI catches it once, prints
its message as one line on stderr and exits with code 2. Trouble with the
machine (a full disk, a read-only or forbidden path, too many open files, no
memory left) is no bug either: `environment_message` turns it into one line
saying what happened and what to do, also exit 2. Anything else is a bug: the
CLI writes its traceback to a crash report and exits with code 1.
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """Bad input or usage: a missing file, a foreign checkpoint, a bad flag value."""


# errno -> (what happened, what to do). Several codes share a remedy.
_OS_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free some space or write somewhere else, then run again"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write somewhere else, then run again"),
    errno.EROFS: ("read-only file system", "write somewhere else"),
    errno.EACCES: ("permission denied", "check the permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "check the permissions or choose another path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and run again"),
    errno.ENFILE: ("too many open files on this system", "close other programs or raise the system's limit"),
    errno.ENOMEM: ("out of memory", "free memory or use smaller sizes, then run again"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.ELOOP: ("too many levels of symbolic links", "check the path's symbolic links"),
}
_OOM = "out of memory"
_OOM_HINT = "use a smaller --batch-size, --block-size or model, or free memory, then run again"
# How torch words an allocation it could not make (CPU and CUDA).
_OOM_MARKERS = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory", "out of memory")


def utf8_text(text: str) -> str:
    """`text` as valid UTF-8: a file name's undecodable bytes (surrogate escapes) become \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def shown_path(path: str | bytes | os.PathLike) -> str:
    """A path as one printable line, whatever bytes its name holds (non-UTF-8 names included)."""
    text = utf8_text(os.fsdecode(path) if isinstance(path, bytes | os.PathLike) else str(path))
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _oom_detail(err: BaseException) -> str:
    """The size torch says it could not allocate, when it says one."""
    import re

    m = re.search(r"tried to allocate (\d+) bytes", str(err))
    if m:
        return f" (could not allocate {int(m.group(1)) / 2**30:.1f} GiB)"
    m = re.search(r"Tried to allocate ([\d.]+ [KMGT]iB)", str(err))
    return f" (could not allocate {m.group(1)})" if m else ""


def write_failed(where: str | os.PathLike, err: OSError) -> UserError:
    """One line for a write the machine refused: what it said, and what to do when we know."""
    reason = err.strerror or str(err)
    todo = _OS_ERRORS.get(err.errno, (None, None))[1]
    return UserError(f"{shown_path(where)}: could not write ({reason})" + (f"; {todo}" if todo else ""))


def environment_message(err: BaseException) -> str | None:
    """One line for an error the machine raised (disk, permissions, files, memory); None for a bug.

    Follows `raise ... from` chains: a library that wraps the OSError keeps its meaning.
    """
    seen = 0
    while err is not None and seen < 8:
        message = _one_environment_message(err)
        if message is not None:
            return message
        err, seen = err.__cause__, seen + 1
    return None


def _one_environment_message(err: BaseException) -> str | None:
    if isinstance(err, MemoryError):
        return f"{_OOM}: {_OOM_HINT}"
    if isinstance(err, RuntimeError) and any(m in str(err) for m in _OOM_MARKERS):
        # torch.OutOfMemoryError (CUDA) and the CPU allocator's RuntimeError.
        return f"{_OOM}{_oom_detail(err)}: {_OOM_HINT}"
    if isinstance(err, OSError) and err.errno in _OS_ERRORS:
        what, todo = _OS_ERRORS[err.errno]
        where = f"{shown_path(err.filename)}: " if err.filename is not None else ""
        return f"{where}{what}; {todo}"
    if isinstance(err, OSError) and err.errno is None and "No space left on device" in str(err):
        # safetensors reports a full disk as text only (its own error type, then OSError(str)).
        what, todo = _OS_ERRORS[errno.ENOSPC]
        return f"{what}; {todo}"
    return None
