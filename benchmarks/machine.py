"""What a benchmark figure was measured on: CPU model, cores, threads, versions, load, date.

A library module for the scripts beside it (`from machine import machine_info`);
not a benchmark itself. Figures taken on a shared machine are noisy, so the
load average is recorded too.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from importlib import metadata


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Physical cores (hyperthreads share a core's matmul units, so they add little)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return n
    except ImportError:
        pass
    return os.cpu_count() or 1


def machine_info() -> dict:
    import torch

    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        info["transformers"] = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        pass
    return info
