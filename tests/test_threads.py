"""The CPU's math threads fitted to the cores other processes leave free (threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from gpt2cli import threads
from gpt2cli.threads import Snapshot, ThreadWatch, busy_seconds, others_load, threads_for

# Two CPUs' lines of /proc/stat plus the total; fields: user nice system idle iowait irq softirq steal guest guest_nice.
STAT = """cpu  900 90 300 5000 70 10 20 40 0 0
cpu0 400 40 100 2500 30 5 10 20 0 0
cpu1 500 50 200 2500 40 5 10 20 0 0
intr 12345 0 0
ctxt 999
"""


def test_busy_seconds_sums_the_allowed_cpus_busy_fields():
    # By hand: cpu0 busy = 400+40+100+5+10 = 555 ticks; cpu1 = 500+50+200+5+10 = 765.
    assert busy_seconds(STAT, {0}, 100) == pytest.approx(5.55)
    assert busy_seconds(STAT, {1}, 100) == pytest.approx(7.65)
    assert busy_seconds(STAT, {0, 1}, 100) == pytest.approx(13.20)
    assert busy_seconds(STAT, {0, 1, 7}, 100) == pytest.approx(13.20)  # a CPU without a line adds nothing
    assert busy_seconds(STAT, set(), 100) == 0.0


def test_others_load_is_busy_time_less_our_own_per_second():
    before = Snapshot(wall=10.0, busy=100.0, own=3.0)
    # 2 s; the CPUs were busy 3.5 s, 1.5 s of them ours: others kept 1 core busy.
    assert others_load(before, Snapshot(wall=12.0, busy=103.5, own=4.5)) == pytest.approx(1.0)
    # Our own time above the system's (jiffy rounding) is no negative load.
    assert others_load(before, Snapshot(wall=12.0, busy=100.5, own=4.5)) == 0.0
    # Too short a window says nothing.
    assert others_load(before, Snapshot(wall=10.1, busy=101.0, own=3.0)) is None


@pytest.mark.parametrize(
    ("others", "cpus", "default", "expected"),
    [
        (0.0, 2, 2, 2),
        (0.4, 2, 2, 2),  # less than half a core taken: still free
        (0.6, 2, 2, 1),
        (1.0, 2, 2, 1),
        (2.0, 2, 2, 1),  # never fewer than one
        (0.0, 8, 4, 4),  # never more than torch's default (physical cores)
        (4.0, 8, 4, 4),  # the others on the hyperthreads: 4 logical CPUs still free
        (5.0, 8, 4, 3),
        (7.9, 8, 4, 1),
    ],
)
def test_threads_for_free_cores(others, cpus, default, expected):
    assert threads_for(others, cpus, default) == expected


def fake_clock(monkeypatch, snapshots):
    seq = iter(snapshots)
    monkeypatch.setattr(threads, "snapshot", lambda stat=None: next(seq))
    monkeypatch.setattr(threads, "allowed_cpus", lambda: {0, 1})
    calls = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    return calls


def test_watch_lowers_threads_once_and_says_so(monkeypatch):
    calls = fake_clock(
        monkeypatch,
        [Snapshot(wall=0.0, busy=0.0, own=0.0), Snapshot(wall=2.0, busy=3.0, own=1.0)],
    )
    notes = []
    watch = ThreadWatch(notes.append, env={})
    assert watch.settle() == 1
    assert calls == [1]
    assert notes == ["1 math thread of 2: other processes kept 1.0 of 2 cores busy (OMP_NUM_THREADS=N to choose)"]
    assert watch.settle() is None and calls == [1]  # once per command


def test_refit_follows_the_load_down_and_back_up(monkeypatch):
    state = {"n": 2}
    seq = iter(
        [
            Snapshot(wall=0.0, busy=0.0, own=0.0),  # the command starts
            Snapshot(wall=2.0, busy=1.8, own=1.7),  # settle: idle, 2 threads kept
            Snapshot(wall=12.0, busy=21.8, own=11.7),  # 10 s: others kept 1.0 core busy -> 1
            Snapshot(wall=12.1, busy=22.0, own=11.8),  # too soon to say: unchanged
            Snapshot(wall=22.0, busy=32.0, own=21.8),  # 9.9 s: others 0.02 -> back to 2
        ]
    )
    monkeypatch.setattr(threads, "snapshot", lambda stat=None: next(seq))
    monkeypatch.setattr(threads, "allowed_cpus", lambda: {0, 1})
    monkeypatch.setattr(torch, "get_num_threads", lambda: state["n"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: state.update(n=n))
    notes = []
    watch = ThreadWatch(notes.append, env={})
    assert watch.refit() is None  # nothing before settle
    assert watch.settle() is None and state["n"] == 2
    assert watch.refit() == 1 and state["n"] == 1
    assert watch.refit() is None and state["n"] == 1
    assert watch.refit() == 2 and state["n"] == 2
    assert notes == [
        "1 math thread of 2: other processes kept 1.0 of 2 cores busy (OMP_NUM_THREADS=N to choose)",
        "2 math threads of 2: other processes kept 0.0 of 2 cores busy (OMP_NUM_THREADS=N to choose)",
    ]


def test_watch_keeps_threads_on_an_idle_machine(monkeypatch):
    calls = fake_clock(
        monkeypatch,
        [Snapshot(wall=0.0, busy=0.0, own=0.0), Snapshot(wall=2.0, busy=2.1, own=1.9)],
    )
    notes = []
    assert ThreadWatch(notes.append, env={}).settle() is None
    assert calls == [] and notes == []


def test_watch_leaves_a_users_choice_alone(monkeypatch):
    calls = fake_clock(monkeypatch, [])  # any snapshot taken would raise StopIteration
    watch = ThreadWatch(lambda m: None, env={"OMP_NUM_THREADS": "2"})
    assert watch.settle() is None and calls == []


def test_library_use_never_changes_threads(monkeypatch):
    monkeypatch.setattr(threads, "_watch", None)
    from gpt2cli.device import resolve_device

    n = torch.get_num_threads()
    assert resolve_device("cpu").type == "cpu"
    assert threads.settle_cpu_threads() is None and torch.get_num_threads() == n


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs /proc/stat (Linux)")
def test_generate_takes_one_thread_beside_a_busy_core(tmp_path):
    """`gpt2 generate` on 2+ cores with busy loops on all but one: it runs on 1 thread and says so."""
    from gpt2cli.checkpoint import save_checkpoint
    from gpt2cli.config import ModelConfig
    from gpt2cli.model import GPT

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=env, capture_output=True, text=True, check=True,
    )
    if int(probe.stdout) < 2:
        pytest.skip("torch runs one thread here by default: nothing to lower")
    ckpt = save_checkpoint(GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)), tmp_path / "m.safetensors")
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(len(os.sched_getaffinity(0)) - 1)
    ]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gpt2cli", "generate", "Once", "--ckpt", str(ckpt), "--max-new-tokens", "4"],
            env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert done.returncode == 0, done.stderr
    assert "using 1 math thread of" in done.stderr, done.stderr
