"""Benchmark `gpt2 tokenize` against single-threaded tiktoken on the same text.

Generates a built-in story corpus (default 1 GB), then measures in one run:
  1. baseline: tiktoken `encode_ordinary` over every document, one thread,
     timing only the encode calls (reading and splitting excluded);
  2. `gpt2 tokenize --workers N` as a real process, end to end (reading,
     hashing, tokenizing, writing and fsyncing shards), for each N asked.
Peak memory is sampled over the whole process tree (the CLI and its workers):
the sum of RSS (shared pages counted once per process, an upper bound), the
sum of PSS (shared pages split fairly) and the largest single RSS.

The machine's speed drifts by 10-30% from minute to minute (a shared VM), so
baseline and pipeline runs alternate (--repeats rounds of: baseline, then each
worker count) and the speed-up is the median of each round's own ratio.

Targets (issue #3): with 2 workers, throughput >= 1.7x the baseline; peak
RSS < 1.5 GB.

    python benchmarks/tokenize.py                 # 1 GB, workers 2, 2 rounds
    python benchmarks/tokenize.py --quick         # 200 MB, 2 rounds (make bench)
    python benchmarks/tokenize.py --size 100MB --workers 1,2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# This file shares its name with the standard library's `tokenize`, which torch
# imports (through inspect and linecache): keep this folder off the front of the
# import path before importing anything that might; sibling modules (machine.py) stay importable from the end.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import psutil  # noqa: E402

from gpt2cli.data.sizes import parse_size  # noqa: E402
from gpt2cli.data.stories import write_corpus  # noqa: E402
from gpt2cli.tokenizer import EOT_TEXT, get_tokenizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import tiktoken
    from machine import machine_info

    return {**machine_info(), "tiktoken": tiktoken.__version__}


def baseline(path: Path) -> dict:
    """Single-thread encode_ordinary per document; only the encode calls are timed."""
    enc = get_tokenizer()
    sep = f"\n{EOT_TEXT}\n"
    encode_seconds = encode_cpu = 0.0
    tokens = 0
    text_bytes = 0
    carry = ""
    with open(path, encoding="utf-8", newline="") as fh:
        while block := fh.read(8 << 20):
            docs = (carry + block).split(sep)
            carry = docs.pop()
            for doc in docs:
                t, c = time.perf_counter(), time.process_time()
                ids = enc.encode_ordinary(doc)
                encode_seconds += time.perf_counter() - t
                encode_cpu += time.process_time() - c
                tokens += len(ids) + 1  # + the EOT the pipeline writes
                text_bytes += len(doc.encode("utf-8")) + len(sep)
    if carry.strip():
        t = time.perf_counter()
        tokens += len(enc.encode_ordinary(carry.rstrip("\n")))
        encode_seconds += time.perf_counter() - t
    text_bytes = path.stat().st_size
    return {
        "seconds": round(encode_seconds, 2),
        "cpu_seconds": round(encode_cpu, 2),
        "mb_per_s": round(text_bytes / 1e6 / encode_seconds, 2),
        "tokens_per_s": round(tokens / encode_seconds),
        "tokens": tokens,
    }


class TreeMemory:
    """Samples a process and its children; keeps the peaks.

    Sampling must not steal CPU from the run it measures: RSS (/proc/PID/statm,
    ~0.03 ms a process) every 0.1 s, while the process list (~2.5 ms) and PSS
    (smaps_rollup, ~0.7 ms a process) are refreshed once a second. Sampling
    everything every 50 ms cost the pipeline ~5% of a core.
    """

    RSS_EVERY = 0.1
    FULL_EVERY = 10  # RSS samples per process-list and PSS refresh

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak_rss_sum = self.peak_pss_sum = self.peak_rss_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        procs: list[psutil.Process] = []
        tick = 0
        while not self._stop.is_set():
            full = tick % self.FULL_EVERY == 0
            tick += 1
            if full:
                try:
                    procs = [self.proc, *self.proc.children(recursive=True)]
                except psutil.Error:
                    break
            rss = pss = top = 0
            for p in procs:
                try:
                    info = p.memory_full_info() if full else p.memory_info()
                except psutil.Error:
                    continue
                rss += info.rss
                if full:
                    pss += getattr(info, "pss", info.rss)  # no PSS outside Linux: RSS bounds it
                top = max(top, info.rss)
            self.peak_rss_sum = max(self.peak_rss_sum, rss)
            self.peak_pss_sum = max(self.peak_pss_sum, pss)
            self.peak_rss_max = max(self.peak_rss_max, top)
            self._stop.wait(self.RSS_EVERY)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {
            "peak_rss_sum_mb": round(self.peak_rss_sum / 1e6),
            "peak_pss_sum_mb": round(self.peak_pss_sum / 1e6),
            "peak_rss_largest_process_mb": round(self.peak_rss_max / 1e6),
        }


def pipeline(path: Path, workers: int, out_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "gpt2cli", "tokenize", str(path), "-o", str(out_dir), "--workers", str(workers), "--json", "--force"]
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    mem = memory.stop()
    if proc.returncode != 0:
        raise SystemExit(f"gpt2 tokenize failed ({proc.returncode}):\n{err}")
    summary = json.loads(out)
    return {
        "workers": workers,
        "seconds": summary["seconds"],
        "wall_seconds_with_startup": round(wall, 2),
        # CPU of the CLI and its workers, Python start-up and imports included.
        "cpu_seconds": round(cpu, 2),
        "mb_per_s": summary["mb_per_s"],
        "tokens_per_s": summary["tokens_per_s"],
        "tokens": sum(summary["tokens"].values()),
        "documents": sum(summary["documents"].values()),
        **mem,
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default=None, help="corpus size to generate (default 1GB; 200MB with --quick)")
    parser.add_argument("--workers", default="2", help="comma-separated worker counts (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of baseline + pipeline runs (default 2)")
    parser.add_argument("--quick", action="store_true", help="a 200 MB corpus (what `make bench` runs)")
    parser.add_argument("--corpus", type=Path, help="use this existing corpus file instead of generating one")
    parser.add_argument("--tmp", type=Path, help="directory for the corpus and shards (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=RESULTS / "tokenize.json", help="where to write results")
    args = parser.parse_args()
    size = args.size or ("200MB" if args.quick else "1GB")
    worker_counts = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        result: dict = {"benchmark": "tokenize", "machine": machine(), "repeats": args.repeats}
        if args.corpus:
            corpus = args.corpus
        else:
            corpus = tmp / "stories.txt"
            n = parse_size(size, "--size")
            t = time.perf_counter()
            write_corpus(corpus, n, seed=0)
            dt = time.perf_counter() - t
            result["generate"] = {"bytes": corpus.stat().st_size, "seconds": round(dt, 2), "mb_per_s": round(n / 1e6 / dt, 1)}
            print(f"generated {corpus.stat().st_size / 1e6:.0f} MB of stories in {dt:.1f} s", flush=True)
        result["corpus_bytes"] = corpus.stat().st_size
        bases: list[dict] = []
        runs: dict[int, list[dict]] = {w: [] for w in worker_counts}
        for round_ in range(1, args.repeats + 1):
            base = baseline(corpus)
            bases.append(base)
            print(f"[{round_}] baseline tiktoken encode_ordinary, 1 thread: {base['mb_per_s']:.1f} MB/s, {base['tokens_per_s']:,} tokens/s", flush=True)
            for workers in worker_counts:
                run = pipeline(corpus, workers, tmp / f"out{workers}")
                run["speedup_vs_this_rounds_baseline"] = round(run["mb_per_s"] / base["mb_per_s"], 3)
                # Load-independent view: baseline CPU per pipeline CPU. On an idle machine with
                # N free cores, N workers can reach at most about N x this.
                run["cpu_efficiency_vs_baseline"] = round(base["cpu_seconds"] / run["cpu_seconds"], 3)
                runs[workers].append(run)
                print(
                    f"[{round_}] gpt2 tokenize --workers {workers}: {run['mb_per_s']:.1f} MB/s, {run['tokens_per_s']:,} tokens/s "
                    f"({run['speedup_vs_this_rounds_baseline']:.2f}x this round's baseline; CPU efficiency {run['cpu_efficiency_vs_baseline']:.2f}); "
                    f"peak memory: RSS sum {run['peak_rss_sum_mb']} MB, PSS sum {run['peak_pss_sum_mb']} MB, "
                    f"largest process {run['peak_rss_largest_process_mb']} MB",
                    flush=True,
                )
                if run["tokens"] != base["tokens"]:
                    print(f"  warning: {run['tokens']:,} tokens vs {base['tokens']:,} in the baseline", flush=True)
        result["baseline_encode_ordinary_1_thread"] = {
            "runs": bases,
            "median_mb_per_s": round(median([b["mb_per_s"] for b in bases]), 2),
            "median_tokens_per_s": round(median([b["tokens_per_s"] for b in bases])),
        }
        summary = []
        for workers, rs in runs.items():
            summary.append({
                "workers": workers,
                "runs": rs,
                "median_mb_per_s": round(median([r["mb_per_s"] for r in rs]), 2),
                "median_tokens_per_s": round(median([r["tokens_per_s"] for r in rs])),
                "median_speedup_vs_baseline": round(median([r["speedup_vs_this_rounds_baseline"] for r in rs]), 3),
                "peak_rss_largest_process_mb": max(r["peak_rss_largest_process_mb"] for r in rs),
                "peak_rss_sum_mb": max(r["peak_rss_sum_mb"] for r in rs),
                "peak_pss_sum_mb": max(r["peak_pss_sum_mb"] for r in rs),
            })
        result["tokenize"] = summary
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    top = summary[-1]
    result["headline"] = (
        f"tokenize {result['corpus_bytes'] / 1e6:.0f} MB, --workers {top['workers']}: {top['median_mb_per_s']:.1f} MB/s = "
        f"{top['median_speedup_vs_baseline']:.2f}x single-thread tiktoken (median of {args.repeats}; target 1.7x with 2), "
        f"peak RSS {top['peak_pss_sum_mb']} MB PSS / largest process {top['peak_rss_largest_process_mb']} MB (target < 1500)"
    )
    print(result["headline"], flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
