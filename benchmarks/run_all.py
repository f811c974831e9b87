"""Every benchmark in quick mode, under one time budget: what `make bench` runs.

    python benchmarks/run_all.py                  # all scripts, --quick, 10-minute budget
    python benchmarks/run_all.py --only train_throughput,generate
    python benchmarks/run_all.py --full           # without --quick (takes much longer)

A benchmark is any benchmarks/*.py with a `__main__` block (machine.py and
other helper modules have none); each runs as its own process with --quick
when it offers one. Each writes its figures to benchmarks/results/NAME.json
and prints its own table, echoed here as it runs; then comes one summary
table (status, seconds, the results files each wrote, and the one-line
"headline" a results file carries, if any), also written to
benchmarks/results/run_all.json.

The budget is shared: a script still running when it runs out is stopped and
reported as "timeout", the ones after it as "skipped", and the exit code is 1
(likewise when any script fails). Scripts run with PYTHONSAFEPATH=1, so a
benchmark named like a standard-library module (tokenize.py) cannot shadow it
for the others.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# Sibling modules (machine.py) stay importable, but this folder goes last on the
# path: benchmarks/tokenize.py would otherwise shadow the standard library's
# `tokenize`, which torch imports.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

RESULTS = _HERE / "results"
BUDGET_SECONDS = 600.0
FIRST = ("matmul_peak",)  # the yardstick first, then alphabetical


def discover() -> list[Path]:
    me = Path(__file__).resolve()
    scripts = [
        p
        for p in sorted(_HERE.glob("*.py"))
        if p.resolve() != me and '__name__ == "__main__"' in p.read_text(encoding="utf-8")
    ]
    return sorted(scripts, key=lambda p: (p.stem not in FIRST, p.stem))


def result_files() -> dict[Path, float]:
    """benchmarks/results/*.json and when each was last written."""
    return {p: p.stat().st_mtime for p in RESULTS.glob("*.json")} if RESULTS.is_dir() else {}


def headline(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("headline")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def has_quick(script: Path) -> bool:
    return '"--quick"' in script.read_text(encoding="utf-8")


def run(script: Path, quick: bool, timeout: float) -> dict:
    """Run one benchmark, echoing its output as it comes; returns its status and output."""
    args = [sys.executable, str(script)] + (["--quick"] if quick else [])
    env = dict(os.environ, PYTHONSAFEPATH="1")
    started = time.monotonic()
    lines: list[str] = []
    # Its own process group, so a timeout also stops the workers it started.
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=_HERE.parent,
        start_new_session=True,
    )

    def echo() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            print(f"  {line}", flush=True)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = "timeout"
    reader.join(timeout=5)
    return {"status": status, "seconds": time.monotonic() - started, "output": lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="run each benchmark without --quick")
    parser.add_argument("--only", default=None, help="comma-separated script names (without .py)")
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS, help="total seconds (default 600)")
    args = parser.parse_args(argv)

    scripts = discover()
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {p.stem for p in scripts})
        if unknown:
            print(f"--only: no benchmark named {', '.join(unknown)}", file=sys.stderr)
            return 2
        scripts = [p for p in scripts if p.stem in wanted]

    start = time.monotonic()
    report = []
    for script in scripts:
        quick = not args.full and has_quick(script)
        left = args.budget - (time.monotonic() - start)
        entry = {"script": script.name, "quick": quick}
        before = result_files()
        if left <= 0:
            entry.update(status="skipped", seconds=0.0, output=[])
        else:
            print(f"== {script.name}{' --quick' if quick else ''} ({left:.0f} s of budget left)", flush=True)
            entry.update(run(script, quick, left))
        after = result_files()
        written = sorted(p for p in after if after[p] != before.get(p))
        entry["results"] = [str(p.relative_to(_HERE.parent)) for p in written]
        entry["headlines"] = [h for h in map(headline, written) if h]
        report.append(entry)

    total = time.monotonic() - start
    print(f"\n== summary: {len(report)} benchmarks in {total:.0f} s (budget {args.budget:.0f} s)")
    print(f"{'benchmark':<22}{'mode':<8}{'status':<18}{'seconds':>8}  results written")
    for e in report:
        mode = "quick" if e["quick"] else "full"
        written = ", ".join(e["results"]) or "-"
        print(f"{e['script']:<22}{mode:<8}{e['status']:<18}{e['seconds']:>8.0f}  {written}")
        for line in e["headlines"]:
            print(f"{'':<22}{line}")
    without_quick = [e["script"] for e in report if not e["quick"] and not args.full]
    if without_quick:
        print(f"no --quick mode (ran in full): {', '.join(without_quick)}")

    from machine import machine_info

    from gpt2cli.atomic import write_text_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "run_all",
        "machine": machine_info(),
        "budget_seconds": args.budget,
        "seconds": round(total, 1),
        "within_budget": total <= args.budget,
        "benchmarks": [{k: v for k, v in e.items() if k != "output"} for e in report],
    }
    write_text_atomic(RESULTS / "run_all.json", json.dumps(record, indent=2) + "\n")
    ok = all(e["status"] == "ok" for e in report) and total <= args.budget
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
