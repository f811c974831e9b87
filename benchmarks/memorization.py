"""The memorization n-gram index at scale, and a longer overfitting run.

    python benchmarks/memorization.py                    # 50M training tokens (issue 7, Done-when 2)
    python benchmarks/memorization.py --tokens 5000000   # a quicker check
    python benchmarks/memorization.py --quick            # 5M tokens (what `make bench` runs)
    python benchmarks/memorization.py --overfit-run      # Done-when 3 at a larger scale

Index: writes a data dir with N synthetic training tokens (Zipf-distributed
ids like a natural-language token stream, an EOT every ~200 tokens), then
in a fresh subprocess builds the 8/16/32-gram index exactly as `gpt2 eval`
does (read_tokens, the meta.json shard key, build_cached_index) and reports
wall time and the process's peak RSS (getrusage ru_maxrss: numpy, the
tokens and the index arrays included). A second subprocess opens the cached
index and times `overlap_report` on a 32 x 256-token sample (half the samples
quote a training span of 40-200 tokens; the report must find each quote's
length), best and median of 5.

Overfit run: the experiment of tests/test_eval_cli.py (built-in stories on
a compact vocabulary, a minimal AdamW loop) with more data, a wider model
and many more steps; `run_eval` every --eval-every steps records the loss
gap, extraction rates and generation figures, and the loss–generation
mismatch alarm is run over that history.

Writes benchmarks/results/memorization.json (or memorization_overfit.json)
with the machine (CPU, cores, torch, date). Figures from a shared machine are noisy.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder is sys.path[0]; a sibling named like a stdlib
# module (tokenize.py) would shadow it for numpy's own imports. Drop the folder
# before anything else is imported (hence the E402s below).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]
# ruff: noqa: E402

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SAMPLES, SAMPLE_LEN = 32, 256


def machine() -> dict:
    import torch
    from machine import cpu_model

    return dict(
        cpu=cpu_model(),
        cores=os.cpu_count(),
        torch=torch.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux: KiB


# -- index --------------------------------------------------------------------------


def write_synthetic_data(out: Path, n_tokens: int, seed: int = 0) -> None:
    """A data dir of Zipf-distributed token ids with EOT between ~200-token documents."""
    from gpt2cli.data.meta import DataMeta, SplitSettings, write_meta
    from gpt2cli.data.writer import ShardWriter
    from gpt2cli.tokenizer import EOT_ID, RANKS_SHA256, TOKENIZER_NAME, VOCAB_SIZE

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    shards, tokens = [], {}
    for split, n in (("train", n_tokens), ("val", max(n_tokens // 200, 10_000))):
        writer = ShardWriter(out, split, 100_000_000)
        left = n
        while left:
            k = min(left, 1 << 23)
            block = (rng.zipf(1.2, size=k) - 1) % EOT_ID
            block[rng.random(k) < 1 / 200] = EOT_ID
            writer.write(block.astype(np.uint16))
            left -= k
        shards += writer.close()
        tokens[split] = n
    write_meta(out, DataMeta(
        tokenizer=TOKENIZER_NAME, ranks_sha256=RANKS_SHA256, vocab_size=VOCAB_SIZE, eot_id=EOT_ID,
        shard_tokens=100_000_000, documents={"train": n_tokens // 200, "val": tokens["val"] // 200},
        tokens=tokens, shards=shards, sources=[], split=SplitSettings(val_fraction=0.005, seed=seed),
    ))


def open_index(data_dir: Path):
    from gpt2cli.analysis.ngram_index import CACHE_DIR_NAME, build_cached_index, cache_key
    from gpt2cli.data.meta import read_meta
    from gpt2cli.data.reader import read_tokens

    meta = read_meta(data_dir)
    train = read_tokens(data_dir, "train")
    key = cache_key([s.sha256 for s in meta.split_shards("train")])
    return train, *build_cached_index(train, data_dir / CACHE_DIR_NAME, key)


def child_build(data_dir: Path) -> dict:
    t0 = time.perf_counter()
    _, index, info = open_index(data_dir)
    seconds = time.perf_counter() - t0
    sizes = {n: int(len(t)) for n, t in index.tables.items()}
    return {"seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "built": info["built"], "distinct": sizes}


def child_query(data_dir: Path) -> dict:
    from gpt2cli.analysis.memorization import overlap_report

    t0 = time.perf_counter()
    train, index, info = open_index(data_dir)
    open_seconds = time.perf_counter() - t0
    assert not info["built"], "the index should have been cached by the build step"
    rng = np.random.default_rng(1)
    samples, quoted = [], []
    for i in range(SAMPLES):
        s = ((rng.zipf(1.2, size=SAMPLE_LEN) - 1) % 50256).astype(np.int64)
        length = 0
        if i % 2 == 0:  # quote a training span
            length = int(rng.integers(40, 201))
            src = int(rng.integers(0, len(train) - length))
            s[20 : 20 + length] = train[src : src + length]
        samples.append(s.tolist())
        quoted.append(length)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        report = overlap_report(index, samples)
        times.append(time.perf_counter() - t0)
    found = report["longest"]["per_sample"]
    quotes_found = all(f >= q for f, q in zip(found, quoted, strict=True) if q)
    return {
        "open_seconds": open_seconds,
        "query_seconds_best": min(times),
        "query_seconds_median": statistics.median(times),
        "quotes_found": quotes_found,
        "longest_quoted": quoted,
        "longest_found": found,
        "share_by_n": {n: v["share"] for n, v in report["per_n"].items()},
    }


def run_child(mode: str, data_dir: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, f"--{mode}", str(data_dir)], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SystemExit(f"{mode} step failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def bench_index(n_tokens: int, workdir: Path | None) -> dict:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        data_dir = Path(tmp) / "data"
        t0 = time.perf_counter()
        write_synthetic_data(data_dir, n_tokens)
        print(f"wrote {n_tokens:,} training tokens in {time.perf_counter() - t0:.1f}s", flush=True)
        build = run_child("build", data_dir)
        print(
            f"index build: {build['seconds']:.1f}s, peak RSS {build['peak_rss_bytes'] / 2**30:.2f} GiB",
            flush=True,
        )
        query = run_child("query", data_dir)
        print(
            f"query {SAMPLES}x{SAMPLE_LEN}: best {query['query_seconds_best'] * 1000:.0f} ms, "
            f"median {query['query_seconds_median'] * 1000:.0f} ms; quotes found: {query['quotes_found']}",
            flush=True,
        )
    return {
        "train_tokens": n_tokens,
        "build": build,
        "query": query,
        "goals": {"build_seconds": 60, "peak_rss_bytes": 2 * 2**30, "query_seconds": 1.0},
        "met": {
            "build_seconds": build["seconds"] <= 60,
            "peak_rss": build["peak_rss_bytes"] <= 2 * 2**30,
            "query_seconds": query["query_seconds_median"] < 1.0,
        },
    }


# -- the longer overfitting run -------------------------------------------------------


def overfit_run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        return _overfit_run(args, Path(tmp))


def _overfit_run(args, tmp: Path) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from tests.test_eval_cli import (  # the same data as the fast test
        COMPACT_VOCAB,
        compact_data_dir,
    )

    from gpt2cli.analysis.alarms import mismatch_alarm
    from gpt2cli.analysis.evaluate import EvalOptions, run_eval
    from gpt2cli.checkpoint import save_checkpoint
    from gpt2cli.config import ModelConfig
    from gpt2cli.data.reader import read_tokens
    from gpt2cli.data.shards import TokenizeOptions, run_tokenize
    from gpt2cli.model import GPT

    run_tokenize(TokenizeOptions(builtin_stories=args.story_bytes, out_dir=tmp / "gpt2", val_fraction=0.1, workers=1))
    data = compact_data_dir(tmp / "gpt2", tmp / "data")
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=args.layers, n_head=4, n_embd=args.width, block_size=args.block, vocab_size=COMPACT_VOCAB
    )
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    tokens = np.asarray(read_tokens(data, "train"), dtype=np.int64)
    rng = np.random.default_rng(0)
    options = EvalOptions(
        eval_tokens=65536, num_samples=32, max_new_tokens=args.block, extract_windows=64,
        prompt_tokens=32, suffix_tokens=32, seed=1337,
    )
    history, evals = [], []
    t_start = time.perf_counter()
    for step in range(1, args.steps + 1):
        model.train()
        starts = rng.integers(0, len(tokens) - args.block - 1, size=args.batch)
        w = torch.from_numpy(np.stack([tokens[s : s + args.block + 1] for s in starts]))
        loss = model.loss(w[:, :-1], w[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            ckpt = save_checkpoint(model, tmp / "ckpt.safetensors", tokenizer="gpt2-compact", step=step)
            result = run_eval(ckpt, data, options, device="cpu")
            gen = result["repetition"]["samples"]
            record = {
                "step": step,
                "train_loss": result["loss"]["train_loss"],
                "val_loss": result["loss"]["val_loss"],
                "gap": result["loss"]["gap"],
                "extracted_train": result["memorization"]["extraction"]["train"]["share"],
                "extracted_val": result["memorization"]["extraction"]["val"]["share"],
                "seq_rep_4": gen["seq_rep_4"],
                "loop_share": gen["loop_share"],
                "entropy_last_quarter": result["entropy"]["samples"]["last_quarter"],
                "sampled_32gram_share": result["memorization"]["samples"]["per_n"]["32"]["share"],
                "verdicts": result["verdicts"],
                "seconds": time.perf_counter() - t_start,
            }
            # the alarm `gpt2 train` shows, over this run's evals
            history.append(record)
            record["alarm"] = mismatch_alarm(history, k=3)
            evals.append(record)
            print(
                f"step {step}: train {record['train_loss']:.3f} val {record['val_loss']:.3f} "
                f"extracted train {record['extracted_train']:.0%} val {record['extracted_val']:.0%} "
                f"seq-rep-4 {record['seq_rep_4']:.3f} loops {record['loop_share']:.0%}"
                + (f"\n  ALARM {record['alarm']}" if record["alarm"] else ""),
                flush=True,
            )
    final = result
    for line in final["verdicts"]:
        print(line)
    return {
        "settings": vars(args) | {"workdir": str(args.workdir) if args.workdir else None},
        "data_tokens": final["data"],
        "model": final["checkpoint"]["config"],
        "evals": evals,
        "final": {k: final[k] for k in ("loss", "verdicts")}
        | {"extraction": final["memorization"]["extraction"], "repetition": final["repetition"]["samples"],
           "reference": final["repetition"]["reference"], "entropy": {
               "samples": {k: v for k, v in final["entropy"]["samples"].items() if k != "curve"},
               "reference": {k: v for k, v in final["entropy"]["reference"].items() if k != "curve"}}},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=50_000_000, help="training tokens to index")
    ap.add_argument("--quick", action="store_true", help="index 5M tokens (what `make bench` runs)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the temporary data dir goes")
    ap.add_argument("--overfit-run", action="store_true", help="run the longer overfitting experiment instead")
    ap.add_argument("--story-bytes", type=int, default=40_000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--query", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.tokens = min(args.tokens, 5_000_000)
    if args.build:
        print(json.dumps(child_build(args.build)))
        return
    if args.query:
        print(json.dumps(child_query(args.query)))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.overfit_run:
        out = {"machine": machine(), **overfit_run(args)}
        path = RESULTS / "memorization_overfit.json"
    else:
        out = {"machine": machine(), **bench_index(args.tokens, args.workdir)}
        path = RESULTS / "memorization.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
