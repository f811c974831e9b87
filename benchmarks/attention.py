"""Attention kinds side by side: training cost by sequence length, and decoding speed.

    python benchmarks/attention.py            # full run
    python benchmarks/attention.py --quick    # fewer repeats and decode steps

For each kind (standard, linear, gated):

- forward+backward of ONE attention sublayer (c_attn -> mixing -> [gate] ->
  c_proj; 4 heads, 256 wide, batch 1, fp32) on a (1, T, 256) input at
  T = 256, 1024, 4096: median wall time, and peak memory. Isolating the
  sublayer shows the mixing's own cost; the MLP and embeddings around it are
  the same for every kind.
- decoding: a 4-layer GPT-2 (4 heads, 256 wide, the GPT-2 vocabulary,
  block_size 2048 + the new tokens) is prefilled with 2,000 tokens, then
  generates greedily one token at a time; tokens/s over those steps, and the
  size of the decode state (KV cache or linear attention's S and z). At this
  width the 50257-way LM head dominates a step, so we also time one attention
  sublayer stepping alone at 2,000 positions of context (attn_step_us).

Peak memory: every measurement runs in a fresh subprocess (so one kind's
freed memory cannot hide another's peak). Torch's CPU tensors are invisible
to tracemalloc, so we read the process's peak resident set size
(getrusage ru_maxrss) just before and just after one forward+backward; the
difference is what that step added at its peak (activations, temporaries,
gradients of the input). MALLOC_MMAP_THRESHOLD_ is pinned so that glibc
serves every large tensor from mmap and returns it on free; RSS then follows
live tensors instead of a heap that never shrinks.

Writes benchmarks/results/attention.json (with the machine: CPU, cores,
torch version, date) and prints a table. Figures from a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# A sibling named like a stdlib module (tokenize.py) must not shadow it: keep
# this folder on the path, but last (for `machine`).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

KINDS = ("standard", "linear", "gated")
LENGTHS = (256, 1024, 4096)
WIDTH, HEADS = 256, 4
DECODE_LAYERS, CONTEXT = 4, 2000
RESULTS = Path(__file__).resolve().parent / "results" / "attention.json"


# -- measurements, each run in its own subprocess ---------------------------------------------


def peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def measure_train(kind: str, T: int, repeats: int) -> dict:
    import torch

    from gpt2cli.config import ModelConfig
    from gpt2cli.model import GPT

    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=1, n_head=HEADS, n_embd=WIDTH, block_size=T, vocab_size=64, attention=kind
    )
    attn = GPT(cfg).transformer.h[0].attn.train()  # GPT's init, the gate's included

    def step(x):
        attn(x).square().mean().backward()

    # Warm-up: one-time lazy setup, and the parameter grads get allocated before we measure.
    step(torch.randn(1, 64, WIDTH, requires_grad=True))
    x = torch.randn(1, T, WIDTH, requires_grad=True)
    before = peak_rss_bytes()
    step(x)
    peak = peak_rss_bytes() - before
    times = []
    for _ in range(repeats):
        x.grad = None
        t0 = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t0)
    return dict(kind=kind, T=T, fwd_bwd_ms=1000 * statistics.median(times), peak_mb=peak / 2**20)


def measure_decode(kind: str, new_tokens: int) -> dict:
    import torch

    from gpt2cli.config import ModelConfig
    from gpt2cli.model import GPT

    torch.manual_seed(0)
    block = -(-(CONTEXT + new_tokens) // 64) * 64
    cfg = ModelConfig(
        n_layer=DECODE_LAYERS,
        n_head=HEADS,
        n_embd=WIDTH,
        block_size=max(block, 2048),
        attention=kind,
    )
    model = GPT(cfg).eval()
    context = torch.randint(0, cfg.vocab_size, (1, CONTEXT))
    with torch.no_grad():
        state = model.new_state(1)
        t0 = time.perf_counter()
        logits = model(context, state=state, last_only=True)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            logits = model(logits.argmax(-1), state=state, last_only=True)
        elapsed = time.perf_counter() - t0
        # The mixing alone: one attention sublayer stepping at 2,000 positions of context.
        attn = model.transformer.h[0].attn
        layer_state = attn.new_state(1, CONTEXT + new_tokens, context.device, torch.float32)
        attn(torch.randn(1, CONTEXT, WIDTH), layer_state)
        xs = torch.randn(new_tokens, 1, 1, WIDTH)
        t0 = time.perf_counter()
        for x in xs:
            attn(x, layer_state)
        attn_step = (time.perf_counter() - t0) / new_tokens
    return dict(
        kind=kind,
        context=CONTEXT,
        new_tokens=new_tokens,
        tokens_per_s=new_tokens / elapsed,
        prefill_ms=1000 * prefill,
        state_mb=state.nbytes() / 2**20,
        attn_step_us=1e6 * attn_step,
    )


def in_subprocess(*args: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker {' '.join(args)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the report -----------------------------------------------------------------------------


def machine() -> dict:
    import torch
    from machine import cpu_model

    return dict(
        cpu=cpu_model(),
        cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def print_table(train: list[dict], decode: list[dict]) -> None:
    print(
        f"\nforward+backward, one attention sublayer ({HEADS} heads, {WIDTH} wide, batch 1, fp32)"
    )
    print(f"{'kind':<10}" + "".join(f"{f'T={T} ms':>13}{f'T={T} MB':>12}" for T in LENGTHS))
    for kind in KINDS:
        row = {r["T"]: r for r in train if r["kind"] == kind}
        print(
            f"{kind:<10}"
            + "".join(f"{row[T]['fwd_bwd_ms']:>13.1f}{row[T]['peak_mb']:>12.1f}" for T in LENGTHS)
        )
    print(
        f"\ndecode after {CONTEXT} tokens of context ({DECODE_LAYERS}-layer GPT-2, {HEADS} heads, {WIDTH} wide)"
    )
    print(
        f"{'kind':<10}{'tokens/s':>10}{'prefill ms':>12}{'state MB':>10}{'1-layer attn step us':>22}"
    )
    for r in decode:
        print(
            f"{r['kind']:<10}{r['tokens_per_s']:>10.1f}{r['prefill_ms']:>12.1f}"
            f"{r['state_mb']:>10.2f}{r['attn_step_us']:>22.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 timed repeats, 16 decode steps")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # inside a fresh subprocess: one measurement, printed as JSON
        what, kind, n, *rest = args.worker
        result = (
            measure_train(kind, int(n), int(rest[0]))
            if what == "train"
            else measure_decode(kind, int(n))
        )
        print(json.dumps(result))
        return

    repeats, new_tokens = (2, 16) if args.quick else (5, 64)
    train, decode = [], []
    for kind in KINDS:
        for T in LENGTHS:
            print(f"fwd+bwd {kind} T={T} ...", file=sys.stderr, flush=True)
            train.append(in_subprocess("train", kind, str(T), str(repeats)))
        print(f"decode {kind} ...", file=sys.stderr, flush=True)
        decode.append(in_subprocess("decode", kind, str(new_tokens)))

    from gpt2cli.atomic import write_text_atomic

    report = dict(
        machine=machine(),
        quick=args.quick,
        setup=dict(
            train=f"one attention sublayer, {HEADS} heads, {WIDTH} wide, batch 1, fp32, median of {repeats}",
            memory="peak RSS delta over one forward+backward, fresh subprocess per measurement",
            decode=f"{DECODE_LAYERS}-layer GPT-2, {HEADS} heads, {WIDTH} wide, vocab 50257, "
            f"{CONTEXT}-token prefill, {new_tokens} greedy steps; attn_step_us: one attention "
            f"sublayer's step at {CONTEXT} positions",
        ),
        train=train,
        decode=decode,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print_table(train, decode)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
