"""The tokenize worker pool always ends, whatever the parent does with SIGTERM.

`gpt2 tokenize` turns SIGTERM into a clean stop (interrupt.py), and its pool's
workers are forked from that process. A worker that received the pool's own
SIGTERM before it had reset the inherited handler ran the parent's handler
instead of dying, and the pool then waited on it forever (a bad-input test hung
that way under load). Here the window is made wide on purpose.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import signal, time
from gpt2cli.data import shards

signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a handler that does not end the process
reset = shards._ignore_sigint

def slow_start():
    time.sleep(1.0)  # the pool's terminate lands here, before the worker resets its handlers
    reset()

shards._ignore_sigint = slow_start

def items():
    raise RuntimeError("stopped before the first piece")
    yield

try:
    for _ in shards.ordered_map(abs, items(), workers=2, in_flight=4):
        pass
except RuntimeError:
    print("pool ended")
"""


def test_pool_ends_when_its_workers_get_sigterm_before_they_reset_their_handlers():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "pool ended", r.stderr
