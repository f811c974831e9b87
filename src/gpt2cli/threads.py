"""How many math threads the CPU gets: no more than the cores other processes leave free.

Why: torch's CPU kernels run on an OpenMP team with one thread per core, and
every op ends at a barrier that waits for the team's slowest thread. When
another process keeps a core busy (a `gpt2 train` in the next terminal, a
test run, a build), the thread that shares its core is descheduled for whole
time slices and every barrier waits for it. On a 2-core Xeon with one busy
loop beside it, `gpt2 generate` on the tiny model decoded 33 tokens/s with 2
threads and 238 with 1 (365 with 2 on the idle machine), and tiny training
made 1,227 tokens/s with 2 threads and 2,780 with 1 (benchmarks/contention.py,
medians of 3): fewer threads than cores costs nothing like that.

So the `gpt2` command looks, once it knows it computes on the CPU, at how
busy the CPUs it may run on were since it started (/proc/stat, less its own
CPU time), and sets torch's thread count to the cores left free, never above
torch's default. It does nothing where the user chose (OMP_NUM_THREADS set),
on CUDA or MPS, without /proc/stat, or in library use (only the command
starts the watch). The load is taken before the work, and training takes it
again at each log step (`refit`), so two runs started one after the other
share the cores instead of stalling each other, and a run gets its threads
back when the other ends.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# Shorter than this, the jiffy counts (1/100 s) say too little about the load.
MIN_WINDOW_S = 0.2
# Less than this much of a core taken by others leaves it free.
ROUNDING = 0.5


@dataclass(frozen=True)
class Snapshot:
    """The busy CPU seconds of the CPUs this process may use, and this process's own, at one time."""

    wall: float
    busy: float
    own: float


def busy_seconds(stat_text: str, cpus: set[int], ticks_per_s: float) -> float:
    """Busy time (user, nice, system, irq, softirq) summed over the given CPUs' lines of /proc/stat.

    Idle, iowait and steal are not busy: they leave the core free to run us.
    """
    total = 0
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        fields = [int(v) for v in rest.split()]
        user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
        total += user + nice + system + irq + softirq
    return total / ticks_per_s


def own_cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its children that have ended."""
    import resource  # POSIX only; snapshot() reads /proc/stat first, so only Linux gets here

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def allowed_cpus() -> set[int]:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def snapshot(stat: Path = PROC_STAT) -> Snapshot | None:
    """Now, or None where /proc/stat cannot be read (not Linux)."""
    try:
        text = stat.read_text(encoding="ascii")
        busy = busy_seconds(text, allowed_cpus(), os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        return None
    return Snapshot(wall=time.monotonic(), busy=busy, own=own_cpu_seconds())


def others_load(before: Snapshot, after: Snapshot) -> float | None:
    """Cores other processes kept busy on average between two snapshots; None for too short a window."""
    window = after.wall - before.wall
    if window < MIN_WINDOW_S:
        return None
    return max(0.0, (after.busy - before.busy) - (after.own - before.own)) / window


def threads_for(others: float, cpus: int, default: int) -> int:
    """As many threads as cores left free (a core counts as taken from half its time on), 1 to default."""
    free = math.floor(cpus - others + ROUNDING)
    return max(1, min(default, free))


class ThreadWatch:
    """Started by the command before torch loads; `settle()` once the device is known to be the CPU."""

    def __init__(self, note: Callable[[str], None], env: dict[str, str] | None = None):
        env = os.environ if env is None else env
        self.note = note
        # None: nothing to fit (the user chose with OMP_NUM_THREADS, or no /proc/stat).
        self.last = None if env.get("OMP_NUM_THREADS") else snapshot()
        self.default: int | None = None  # torch's own count, read at settle()

    def settle(self) -> int | None:
        """Lower torch's thread count to the free cores (once); returns the count it set, if it did."""
        if self.default is not None or self.last is None:
            return None
        now = snapshot()
        if now is None:
            self.last = None
            return None
        if now.wall - self.last.wall < MIN_WINDOW_S:
            # Started a moment ago (a checkpoint already in the page cache): look a little longer.
            time.sleep(MIN_WINDOW_S - (now.wall - self.last.wall))
            now = snapshot()
            if now is None:
                self.last = None
                return None
        import torch

        self.default = torch.get_num_threads()
        return self._fit(now)

    def refit(self) -> int | None:
        """Again, from the load since the last look (a long run calls it now and then): lower or raise
        the count, never above torch's own. Returns the new count when it changed."""
        if self.default is None or self.last is None:
            return None
        now = snapshot()
        if now is None or now.wall - self.last.wall < MIN_WINDOW_S:
            return None
        return self._fit(now)

    def _fit(self, now: Snapshot) -> int | None:
        import torch

        others = others_load(self.last, now)
        self.last = now
        if others is None:
            return None
        cpus = len(allowed_cpus())
        threads = threads_for(others, cpus, self.default)
        if threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        self.note(
            f"{threads} math thread{'s' if threads > 1 else ''} of {self.default}: other processes kept "
            f"{others:.1f} of {cpus} cores busy (OMP_NUM_THREADS=N to choose)"
        )
        return threads


_watch: ThreadWatch | None = None


def start_watch(note: Callable[[str], None]) -> None:
    """The `gpt2` command's start: remember how busy the CPUs are (the library alone never does)."""
    global _watch
    _watch = ThreadWatch(note)


def settle_cpu_threads() -> int | None:
    """Called where a command has resolved its device to the CPU; a no-op outside the command."""
    return _watch.settle() if _watch is not None else None


def refit_cpu_threads() -> int | None:
    """Called now and then by long work (training's log steps, eval's areas); a no-op unless this
    command settled its threads, i.e. resolved its device to the CPU."""
    return _watch.refit() if _watch is not None else None
