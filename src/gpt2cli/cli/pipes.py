"""A closed reader of stdout (`gpt2 ... | head`) ends the printing quietly, never the work.

Every command runs with sys.stdout and sys.stderr behind a `_Quiet` stream.
The first write or flush the reader refused (BrokenPipeError) points the
stream's file descriptor at /dev/null, so that what is still buffered and
Python's flush at exit go nowhere instead of printing "Exception ignored …";
later writes are dropped. Nothing is raised: a command that writes files
(train, tokenize, eval's --json, report ...) finishes them and exits as it
would have, 0 on success; no traceback, no crash report. `gpt2 generate`,
whose only output is what it prints, asks `stdout_closed()` to stop early.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


class _Quiet:
    """A text stream whose writes after the reader went away are dropped."""

    def __init__(self, stream):
        self._stream = stream
        self.closed_reader = False

    def _gone(self) -> None:
        self.closed_reader = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        if self.closed_reader:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.closed_reader:
            with contextlib.suppress(OSError, ValueError):
                self._stream.flush()  # into /dev/null now: empties the buffer
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()
            with contextlib.suppress(OSError, ValueError):
                self._stream.flush()

    def __getattr__(self, name: str):
        if name == "_stream":  # not set yet (a copy being made): no endless lookup
            raise AttributeError(name)
        return getattr(self._stream, name)


def stdout_closed() -> bool:
    """Whether the reader of stdout went away (only inside `quiet_closed_pipes`)."""
    return bool(getattr(sys.stdout, "closed_reader", False))


@contextlib.contextmanager
def quiet_closed_pipes() -> Iterator[None]:
    """Run the block with stdout and stderr behind `_Quiet`; flush both at the end."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Quiet(saved[0]), _Quiet(saved[1])
    try:
        yield
    finally:
        # Flushed here, where a closed reader is handled, not at exit, where it is not.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        sys.stdout, sys.stderr = saved
