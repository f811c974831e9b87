"""Benchmark `gpt2 tokenize` against single-threaded tiktoken on the same text.

Generates a built-in story corpus (default 1 GB), then measures in one run:
  1. baseline: tiktoken `encode_ordinary` over every document, one thread,
     timing only the encode calls (reading and splitting excluded);
  2. `gpt2 tokenize --workers N` as a real process, end to end (reading,
     hashing, tokenizing, writing and fsyncing shards), for each N asked.
Peak memory is sampled over the whole process tree (the CLI and its workers):
the sum of RSS (shared pages counted once per process, an upper bound), the
sum of PSS (shared pages split fairly) and the largest single RSS.

Targets (issue #3): with 2 workers, throughput >= 1.7x the baseline; peak
RSS < 1.5 GB.

    python benchmarks/tokenize.py                 # 1 GB, workers 2
    python benchmarks/tokenize.py --size 100MB --workers 1,2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# This file shares its name with the standard library's `tokenize`, which torch
# imports (through inspect and linecache): keep this folder off the import path
# before importing anything that might.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import psutil  # noqa: E402

from gpt2cli.data.sizes import parse_size  # noqa: E402
from gpt2cli.data.stories import write_corpus  # noqa: E402
from gpt2cli.tokenizer import EOT_TEXT, get_tokenizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import tiktoken
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tiktoken": tiktoken.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


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
    """Samples a process and its children every 50 ms; keeps the peaks."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak_rss_sum = self.peak_pss_sum = self.peak_rss_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = top = 0
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    info = p.memory_full_info()
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
                top = max(top, info.rss)
            self.peak_rss_sum = max(self.peak_rss_sum, rss)
            self.peak_pss_sum = max(self.peak_pss_sum, pss)
            self.peak_rss_max = max(self.peak_rss_max, top)
            self._stop.wait(0.05)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GB", help="corpus size to generate (default 1GB)")
    parser.add_argument("--workers", default="2", help="comma-separated worker counts (default 2)")
    parser.add_argument("--corpus", type=Path, help="use this existing corpus file instead of generating one")
    parser.add_argument("--tmp", type=Path, help="directory for the corpus and shards (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=RESULTS / "tokenize.json", help="where to write results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        result: dict = {"machine": machine()}
        if args.corpus:
            corpus = args.corpus
        else:
            corpus = tmp / "stories.txt"
            n = parse_size(args.size, "--size")
            t = time.perf_counter()
            write_corpus(corpus, n, seed=0)
            dt = time.perf_counter() - t
            result["generate"] = {"bytes": corpus.stat().st_size, "seconds": round(dt, 2), "mb_per_s": round(n / 1e6 / dt, 1)}
            print(f"generated {corpus.stat().st_size / 1e6:.0f} MB of stories in {dt:.1f} s", flush=True)
        result["corpus_bytes"] = corpus.stat().st_size
        base = baseline(corpus)
        result["baseline_encode_ordinary_1_thread"] = base
        print(f"baseline tiktoken encode_ordinary, 1 thread: {base['mb_per_s']:.1f} MB/s, {base['tokens_per_s']:,} tokens/s", flush=True)
        runs = []
        for workers in (int(w) for w in args.workers.split(",")):
            run = pipeline(corpus, workers, tmp / f"out{workers}")
            run["speedup_vs_baseline"] = round(run["mb_per_s"] / base["mb_per_s"], 2)
            # Load-independent view: baseline CPU per pipeline CPU. On an idle machine with
            # N free cores, N workers can reach at most about N x this.
            run["cpu_efficiency_vs_baseline"] = round(base["cpu_seconds"] / run["cpu_seconds"], 3)
            runs.append(run)
            print(
                f"gpt2 tokenize --workers {workers}: {run['mb_per_s']:.1f} MB/s, {run['tokens_per_s']:,} tokens/s "
                f"({run['speedup_vs_baseline']:.2f}x baseline; CPU efficiency {run['cpu_efficiency_vs_baseline']:.2f}); peak memory: RSS sum {run['peak_rss_sum_mb']} MB, "
                f"PSS sum {run['peak_pss_sum_mb']} MB, largest process {run['peak_rss_largest_process_mb']} MB",
                flush=True,
            )
            if run["tokens"] != base["tokens"]:
                print(f"  warning: {run['tokens']:,} tokens vs {base['tokens']:,} in the baseline", flush=True)
        result["tokenize"] = runs
        result["machine"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
