"""Decoding speed at batch 1: gpt2cli's `generate` beside transformers' `generate`.

    python benchmarks/generate.py            # tiny and small, 256 new tokens, 5 repeats
    python benchmarks/generate.py --quick    # 64 new tokens, 2 repeats (make bench)

For each preset (random weights from a fixed seed; the speed does not depend
on what the weights say) the same weights run in:

- gpt2cli: `gpt2cli.generation.complete`, fp32 weights, and bf16 weights
  (what `gpt2 generate --dtype bf16` does), after `prepare_for_decoding` as
  the CLI does at load (a one-time change of the weights' memory layout, not
  timed, like transformers' from_pretrained);
- transformers: GPT2LMHeadModel loaded from our `to_hf` export, `generate`
  with do_sample=True, top_k=40, top_p=1, temperature=1, KV cache on, fp32
  and bf16 weights.

Every run samples with top-k 40 from <|endoftext|> (a 1-token prompt) for
N new tokens (256 fits tiny's 256-position context exactly, so neither side
slides a window). Neither side stops at <|endoftext|> (transformers: no EOS
token; gpt2cli stops there, but random weights almost never draw it, and
tokens/s counts the tokens actually made). Implementations run interleaved,
one run each per repeat, after a warm-up run each; we report medians and the
ratios gpt2cli / transformers in the same dtype, and best / best, in wall
time and in CPU time (process time, all threads: less sensitive to other
processes on a shared machine; compare like with like via --threads).

Writes benchmarks/results/generate.json (machine: CPU, cores, threads, torch
and transformers versions, load average, date) and prints a table. On a
shared machine the figures are noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/tokenize.py shares its name with the standard library's `tokenize`, which
# torch imports: keep this folder off the import path before importing torch.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

from machine import cpu_model  # noqa: E402  (after the path fix above)

RESULTS = Path(__file__).resolve().parent / "results" / "generate.json"
EOT_ID = 50256
TOP_K = 40


def build_pair(preset: str, seed: int):
    """Our GPT with random weights for `preset`, and transformers' GPT2LMHeadModel with the same weights."""
    import torch
    from transformers import GPT2LMHeadModel

    from gpt2cli.checkpoint import save_checkpoint
    from gpt2cli.config import load_run_config
    from gpt2cli.convert import to_hf
    from gpt2cli.model import GPT

    torch.manual_seed(seed)
    ours = GPT(load_run_config(preset).model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(ours, Path(tmp) / "ckpt.safetensors")
        hf = GPT2LMHeadModel.from_pretrained(to_hf(ckpt, Path(tmp) / "hf")).eval()
    # No EOS: transformers then always makes max_new_tokens (no early stop, no extra processor).
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return ours, hf


WARMUP_TOKENS = 8


def runners(ours, hf, new_tokens: int) -> dict:
    """name -> function(seed) that decodes once and returns the number of new tokens."""
    import copy

    import torch

    from gpt2cli.generation import SamplingConfig, complete, prepare_for_decoding

    def ours_run(model):
        def run(seed: int, n: int = new_tokens) -> int:
            cfg = SamplingConfig(max_new_tokens=n, top_k=TOP_K, seed=seed)
            return len(complete(model, [[EOT_ID]], cfg)[0].tokens)

        return run

    def hf_run(model):
        prompt = torch.tensor([[EOT_ID]])
        mask = torch.ones_like(prompt)

        def run(seed: int, n: int = new_tokens) -> int:
            torch.manual_seed(seed)
            with torch.inference_mode():
                out = model.generate(
                    prompt,
                    attention_mask=mask,
                    do_sample=True,
                    top_k=TOP_K,
                    top_p=1.0,
                    temperature=1.0,
                    max_new_tokens=n,
                    use_cache=True,
                )
            return out.shape[1] - prompt.shape[1]

        return run

    # As `gpt2 generate` does after loading (a no-op for bf16); not timed, like from_pretrained.
    ours_bf16 = prepare_for_decoding(copy.deepcopy(ours).to(torch.bfloat16))
    return {
        "gpt2cli fp32": ours_run(prepare_for_decoding(ours)),
        "transformers fp32": hf_run(hf),
        "gpt2cli bf16": ours_run(ours_bf16),
        "transformers bf16": hf_run(copy.deepcopy(hf).to(torch.bfloat16)),
    }


def measure(preset: str, new_tokens: int, repeats: int, progress) -> dict:
    ours, hf = build_pair(preset, seed=0)
    runs = runners(ours, hf, new_tokens)
    for run in runs.values():  # warm-up: lazy init, allocator, first-call dispatch (a few tokens do it)
        run(0, WARMUP_TOKENS)
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    counts: dict[str, list[int]] = {name: [] for name in runs}
    for r in range(repeats):
        for name, run in runs.items():  # interleaved, so load changes hit every side alike
            t0, c0 = time.perf_counter(), time.process_time()
            n = run(1000 + r)
            wall[name].append(n / (time.perf_counter() - t0))
            cpu[name].append(n / (time.process_time() - c0))
            counts[name].append(n)
            progress(f"{preset} repeat {r + 1}/{repeats} {name}: {wall[name][-1]:.1f} tokens/s")
    rows = {}
    for name in runs:
        peer = "transformers " + name.split()[1]
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        rows[name] = {
            "tokens_per_sec": w,
            "tokens_per_cpu_sec": c,
            "vs_transformers_same_dtype": w / statistics.median(wall[peer]),
            "vs_transformers_same_dtype_cpu": c / statistics.median(cpu[peer]),
            "runs_tokens_per_sec": wall[name],
            "runs_tokens_per_cpu_sec": cpu[name],
            "runs_new_tokens": counts[name],
        }
    best = {
        side: max(rows[f"{side} fp32"]["tokens_per_sec"], rows[f"{side} bf16"]["tokens_per_sec"])
        for side in ("gpt2cli", "transformers")
    }
    return {"preset": preset, "implementations": rows, "best_vs_best": best["gpt2cli"] / best["transformers"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 new tokens, 2 repeats")
    parser.add_argument("--presets", default="tiny,small", help="comma-separated presets (default tiny,small)")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens per run (default 256)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per implementation (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch
    import transformers
    from rich.console import Console
    from rich.table import Table

    from gpt2cli.atomic import write_text_atomic

    if args.threads:
        torch.set_num_threads(args.threads)
    new_tokens = args.new_tokens or (64 if args.quick else 256)
    repeats = args.repeats or (2 if args.quick else 5)
    err = Console(stderr=True, highlight=False)
    load_before = os.getloadavg()
    results = [
        measure(p, new_tokens, repeats, lambda msg: err.print(f"[dim]{msg}[/dim]"))
        for p in args.presets.split(",")
    ]
    record = {
        "benchmark": "generate",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": {
            "batch": 1,
            "prompt": "<|endoftext|> (1 token)",
            "new_tokens": new_tokens,
            "top_k": TOP_K,
            "temperature": 1.0,
            "repeats": repeats,
            "quick": args.quick,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")

    table = Table(
        title=f"decoding at batch 1, top-k {TOP_K}, {new_tokens} new tokens (median of {repeats})",
        caption="CPU time: process time (all threads); less sensitive than wall time to a busy machine.",
    )
    for col in ("preset", "implementation", "tokens/s", "vs transformers", "tokens/CPU-s", "vs transformers (CPU)"):
        table.add_column(col, justify="right")
    for r in results:
        for name, row in r["implementations"].items():
            mine = name.startswith("gpt2cli")
            table.add_row(
                r["preset"],
                name,
                f"{row['tokens_per_sec']:.1f}",
                f"{row['vs_transformers_same_dtype']:.2f}x" if mine else "",
                f"{row['tokens_per_cpu_sec']:.1f}",
                f"{row['vs_transformers_same_dtype_cpu']:.2f}x" if mine else "",
            )
        table.add_row(r["preset"], "best / best", "", f"{r['best_vs_best']:.2f}x", "", "", end_section=True)
    Console(highlight=False, width=120).print(table)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
