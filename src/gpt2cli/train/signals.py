"""Ctrl-C and SIGTERM as a request to stop cleanly at the next step boundary.

The first signal only sets a flag (the loop saves a checkpoint and finishes);
a second one gets the previous handler (Ctrl-C raises KeyboardInterrupt), for
a user who does not want to wait — the files on disk stay whole either way,
because every write is atomic.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class StopFlag:
    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signal).name if self.signal is not None else None


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopFlag]:
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # handlers can only be installed from the main thread
        return
    previous: dict[int, object] = {}

    def handler(signum, frame):
        flag.signal = signum
        signal.signal(signum, previous[signum])

    for s in signals:
        previous[s] = signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
