"""`gpt2 generate` and `gpt2 train` on the CPU while another process keeps cores busy.

    python benchmarks/contention.py            # 3 repeats
    python benchmarks/contention.py --quick    # 1 repeat, fewer tokens and steps, no 1-thread rows (make bench)

torch runs its CPU kernels on one thread per core, and each op waits at a
barrier for the slowest; a core shared with a busy process stalls every
barrier (src/gpt2cli/threads.py). The `gpt2` command therefore lowers its
math threads to the cores left free. This measures that choice against the
old default (OMP_NUM_THREADS = all cores) and against one thread (not in
--quick), with the machine idle and with busy loops on half its cores (at
least one), in fresh processes, interleaved:

- generate: the tiny preset with random weights (speed does not depend on
  them), batch 1, top-k 40, tokens/s after the first token (as printed);
- train: the tiny preset at batch 4 x 256 on 1 MB of the built-in stories,
  the median of the tokens/s lines after the first (it holds the warm-up);
- two runs (not in --quick): a 200-step training, and a 60-step one started
  beside it at its step 20, both auto or both on all cores: the wall time of
  each and of the pair (training fits its threads again at each log step).

Writes benchmarks/results/contention.json (machine, figures, the thread
count the command chose) and prints a table. The idle rows are the check that
the choice costs nothing when nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

from machine import machine_info  # noqa: E402  (after the path fix above)

RESULTS = _HERE / "results" / "contention.json"
GPT2 = [sys.executable, "-m", "gpt2cli"]
BUSY_LOOP = "while True: pass"


def settings(cores: int, quick: bool) -> dict[str, dict[str, str]]:
    """The thread settings compared: the environment each adds (auto = the command's own choice)."""
    compared = {"auto": {}, f"all {cores}": {"OMP_NUM_THREADS": str(cores)}}
    if not quick:
        compared["1"] = {"OMP_NUM_THREADS": "1"}
    return compared


def command_env(extra_env: dict[str, str]) -> dict[str, str]:
    """This environment without thread settings (so the command chooses), plus `extra_env`."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**env, **extra_env}


def run(args: list[str], extra_env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(GPT2 + args, cwd=cwd, env=command_env(extra_env), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"gpt2 {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stderr


def chosen_threads(stderr: str, cores: int, extra_env: dict[str, str]) -> int:
    if "OMP_NUM_THREADS" in extra_env:
        return int(extra_env["OMP_NUM_THREADS"])
    m = re.search(r"using (\d+) math threads? of", stderr)
    return int(m.group(1)) if m else cores


def generate_speed(ckpt: Path, tokens: int, extra_env: dict[str, str], cwd: Path) -> tuple[float, str]:
    err = run(
        ["generate", "", "--ckpt", str(ckpt), "--max-new-tokens", str(tokens), "--top-k", "40", "--seed", "1"],
        extra_env,
        cwd,
    )
    m = re.search(r"then ([\d,.]+) tokens/s", " ".join(err.split()))
    return float(m.group(1).replace(",", "")), err


def train_args(data: Path, out: Path, steps: int, log_every: int) -> list[str]:
    args = ["train", "--data", str(data), "--preset", "tiny", "--out", str(out)]
    args += ["--steps", str(steps), "--eval-every", "100000", "--batch-size", "4"]
    # The run's closing eval and samples are not what is timed: keep them small.
    for setting in (f"log_every={log_every}", "eval_batches=1", "eval_samples=1", "sample_tokens=8"):
        args += ["--set", f"train.{setting}"]
    return args


def rates(stderr: str) -> list[float]:
    return [float(r.replace(",", "")) for r in re.findall(r"\| ([\d,]+) tok/s", stderr)]


def train_speed(data: Path, steps: int, extra_env: dict[str, str], cwd: Path) -> tuple[float, str]:
    with tempfile.TemporaryDirectory(dir=cwd) as out:
        err = run(train_args(data, Path(out) / "run", steps, 1), extra_env, cwd)
    r = rates(err)
    return statistics.median(r[1:] or r), err


def two_runs(data: Path, extra_env: dict[str, str], cwd: Path, steps_a: int, steps_b: int) -> dict:
    """Run A, and once A has logged 20 steps a second run B beside it: wall seconds of each and of both.

    What a user does who starts a second training (another attention kind, say) while the first runs.
    """
    env = command_env(extra_env)
    with tempfile.TemporaryDirectory(dir=cwd) as out:
        out = Path(out)
        t0 = time.monotonic()
        with open(out / "a.err", "w") as a_err:
            a = subprocess.Popen(
                GPT2 + train_args(data, out / "a", steps_a, 10), cwd=cwd, env=env,
                stdout=subprocess.DEVNULL, stderr=a_err, text=True,
            )
            while "step 20 " not in (out / "a.err").read_text() and a.poll() is None:
                time.sleep(0.1)
            tb = time.monotonic()
            b = subprocess.run(
                GPT2 + train_args(data, out / "b", steps_b, 10), cwd=cwd, env=env, capture_output=True, text=True,
            )
            tb_end = time.monotonic()
            a.wait()
        ta_end = time.monotonic()
        a_text = (out / "a.err").read_text()
    if a.returncode != 0 or b.returncode != 0:
        raise SystemExit(f"two runs failed:\n{a_text[-1500:]}\n{b.stderr[-1500:]}")
    b_rates = rates(b.stderr)
    return {
        "a_s": round(ta_end - t0, 2),
        "b_s": round(tb_end - tb, 2),
        "both_s": round(max(ta_end, tb_end) - t0, 2),
        "b_tokens_per_s": statistics.median(b_rates[1:] or b_rates),
        "a_thread_lines": re.findall(r"using \d+ math threads? of \d+", a_text),
    }


def busy_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, fewer tokens and steps, no 1-thread rows")
    parser.add_argument("--repeats", type=int, default=None)
    opts = parser.parse_args()
    repeats = opts.repeats or (1 if opts.quick else 3)
    tokens, steps = (64, 6) if opts.quick else (200, 12)

    import torch

    from gpt2cli.checkpoint import save_checkpoint
    from gpt2cli.config import load_run_config
    from gpt2cli.model import GPT

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cores < 2:
        print("contention: skipped, one core only (nothing to share)")
        return
    busy = max(1, cores // 2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        ckpt = save_checkpoint(GPT(load_run_config("tiny").model), tmp / "tiny.safetensors")
        run(["tokenize", "--builtin-stories", "1MB", "-o", str(tmp / "data")], {"OMP_NUM_THREADS": "1"}, tmp)
        rows: dict[tuple[str, str, str], list[float]] = {}
        threads: dict[tuple[str, str], list[int]] = {}
        for load in ("idle", f"{busy} busy"):
            procs = busy_processes(busy if load != "idle" else 0)
            try:
                for _ in range(repeats):
                    for name, env in settings(cores, opts.quick).items():
                        speed, err = generate_speed(ckpt, tokens, env, tmp)
                        rows.setdefault((load, "generate", name), []).append(speed)
                        threads.setdefault((load, name), []).append(chosen_threads(err, cores, env))
                        speed, _ = train_speed(tmp / "data", steps, env, tmp)
                        rows.setdefault((load, "train", name), []).append(speed)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
        pairs = {}
        if not opts.quick:
            for name, env in settings(cores, quick=True).items():  # auto and all cores
                pairs[name] = two_runs(tmp / "data", env, tmp, steps_a=200, steps_b=60)

    print(f"\n{'load':>8}  {'work':>8}  {'threads':>8}  {'chose':>5}  {'tokens/s':>9}  {'vs all':>6}")
    figures = []
    for (load, work, name), speeds in rows.items():
        median = statistics.median(speeds)
        base = statistics.median(rows[(load, work, f"all {cores}")])
        chose = threads[(load, name)]  # per repeat: the load can differ from one start to the next
        shown = ",".join(str(n) for n in sorted(set(chose)))
        print(f"{load:>8}  {work:>8}  {name:>8}  {shown:>5}  {median:>9,.0f}  {median / base:>5.2f}x")
        figures.append(
            {"load": load, "work": work, "setting": name, "threads": chose, "tokens_per_s": speeds,
             "median": median, "vs_all_cores": median / base}
        )
    if pairs:
        print(f"\ntwo runs, the second started at the first's step 20:\n{'threads':>8}  {'first':>7}  {'second':>7}  {'both':>7}")
        for name, pair in pairs.items():
            print(f"{name:>8}  {pair['a_s']:>6.1f}s  {pair['b_s']:>6.1f}s  {pair['both_s']:>6.1f}s")
    auto_busy = [f for f in figures if f["setting"] == "auto" and f["load"] != "idle"]
    auto_idle = [f for f in figures if f["setting"] == "auto" and f["load"] == "idle"]
    headline = ", ".join(f"{f['work']} busy {f['vs_all_cores']:.2f}x" for f in auto_busy)
    headline += "; idle " + ", ".join(f"{f['work']} {f['vs_all_cores']:.2f}x" for f in auto_idle)
    result = {
        "machine": machine_info(),
        "busy_processes": busy,
        "repeats": repeats,
        "new_tokens": tokens,
        "train_steps": steps,
        "figures": figures,
        "two_runs": pairs,
        "headline": f"auto threads vs all cores: {headline}",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\n{result['headline']}\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
