"""SIGTERM as Ctrl-C, for commands that clean up on KeyboardInterrupt.

`gpt2 tokenize` removes its temporaries and keeps the old data when Ctrl-C
raises KeyboardInterrupt; a SIGTERM (a `kill`, a job scheduler, a closing
container) must do the same instead of ending the process on the spot.
`gpt2 train` has its own, gentler handling (train/signals.py: save, then stop).
`signals_held` defers signals over a step that must not be cut in half
(tokenize's swap of the finished data dir, the forking of its worker pool).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives."""


def _raise(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be installed from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held(signals: set[int]) -> Iterator[None]:
    """`signals` wait (pending) until the block is done."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
