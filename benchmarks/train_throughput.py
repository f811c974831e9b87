"""Training throughput: gpt2cli's training step beside transformers' GPT2LMHeadModel.

    python benchmarks/train_throughput.py            # tiny and small, fp32 and bf16, 3 repeats
    python benchmarks/train_throughput.py --quick    # 2 repeats of tiny, 1 of small
    python benchmarks/train_throughput.py --compile  # also gpt2cli with torch.compile

The work: one optimisation step on a fixed random batch (tiny: 8 x 256 tokens,
the issue's setting; small: 2 x 256, so that `make bench` stays within its
budget on a CPU): forward, cross-entropy, backward, global-norm clipping at
1.0, AdamW (lr 1e-4, betas 0.9/0.95, weight decay 0.1), zero grads.

- gpt2cli: `gpt2cli.train.step.train_step` on `model.loss` with the
  optimizer `gpt2 train` builds (fused AdamW), under the autocast dtype
  (fp32 = none, bf16 = torch.autocast bf16). "auto" is what `--dtype auto`
  picks on this machine.
- transformers: GPT2LMHeadModel of the same shape (dropout 0, its default
  SDPA attention), `model(input_ids=x, labels=x).loss` (it shifts the labels
  inside), the same autocast, `clip_grad_norm_`, torch.optim.AdamW
  fused (what transformers' Trainer picks by default with torch >= 2.8;
  `--hf-optimizer foreach` gives torch's own default instead),
  zero_grad(set_to_none=True).

Every (implementation, preset, dtype) runs in a fresh subprocess, so each
peak RSS (getrusage ru_maxrss) is that configuration's alone; the process
imports only what its side needs. Repeats are interleaved (every
configuration once, then again), so load changes on a shared machine hit all
sides alike; each run times `steps` steps after `warmup` and keeps the
median; we report the median over repeats, tokens/s by wall clock and by
process CPU time (all threads; steadier when other work shares the CPU).

MFU = tokens/s x training FLOPs per token (gpt2cli.train.flops: 6N plus
attention) / the matmul peak measured here (benchmarks/matmul_peak.py, same
thread count, before and after the runs, best kept); we give it against the
bf16 peak (the issue's yardstick) and against the peak of the run's own dtype.

Writes benchmarks/results/train.json (machine: CPU, cores, threads, torch,
date) and prints a table. The issue's targets (#10): tiny, gpt2cli auto >=
2.0x transformers' best dtype, MFU >= 50% of the bf16 peak; small >= 1.5x;
tiny peak RSS <= 60% of transformers' in the same dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Sibling modules (machine.py, matmul_peak.py) stay importable, but this folder
# goes last on the path: benchmarks/tokenize.py would otherwise shadow the
# standard library's `tokenize`, which torch imports.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

RESULTS = _HERE / "results" / "train.json"
IMPLS = ("gpt2cli", "transformers")
DTYPES = ("fp32", "bf16")
# (batch, block) per preset: tiny as in the issue; small cut to fit the bench budget.
SHAPES = {"tiny": (8, 256), "small": (2, 256)}
# repeats, warm-up steps, timed steps per run
PLAN = {
    "full": {"tiny": (3, 2, 5), "small": (3, 1, 3)},
    "quick": {"tiny": (2, 1, 3), "small": (1, 1, 2)},
}
TARGETS = {"tiny": 2.0, "small": 1.5}
MFU_TARGET, RSS_TARGET = 0.5, 0.6
SLOW_BF16 = 0.25  # bf16 runs are skipped when its matmul peak is below this share of fp32's
LR, BETAS, WEIGHT_DECAY, CLIP = 1e-4, (0.9, 0.95), 0.1, 1.0


# -- one configuration, inside a fresh subprocess ------------------------------------------------


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def build_gpt2cli(preset: str, amp_dtype, compile_loss: bool):
    """Our model and a step function doing what `gpt2 train` does per step."""
    import torch

    from gpt2cli.config import load_run_config
    from gpt2cli.model import GPT
    from gpt2cli.train.optim import build_optimizer
    from gpt2cli.train.step import train_step

    run = load_run_config(preset)
    cfg = run.model
    train_cfg = run.train.model_copy(
        update={"lr": LR, "beta1": BETAS[0], "beta2": BETAS[1], "weight_decay": WEIGHT_DECAY}
    )
    device = torch.device("cpu")
    model = GPT(cfg).to(device).train()
    optimizer = build_optimizer(model, train_cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = torch.compile(model.loss) if compile_loss else model.loss

    def step(x, y):
        return train_step(
            loss_fn, optimizer, [(x, y)], 1, params=params, device=device, amp_dtype=amp_dtype, max_norm=CLIP
        ).loss

    return cfg, step


def build_transformers(preset: str, amp_dtype, optimizer_kind: str):
    """GPT2LMHeadModel of the same shape, trained the way its users do."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    from gpt2cli.config import load_run_config

    logging.set_verbosity_error()
    cfg = load_run_config(preset).model
    hf_cfg = GPT2Config(
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        n_positions=cfg.block_size,
        vocab_size=cfg.vocab_size,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(hf_cfg).train()
    fused = optimizer_kind == "fused"
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, fused=fused, foreach=not fused
    )

    def step(x, y):
        with torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return cfg, step


def measure(
    impl: str, preset: str, dtype: str, warmup: int, steps: int, threads: int, compile_loss: bool, hf_optimizer: str
) -> dict:
    import torch

    torch.set_num_threads(threads)
    if impl == "transformers":
        import transformers  # noqa: F401  (its import is part of its process's footprint)
    import gpt2cli.model  # noqa: F401

    rss_imports = rss_bytes()
    amp_dtype = torch.bfloat16 if dtype == "bf16" else None
    torch.manual_seed(0)
    if impl == "gpt2cli":
        cfg, step = build_gpt2cli(preset, amp_dtype, compile_loss)
    else:
        cfg, step = build_transformers(preset, amp_dtype, hf_optimizer)
    B, T = SHAPES[preset]
    tokens = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(1))
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    rss_setup = rss_bytes()

    first = []
    for _ in range(warmup):  # lazy init, allocator warm-up, (with --compile) compilation
        t0 = time.perf_counter()
        loss = step(x, y)
        float(loss)
        first.append(time.perf_counter() - t0)
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(x, y)
        float(loss)  # the step's work is done (a no-op wait on the CPU, a sync on CUDA)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "impl": impl,
        "preset": preset,
        "dtype": dtype,
        "compile": compile_loss,
        "tokens_per_step": B * T,
        "warmup_seconds": first,
        "step_seconds": wall,
        "step_cpu_seconds": cpu,
        "loss": float(loss),
        "rss_after_imports": rss_imports,
        "rss_after_setup": rss_setup,
        "peak_rss": peak_rss_bytes(),
    }


def run_worker(args: list[str]) -> dict:
    """Run one configuration in a fresh interpreter; its last stdout line is the JSON result."""
    env = dict(os.environ, PYTHONSAFEPATH="1")  # see the note on tokenize.py at the top
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker {' '.join(args)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_worker(quick: bool, threads: int) -> dict:
    import torch
    from matmul_peak import QUICK_SIZES, SIZES, measure_peaks

    torch.set_num_threads(threads)
    return measure_peaks(QUICK_SIZES if quick else SIZES, 3 if quick else 5)


# -- the report ------------------------------------------------------------------------------------


def flops_per_token(preset: str) -> float:
    import torch

    from gpt2cli.config import load_run_config
    from gpt2cli.model import GPT
    from gpt2cli.train.flops import flops_per_token as per_token

    cfg = load_run_config(preset).model
    with torch.device("meta"):  # shapes only: no memory, no init time
        n = GPT(cfg).num_params(non_embedding=True)
    return per_token(cfg, n, SHAPES[preset][1])


def summarise(runs: list[dict], peaks: dict, auto: str) -> dict:
    mib = 2**20
    out = {}
    for preset in dict.fromkeys(r["preset"] for r in runs):
        per_token = flops_per_token(preset)
        rows = {}
        for r in runs:
            if r["preset"] != preset:
                continue
            name = f"{r['impl']}{' compiled' if r['compile'] else ''} {r['dtype']}"
            rows.setdefault(name, []).append(r)
        table = {}
        for name, rs in rows.items():
            tok = rs[0]["tokens_per_step"]
            rates = [tok / statistics.median(r["step_seconds"]) for r in rs]
            cpu_rates = [tok / statistics.median(r["step_cpu_seconds"]) for r in rs]
            rate = statistics.median(rates)
            dtype = rs[0]["dtype"]
            table[name] = {
                "tokens_per_sec": rate,
                "tokens_per_cpu_sec": statistics.median(cpu_rates),
                "mfu_vs_bf16_peak": rate * per_token / (peaks["bf16"]["gflops"] * 1e9),
                "mfu_vs_own_dtype_peak": rate * per_token / (peaks[dtype]["gflops"] * 1e9),
                # Against the fastest dtype's peak: the honest yardstick where bf16 is slow.
                "mfu_vs_best_peak": rate * per_token / (max(p["gflops"] for p in peaks.values()) * 1e9),
                "peak_rss_mib": statistics.median(r["peak_rss"] for r in rs) / mib,
                "train_rss_mib": statistics.median(r["peak_rss"] - r["rss_after_imports"] for r in rs) / mib,
                "warmup_seconds": statistics.median(r["warmup_seconds"][0] for r in rs),
                "loss": rs[-1]["loss"],
                "runs_tokens_per_sec": rates,
            }
        for name, row in table.items():
            impl, dtype = name.split()[0], name.split()[-1]
            peer = table.get(f"transformers {dtype}")
            if impl == "gpt2cli" and peer:
                row["vs_transformers_same_dtype"] = row["tokens_per_sec"] / peer["tokens_per_sec"]
                row["vs_transformers_same_dtype_cpu"] = row["tokens_per_cpu_sec"] / peer["tokens_per_cpu_sec"]
                row["peak_rss_vs_transformers"] = row["peak_rss_mib"] / peer["peak_rss_mib"]
                row["train_rss_vs_transformers"] = row["train_rss_mib"] / peer["train_rss_mib"]
        hf = [table[f"transformers {d}"] for d in DTYPES if f"transformers {d}" in table]
        ours = table.get(f"gpt2cli {auto}")
        summary = {"flops_per_token": per_token, "implementations": table}
        if hf and ours:
            best = max(hf, key=lambda r: r["tokens_per_sec"])
            best_cpu = max(r["tokens_per_cpu_sec"] for r in hf)
            summary["auto_dtype"] = auto
            summary["auto_vs_transformers_best"] = ours["tokens_per_sec"] / best["tokens_per_sec"]
            summary["auto_vs_transformers_best_cpu"] = ours["tokens_per_cpu_sec"] / best_cpu
            summary["targets"] = {
                "speedup": TARGETS[preset],
                "speedup_met": summary["auto_vs_transformers_best"] >= TARGETS[preset],
            }
            if preset == "tiny":
                summary["targets"]["mfu_vs_bf16_peak"] = MFU_TARGET
                summary["targets"]["mfu_met"] = ours["mfu_vs_bf16_peak"] >= MFU_TARGET
                summary["targets"]["peak_rss_ratio"] = RSS_TARGET
                summary["targets"]["peak_rss_met"] = all(
                    table[f"gpt2cli {d}"].get("peak_rss_vs_transformers", 1) <= RSS_TARGET
                    for d in DTYPES
                    if f"gpt2cli {d}" in table
                )
        out[preset] = summary
    return out


def headline(summary: dict) -> str:
    """One line per run_all's summary: the issue's targets, measured."""
    parts = []
    for preset, s in summary.items():
        if "auto_vs_transformers_best" not in s:
            continue
        ours = s["implementations"][f"gpt2cli {s['auto_dtype']}"]
        text = f"{preset}: {s['auto_vs_transformers_best']:.2f}x transformers' best"
        if preset == "tiny":
            rss = max(
                r["peak_rss_vs_transformers"] for r in s["implementations"].values() if "peak_rss_vs_transformers" in r
            )
            text += (
                f", MFU {100 * ours['mfu_vs_bf16_peak']:.0f}% of bf16 peak "
                f"({100 * ours['mfu_vs_best_peak']:.0f}% of the best dtype's), peak RSS <= {rss:.2f}x"
            )
        parts.append(text)
    return "train " + "; ".join(parts)


def print_table(summary: dict, peaks: dict, plan: dict) -> None:
    print(
        f"\nmatmul peak (GFLOP/s): fp32 {peaks['fp32']['gflops']:.0f}, bf16 {peaks['bf16']['gflops']:.0f}"
    )
    head = (
        f"{'preset':<7}{'implementation':<22}{'tok/s':>9}{'vs HF':>7}{'tok/CPU-s':>11}{'vs HF':>7}"
        f"{'MFU bf16':>10}{'MFU best':>10}{'peak RSS MiB':>14}{'vs HF':>7}{'train MiB':>11}{'vs HF':>7}"
    )
    print(head)
    print("-" * len(head))
    for preset, s in summary.items():
        B, T = SHAPES[preset]
        for name, r in s["implementations"].items():

            def ratio(key: str, r=r) -> str:
                return f"{r[key]:.2f}x" if key in r else ""

            print(
                f"{preset:<7}{name:<22}{r['tokens_per_sec']:>9.0f}{ratio('vs_transformers_same_dtype'):>7}"
                f"{r['tokens_per_cpu_sec']:>11.0f}{ratio('vs_transformers_same_dtype_cpu'):>7}"
                f"{100 * r['mfu_vs_bf16_peak']:>9.1f}%{100 * r['mfu_vs_best_peak']:>9.1f}%"
                f"{r['peak_rss_mib']:>14.0f}{ratio('peak_rss_vs_transformers'):>7}"
                f"{r['train_rss_mib']:>11.0f}{ratio('train_rss_vs_transformers'):>7}"
            )
        if "auto_vs_transformers_best" in s:
            t = s["targets"]
            met = "met" if t["speedup_met"] else "NOT met"
            print(
                f"{preset:<7}gpt2cli auto ({s['auto_dtype']}) vs transformers' best: "
                f"{s['auto_vs_transformers_best']:.2f}x wall, {s['auto_vs_transformers_best_cpu']:.2f}x CPU "
                f"(target {t['speedup']}x: {met}); batch {B} x {T}, {plan[preset][0]} repeats"
            )
        print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats of tiny, 1 of small, fewer steps")
    parser.add_argument("--presets", default="tiny,small", help="comma-separated (default tiny,small)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated (default fp32,bf16)")
    parser.add_argument("--repeats", type=int, default=None, help="override the repeats per configuration")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    parser.add_argument("--compile", action="store_true", help="also time gpt2cli with torch.compile")
    parser.add_argument(
        "--hf-optimizer", choices=("fused", "foreach"), default="fused",
        help="transformers' AdamW: fused (its Trainer's default) or foreach (torch's)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from machine import machine_info, physical_cores

    threads = args.threads or physical_cores()
    if args.worker:
        if args.worker[0] == "peak":
            result = peak_worker(args.worker[1] == "quick", threads)
        else:
            impl, preset, dtype, warmup, steps, compiled = args.worker
            result = measure(
                impl, preset, dtype, int(warmup), int(steps), threads, compiled == "1", args.hf_optimizer
            )
        print(json.dumps(result))
        return

    import torch

    from gpt2cli.atomic import write_text_atomic
    from gpt2cli.device import autocast_dtype

    torch.set_num_threads(threads)
    auto = "bf16" if autocast_dtype(torch.device("cpu"), "auto") == torch.bfloat16 else "fp32"
    mode = "quick" if args.quick else "full"
    presets = args.presets.split(",")
    dtypes = args.dtypes.split(",")
    plan = {p: PLAN[mode][p] for p in presets}
    if args.repeats:
        plan = {p: (args.repeats, w, s) for p, (_, w, s) in plan.items()}
    thread_arg = ["--threads", str(threads), "--hf-optimizer", args.hf_optimizer]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    log("matmul peak ...")
    peak_runs = [run_worker(["peak", mode, *thread_arg])]
    skipped = {}
    first = peak_runs[0]
    if "bf16" in dtypes and first["bf16"]["gflops"] < SLOW_BF16 * first["fp32"]["gflops"]:
        # No bf16 kernels on this CPU (AVX2 only: ~1 GFLOP/s): a bf16 step would take minutes
        # for either side, `--dtype auto` never picks it, and transformers' best is fp32.
        dtypes = [d for d in dtypes if d != "bf16"]
        skipped["bf16"] = (
            f"bf16 matmul peak {first['bf16']['gflops']:.1f} GFLOP/s is "
            f"{100 * first['bf16']['gflops'] / first['fp32']['gflops']:.0f}% of fp32's: no fast bf16 kernels here"
        )
        log(f"skipping bf16: {skipped['bf16']}")
    configs = [
        (impl, p, d, c)
        for p in presets
        for d in dtypes
        for impl in IMPLS
        for c in ((False, True) if impl == "gpt2cli" and args.compile else (False,))
    ]
    runs = []
    for r in range(max(plan[p][0] for p in presets)):
        for impl, preset, dtype, compiled in configs:
            repeats, warmup, steps = plan[preset]
            if r >= repeats:
                continue
            if compiled:
                warmup += 1  # the first step compiles
            label = f"{impl}{' compiled' if compiled else ''} {preset} {dtype}"
            log(f"repeat {r + 1}/{repeats}: {label} ...")
            res = run_worker(
                [impl, preset, dtype, str(warmup), str(steps), "1" if compiled else "0", *thread_arg]
            )
            log(f"  {res['tokens_per_step'] / statistics.median(res['step_seconds']):.0f} tokens/s, "
                f"peak RSS {res['peak_rss'] / 2**20:.0f} MiB")
            runs.append(res)
    log("matmul peak again ...")
    peak_runs.append(run_worker(["peak", mode, *thread_arg]))
    peaks = {d: max((p[d] for p in peak_runs), key=lambda x: x["gflops"]) for d in DTYPES}

    summary = summarise(runs, peaks, auto)
    record = {
        "benchmark": "train_throughput",
        "headline": headline(summary),
        "machine": {**machine_info(), "load_average_before": load_before},
        "settings": {
            "mode": mode,
            "threads": threads,
            "shapes": {p: {"batch": SHAPES[p][0], "block": SHAPES[p][1]} for p in presets},
            "repeats_warmup_steps": plan,
            "optimizer": {"lr": LR, "betas": BETAS, "weight_decay": WEIGHT_DECAY, "clip": CLIP},
            "transformers_adamw": args.hf_optimizer,
            "gpt2cli_auto_dtype": auto,
        },
        "matmul_peak": {"used": peaks, "runs": peak_runs},
        "results": summary,
        "skipped": skipped,
        "runs": runs,
        "seconds": round(time.monotonic() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
    print_table(summary, peaks, plan)
    print(f"wrote {args.out} in {record['seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
