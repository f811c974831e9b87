"""Training and decoding on one CUDA GPU, beside transformers and nanoGPT (issue 17).

    python benchmarks/gpu.py --nanogpt .peers/nanogpt/model.py --data data/stories
    python benchmarks/gpu.py --dry            # the same steps on the CPU, tiny shapes (checks the script)

Without a CUDA GPU (and without --dry) it prints one line saying it skipped and exits 0.

Sections (each a table row set, all in benchmarks/results/gpu.json with the
GPU's name, torch, CUDA and transformers versions):

- train: the small preset's shape (12 x 768, vocabulary 50257) at B16 x
  T1024, bf16 autocast, fused AdamW, clip 1.0, random tokens, compiled and
  eager: gpt2cli's `train_step` with `model.loss` (what `gpt2 train --loss
  chunked` runs per step), the bare step (loss, backward, clip, AdamW) with
  the chunked loss and with the full-logits loss (`model.full_loss`, what
  `--loss full` runs), transformers'
  GPT2LMHeadModel (sdpa), and nanoGPT's model.py read from --nanogpt
  (skipped when absent; never copied into this project). Implementations
  run interleaved, --rounds rounds of --steps steps each after a warm-up
  (where compiling happens); medians, MFU against --peak-tflops (default:
  the dense bf16 peak of a known GPU).
- cli_train: `gpt2 train --preset small --compile` as a fresh process on
  --data (a tokenized dir; skipped without it), twice: with the default
  `--loss auto` (on a GPU whose memory holds the full logits: the full
  loss, fused by the compiler) and with `--loss chunked`. Each row: the
  median logged tokens/s after the first interval, and which loss the run
  says it used (its config.json), beside the bare step above.
- decode: the small preset with random weights in bf16, top-k 40 from
  <|endoftext|>, --new-tokens new tokens, batch 1 and 8: gpt2cli's
  `generate` (graph, and plain at batch 1) beside transformers' `generate`
  in the same process, interleaved, after a warm-up; and `gpt2 generate
  --json` in a fresh process (its timing object: time to first token,
  tokens/s after it). Random weights rarely draw <|endoftext|>; rates count
  the tokens actually made.
- memory: peak GPU memory (torch.cuda.max_memory_allocated) of the CLI's
  step for small (B16), medium and large (B8) at T1024, each in a fresh
  process; a preset that runs out of memory is retried with activation
  checkpointing, and the row says which ran.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/tokenize.py shares its name with the standard library's `tokenize`, which
# torch imports: keep this folder off the import path before importing torch.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

RESULTS = _HERE / "results" / "gpu.json"
EOT_ID = 50256
TOP_K = 40
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), for MFU; matched on the device name.
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0,
         "RTX 4090": 165.0, "RTX 3090": 71.0}  # fmt: skip


def shapes(dry: bool) -> dict:
    """Sizes per section; --dry shrinks everything so the CPU finishes in seconds."""
    if dry:
        return dict(train=dict(n_layer=2, n_head=2, n_embd=64), B=2, T=64, preset="tiny", new=16,
                    batches=(1, 3), memory=[("tiny", 2, 64)], cli_steps=4)  # fmt: skip
    return dict(train=dict(n_layer=12, n_head=12, n_embd=768), B=16, T=1024, preset="small", new=512,
                batches=(1, 8), memory=[("small", 16, 1024), ("medium", 8, 1024), ("large", 8, 1024)],
                cli_steps=60)  # fmt: skip


def sync(dev) -> None:
    if dev.type == "cuda":
        import torch

        torch.cuda.synchronize()


def machine(dev) -> dict:
    import torch
    import transformers

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "device": dev.type, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    multiprocessors=p.multi_processor_count)  # fmt: skip
    return info


def amp_dtype(dev):
    """bf16 autocast on the GPU; fp32 in a dry run (some CPUs run bf16 matmuls at ~1 GFLOP/s)."""
    import torch

    return torch.bfloat16 if dev.type == "cuda" else None


def default_peak(info: dict) -> float:
    name = info.get("gpu", "")
    return next((v for k, v in PEAKS.items() if k in name), 0.0)


# -- train ---------------------------------------------------------------------------------
def train_impls(args, dev, sh) -> dict:
    """name -> a function running one optimisation step, and the model's FLOPs per token."""
    import torch

    from gpt2cli.config import ModelConfig, TrainConfig
    from gpt2cli.model import GPT
    from gpt2cli.train.flops import flops_per_token
    from gpt2cli.train.optim import build_optimizer
    from gpt2cli.train.step import train_step

    B, T, shape = sh["B"], sh["T"], sh["train"]
    amp = amp_dtype(dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50257, (B, T), generator=g).to(dev)
    y = torch.randint(0, 50257, (B, T), generator=g).to(dev)
    compile_ = dev.type == "cuda" or args.dry_compile
    # --lean keeps only the rows issue 17's bar compares (compiled where compiling runs, no
    # transformers): each compile costs about a minute on a GPU, and a lent GPU has 15 minutes.
    variants = [compile_] if args.lean else ([True, False] if compile_ else [False])
    impls: dict = {}

    def bare(model, opt, loss_fn):
        def step():
            with torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                loss = loss_fn(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    torch.manual_seed(0)
    cfg = ModelConfig(**shape, block_size=T, vocab_size=50257, dropout=0.0)
    with dev:  # initialised where it runs: seconds less for the big presets
        ours = GPT(cfg)
    opt = build_optimizer(ours, TrainConfig(), dev)
    params = [p for p in ours.parameters() if p.requires_grad]
    per_token = flops_per_token(cfg, ours.num_params(non_embedding=True), T)

    for compiled in variants:
        tag = " (compiled)" if compiled else " (eager)"
        chunked = torch.compile(ours.loss) if compiled else ours.loss
        full = torch.compile(ours.full_loss) if compiled else ours.full_loss

        def cli(loss_fn=chunked):
            train_step(loss_fn, opt, [(x, y)], 1, params=params, device=dev, amp_dtype=amp, max_norm=1.0)

        impls["gpt2cli CLI step" + tag] = cli
        impls["gpt2cli bare step, chunked loss" + tag] = bare(ours, opt, chunked)
        impls["gpt2cli bare step, full loss" + tag] = bare(ours, opt, full)

    if not args.lean:
        train_impls_transformers(dev, sh, impls, bare, compile_)
    train_impls_nanogpt(args, dev, sh, impls, bare, variants)
    return impls, per_token


def train_impls_transformers(dev, sh, impls: dict, bare, compile_: bool) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    T, shape = sh["T"], sh["train"]
    hcfg = GPT2Config(n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"], n_positions=T,
                      vocab_size=50257, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      attn_implementation="sdpa")  # fmt: skip
    with dev:
        hf = GPT2LMHeadModel(hcfg)
    hopt = torch.optim.AdamW(hf.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=dev.type == "cuda")

    def hf_loss(model):
        return lambda a, b: model(input_ids=a, labels=a).loss

    for compiled in ([True, False] if compile_ else [False]):
        m = torch.compile(hf) if compiled else hf
        impls["transformers GPT2LMHeadModel" + (" (compiled)" if compiled else " (eager)")] = bare(hf, hopt, hf_loss(m))


def train_impls_nanogpt(args, dev, sh, impls: dict, bare, variants: list[bool]) -> None:
    import torch

    T, shape = sh["T"], sh["train"]
    path = Path(args.nanogpt) if args.nanogpt else None
    if path is not None and path.is_file():
        spec = importlib.util.spec_from_file_location("nanogpt_model", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        ncfg = mod.GPTConfig(block_size=T, vocab_size=50304, dropout=0.0, bias=True, **shape)
        with dev:
            nano = mod.GPT(ncfg)
        nopt = nano.configure_optimizers(0.1, 6e-4, (0.9, 0.95), dev.type)
        for compiled in variants:
            m = torch.compile(nano) if compiled else nano
            impls["nanoGPT model.py" + (" (compiled)" if compiled else " (eager)")] = bare(
                nano, nopt, lambda a, b, m=m: m(a, b)[1]
            )
    else:
        print(f"nanoGPT: skipped (no model.py at {args.nanogpt!r}; pass --nanogpt PATH)", file=sys.stderr)


def bench_train(args, dev, sh, peak: float) -> list[dict]:
    import torch

    from gpt2cli.train.flops import mfu

    impls, per_token = train_impls(args, dev, sh)
    tokens = sh["B"] * sh["T"]
    warm = {}
    for name, step in impls.items():  # compile and autotune here, not in the timed rounds
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        sync(dev)
        warm[name] = time.perf_counter() - t0
        print(f"train warm-up {name}: {warm[name]:.1f} s", file=sys.stderr)
    rates: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(args.rounds):
        for name, step in impls.items():  # interleaved: a slow moment hits every side alike
            sync(dev)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(dev)
            rates[name].append(tokens * args.steps / (time.perf_counter() - t0))
    if args.profile_out:
        profile(args, dev, impls)
    rows = []
    for name, r in rates.items():
        tps = statistics.median(r)
        share = mfu(tps, per_token, peak)
        rows.append({"implementation": name, "tokens_per_s": round(tps), "runs_tokens_per_s": [round(v) for v in r],
                     "step_ms": round(1000 * tokens / tps, 2), "warmup_s": round(warm[name], 1),
                     "mfu": round(share, 4) if share is not None else None})  # fmt: skip
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def profile(args, dev, impls: dict) -> None:
    """torch.profiler over a few steps of our step and the fastest peer's: the kernels that take the time."""
    from torch.profiler import ProfilerActivity, profile

    tag = " (compiled)" if dev.type == "cuda" or args.dry_compile else " (eager)"
    names = [n + tag for n in ("gpt2cli CLI step", "gpt2cli bare step, chunked loss", "nanoGPT model.py")]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sort = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    try:  # a profiler hiccup must not cost the timings already taken
        with open(args.profile_out, "w", encoding="utf-8") as fh:
            for name in (n for n in names if n in impls):
                with profile(activities=activities) as prof:
                    for _ in range(3):
                        impls[name]()
                    sync(dev)
                fh.write(f"== {name}: 3 steps\n")
                fh.write(prof.key_averages().table(sort_by=sort, row_limit=25) + "\n")
        print(f"wrote the profiles to {args.profile_out}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001
        print(f"profile: failed ({type(err).__name__}: {err})", file=sys.stderr)


# -- cli train -----------------------------------------------------------------------------
def bench_cli_train(args, dev, sh, peak: float) -> list[dict] | None:
    """`gpt2 train` with the default loss (auto) and with --loss chunked, each in a fresh process."""
    if not args.data:
        print("cli_train: skipped (no --data DIR)", file=sys.stderr)
        return None
    rows = []
    for loss in ("auto", "chunked"):
        rows.append(cli_train_run(args, dev, sh, peak, loss))
        print(f"cli_train {rows[-1]}", file=sys.stderr)
    return rows


def cli_train_run(args, dev, sh, peak: float, loss: str) -> dict:
    preset = "small" if not args.dry else "tiny"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "gpt2cli", "train", "--preset", preset, "--data", args.data, "--out", str(out),
               "--device", dev.type, "--batch-size", str(sh["B"]), "--block-size", str(sh["T"]), "--grad-accum", "1",
               "--steps", str(sh["cli_steps"]), "--eval-every", "100000", "--save-every", "100000",
               "--set", f"train.log_every={max(1, sh['cli_steps'] // 6)}"]  # fmt: skip
        if peak:
            cmd += ["--peak-tflops", str(peak)]
        if dev.type == "cuda" or args.dry_compile:
            cmd.append("--compile")
        if loss != "auto":
            cmd += ["--loss", loss]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return {"command": " ".join(cmd[1:]), "loss": loss, "error": f"exit {proc.returncode}"}
        logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "tokens_per_sec" in line]
        ran = json.loads((out / "config.json").read_text()).get("loss", {})
    rates = [r["tokens_per_sec"] for r in logged][1:] or [r["tokens_per_sec"] for r in logged]
    return {"command": "gpt2 " + " ".join(cmd[3:]), "loss": loss, "loss_ran": ran.get("kind"),
            "loss_reason": ran.get("reason"), "tokens_per_s": round(statistics.median(rates)),
            "mfu": logged[-1].get("mfu"), "wall_s": round(wall, 1), "intervals": len(logged)}  # fmt: skip


# -- decode --------------------------------------------------------------------------------
def bench_decode(args, dev, sh) -> tuple[list[dict], list[dict]]:
    import torch
    from generate import build_pair  # benchmarks/generate.py: our random model, transformers' copy

    from gpt2cli.checkpoint import save_checkpoint
    from gpt2cli.cli.generate import Timing
    from gpt2cli.generation import SamplingConfig, generate

    ours, hf = build_pair(sh["preset"], seed=0)
    fast = "graph" if dev.type == "cuda" else "static"
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(ours, Path(tmp) / "ckpt.safetensors")
        ours = ours.to(dev).to(torch.bfloat16)
        hf = hf.to(dev).to(torch.bfloat16)

        def ours_run(mode, batch):
            def run(n, seed):
                timing = Timing()
                cfg = SamplingConfig(max_new_tokens=n, top_k=TOP_K, seed=seed)
                for step in generate(ours, [[EOT_ID]] * batch, cfg, decode=mode):
                    timing.step(sum(1 for t in step.tokens if t >= 0))
                timing.finish()
                return timing.record()

            return run

        def hf_run(batch):
            prompt = torch.full((batch, 1), EOT_ID, device=dev)

            def run(n, seed):
                torch.manual_seed(seed)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=TOP_K,
                                      top_p=1.0, temperature=1.0, max_new_tokens=n, use_cache=True)  # fmt: skip
                sync(dev)
                total = time.perf_counter() - t0
                made = (out.shape[1] - 1) * batch
                return {"new_tokens": made, "total_s": total, "tokens_per_s": made / total}

            return run

        runs = {}
        for batch in sh["batches"]:
            runs[f"gpt2cli {fast}, batch {batch}"] = ours_run(fast, batch)
            if batch == 1:
                runs["gpt2cli plain, batch 1"] = ours_run("plain", 1)
            runs[f"transformers generate, batch {batch}"] = hf_run(batch)
        for run in runs.values():
            run(8, 0)  # warm-up: lazy init, kernels' first launch
        got: dict[str, list[dict]] = {name: [] for name in runs}
        for r in range(args.rounds):
            for name, run in runs.items():
                got[name].append(run(sh["new"], 100 + r))
                print(f"decode {name}: {got[name][-1]['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
        rows = []
        for name, results in got.items():
            row = {"implementation": name, "tokens_per_s": round(statistics.median(x["tokens_per_s"] for x in results), 1),
                   "runs_tokens_per_s": [round(x["tokens_per_s"], 1) for x in results]}  # fmt: skip
            after = [x["tokens_per_s_after_first"] for x in results if x.get("tokens_per_s_after_first")]
            if after:
                row["tokens_per_s_after_first"] = round(statistics.median(after), 1)
                row["time_to_first_token_s"] = round(statistics.median(x["time_to_first_token_s"] for x in results), 4)
            rows.append(row)
        cli_rows = [bench_cli_generate(args, dev, sh, ckpt, batch) for batch in sh["batches"]]
    return rows, cli_rows


def bench_cli_generate(args, dev, sh, ckpt: Path, batch: int) -> dict:
    """`gpt2 generate --json` in fresh processes: the timing object of each (median of --cli-repeats)."""
    cmd = [sys.executable, "-m", "gpt2cli", "generate", "", "--ckpt", str(ckpt), "--max-new-tokens", str(sh["new"]),
           "--top-k", str(TOP_K), "--seed", "1", "--num-samples", str(batch), "--device", dev.type, "--json"]  # fmt: skip
    if dev.type != "cuda":
        cmd += ["--dtype", "bf16", "--decode", "static"]
    timings = []
    for _ in range(args.cli_repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return {"batch": batch, "error": f"exit {proc.returncode}"}
        timing = json.loads(proc.stdout)["timing"]
        timing["process_wall_s"] = round(wall, 2)
        timings.append(timing)
    keys = ("tokens_per_s_after_first", "time_to_first_token_s", "tokens_per_s", "process_wall_s")
    row = {"batch": batch, "command": "gpt2 " + " ".join(cmd[3:]).replace(str(ckpt), "CKPT"), "runs": timings}
    for k in keys:
        vals = [t[k] for t in timings if t.get(k) is not None]
        row[k] = round(statistics.median(vals), 4) if vals else None
    return row


# -- memory --------------------------------------------------------------------------------
def memory_child(args) -> None:
    """One preset's CLI step, a few times; prints one JSON line with the peak memory (or the OOM)."""
    import torch

    from gpt2cli.config import TrainConfig, load_run_config
    from gpt2cli.model import GPT
    from gpt2cli.train.optim import build_optimizer
    from gpt2cli.train.step import train_step

    dev = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    preset, B, T = args.memory_child, args.batch, args.block
    cfg = load_run_config(preset).model.model_copy(update={"block_size": max(T, 1), "dropout": 0.0})
    row = {"preset": preset, "B": B, "T": T, "activation_checkpointing": args.checkpointing}
    try:
        with dev:
            model = GPT(cfg)
        model.activation_checkpointing = args.checkpointing
        opt = build_optimizer(model, TrainConfig(), dev)
        params = [p for p in model.parameters() if p.requires_grad]
        x = torch.randint(0, cfg.vocab_size, (B, T), device=dev)
        t0 = time.perf_counter()
        for _ in range(3):
            train_step(model.loss, opt, [(x, x)], 1, params=params, device=dev, amp_dtype=amp_dtype(dev), max_norm=1.0)
        sync(dev)
        row["step_s"] = round((time.perf_counter() - t0) / 3, 3)
        row["params_m"] = round(model.num_params() / 1e6, 1)
        if dev.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            row["reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    except torch.cuda.OutOfMemoryError:
        row["oom"] = True
    print(json.dumps(row))


def bench_memory(args, dev, sh) -> list[dict]:
    rows = []
    for preset, B, T in sh["memory"]:
        for checkpointing in (False, True):
            cmd = [sys.executable, __file__, "--memory-child", preset, "--batch", str(B), "--block", str(T)]
            cmd += (["--checkpointing"] if checkpointing else []) + (["--dry"] if args.dry else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"preset": preset, "error": proc.stderr[-500:]}
            rows.append(row)
            print(f"memory {row}", file=sys.stderr)
            if not row.get("oom"):
                break  # fits without checkpointing: no need for it
    return rows


# -- report --------------------------------------------------------------------------------
def print_tables(record: dict, sections: tuple[str, ...] = ("decode", "memory", "train", "cli_train")) -> None:
    """The tables of `sections` (all by default, then the headline ratios too)."""
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False, width=140)
    m = record["machine"]
    con.print(f"{m.get('gpu', m['device'])}, torch {m['torch']}, CUDA {m['cuda']}, transformers {m['transformers']}")
    cli_rows = (record.get("cli_train") or []) if "cli_train" in sections else []
    if ("train" in sections and record.get("train")) or cli_rows:
        t = Table(title=f"training, {record['settings']['train_shape']} (median of {record['settings']['rounds']})")
        for col in ("implementation", "tokens/s", "step ms", "MFU", "warm-up s"):
            t.add_column(col, justify="right")
        for r in record.get("train") or [] if "train" in sections else []:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else ""
            t.add_row(r["implementation"], f"{r['tokens_per_s']:,}", f"{r['step_ms']}", mfu, f"{r['warmup_s']}")
        for c in cli_rows:
            if "tokens_per_s" in c:
                mfu = f"{100 * c['mfu']:.1f}%" if c.get("mfu") else ""
                t.add_row(cli_train_name(c), f"{c['tokens_per_s']:,}", "", mfu, "")
        con.print(t)
    if "decode" in sections and record.get("decode"):
        t = Table(title=f"decoding, top-k {TOP_K}, {record['settings']['new_tokens']} new tokens")
        for col in ("implementation", "tokens/s", "after first", "first token s"):
            t.add_column(col, justify="right")
        for r in record["decode"]:
            t.add_row(r["implementation"], f"{r['tokens_per_s']:,}", str(r.get("tokens_per_s_after_first", "")),
                      str(r.get("time_to_first_token_s", "")))  # fmt: skip
        for r in record.get("cli_generate", []):
            t.add_row(f"gpt2 generate, fresh process, batch {r['batch']}", str(r.get("tokens_per_s", r.get("error"))),
                      str(r.get("tokens_per_s_after_first", "")), str(r.get("time_to_first_token_s", "")))  # fmt: skip
        con.print(t)
    if "memory" in sections and record.get("memory"):
        t = Table(title="peak GPU memory of the CLI's training step (bf16 autocast, fused AdamW)")
        for col in ("preset", "B x T", "activation checkpointing", "peak GiB", "step s"):
            t.add_column(col, justify="right")
        for r in record["memory"]:
            peak = "OOM" if r.get("oom") else str(r.get("peak_gib", r.get("error", "")))
            t.add_row(r["preset"], f"{r.get('B')} x {r.get('T')}", str(r.get("activation_checkpointing")), peak,
                      str(r.get("step_s", "")))  # fmt: skip
        con.print(t)
    if len(sections) > 1:
        for line in record.get("headline_lines", []):
            con.print(line)


def headlines(record: dict) -> list[str]:
    """The issue's figures, as ratios: decode vs transformers, train vs nanoGPT, CLI vs bare step."""
    out = []
    dec = {r["implementation"]: r for r in record.get("decode", [])}
    for cli in record.get("cli_generate", []):
        peer = dec.get(f"transformers generate, batch {cli['batch']}")
        if peer and cli.get("tokens_per_s_after_first"):
            out.append(f"gpt2 generate batch {cli['batch']}: {cli['tokens_per_s_after_first']:.0f} tokens/s after the "
                       f"first token ({cli['tokens_per_s_after_first'] / peer['tokens_per_s']:.2f}x transformers)")  # fmt: skip
    tr = {r["implementation"]: r["tokens_per_s"] for r in record.get("train", [])}
    nano = tr.get("nanoGPT model.py (compiled)")
    best_ours = tr.get("gpt2cli CLI step (compiled)")
    if nano and best_ours:
        out.append(f"train: gpt2cli CLI step {best_ours / nano:.2f}x nanoGPT compiled")
    bare = {"chunked": tr.get("gpt2cli bare step, chunked loss (compiled)"),
            "full": tr.get("gpt2cli bare step, full loss (compiled)")}  # fmt: skip
    for c in record.get("cli_train") or []:
        same = bare.get(c.get("loss_ran"))
        if c.get("tokens_per_s") and same:
            out.append(f"train: {cli_train_name(c)} {c['tokens_per_s'] / same:.2f}x the bare step "
                       f"({c['loss_ran']} loss)")  # fmt: skip
        if c.get("tokens_per_s") and nano:
            out.append(f"train: {cli_train_name(c)} {c['tokens_per_s'] / nano:.2f}x nanoGPT compiled")
    return out


def cli_train_name(c: dict) -> str:
    """A cli_train row's label: the flags that differ, and the loss the run used."""
    flags = (" --compile" if "--compile" in c["command"] else "") + (" --loss " + c["loss"] if c["loss"] != "auto" else "")
    ran = f", {c['loss_ran']} loss ran" if c.get("loss_ran") else ""
    return f"gpt2 train{flags} (fresh process{ran})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nanogpt", default=None, help="path to nanoGPT's model.py (a peer; skipped when absent)")
    p.add_argument("--data", default=None, help="tokenized data dir for the `gpt2 train` row (skipped without)")
    p.add_argument("--sections", default="decode,memory,train,cli_train",
                   help="comma-separated, run in this order: decode, memory, train, cli_train")  # fmt: skip
    p.add_argument("--profile-out", default=None, help="with train: torch.profiler tables of our step and nanoGPT's")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds per implementation")
    p.add_argument("--steps", type=int, default=10, help="training steps per timed round")
    p.add_argument("--warmup", type=int, default=4, help="untimed training steps first (compiling happens here)")
    p.add_argument("--cli-repeats", type=int, default=2, help="fresh `gpt2 generate` processes per batch size")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: known GPUs)")
    p.add_argument("--child-timeout", type=float, default=400.0, help="seconds a child process may take")
    p.add_argument("--lean", action="store_true",
                   help="train: only the compiled rows issue 17 compares (ours and nanoGPT's), no transformers")
    p.add_argument("--quick", action="store_true", help="2 rounds of 5 steps, 1 fresh process per batch size")
    p.add_argument("--dry", action="store_true", help="run everything on the CPU with tiny shapes")
    p.add_argument("--dry-compile", action="store_true", help="with --dry: also the torch.compile rows (slow)")
    p.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS}; --dry: none)")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--block", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    import torch

    if args.memory_child:
        memory_child(args)
        return 0
    if not args.dry and not torch.cuda.is_available():
        print(f"benchmarks/gpu.py: skipped, no CUDA GPU here (torch {torch.__version__}); --dry runs it on the CPU")
        return 0
    if args.quick:
        args.rounds, args.steps, args.cli_repeats = 2, 5, 1
    if args.dry:
        args.rounds, args.steps, args.warmup, args.cli_repeats = min(args.rounds, 2), 2, 1, 1
    dev = torch.device("cpu" if args.dry else "cuda")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    sh = shapes(args.dry)
    info = machine(dev)
    peak = args.peak_tflops if args.peak_tflops is not None else default_peak(info)
    sections = args.sections.split(",")
    unknown = set(sections) - {"decode", "memory", "train", "cli_train"}
    if unknown:
        p.error(f"--sections: unknown {', '.join(sorted(unknown))}")
    record: dict = {"benchmark": "gpu", "machine": info,
                    "settings": {"train_shape": f"{sh['train']} B{sh['B']} x T{sh['T']} {'fp32' if args.dry else 'bf16'}", "rounds": args.rounds,
                                 "steps_per_round": args.steps, "new_tokens": sh["new"], "top_k": TOP_K,
                                 "peak_tflops": peak, "dry": args.dry}}  # fmt: skip
    started = time.perf_counter()
    out = args.out if args.out is not None else (None if args.dry else RESULTS)
    for section in sections:  # the file is rewritten after each, so a later failure keeps the earlier figures
        if section == "decode":
            record["decode"], record["cli_generate"] = bench_decode(args, dev, sh)
        elif section == "train":
            record["train"] = bench_train(args, dev, sh, peak)
        elif section == "cli_train":
            record["cli_train"] = bench_cli_train(args, dev, sh, peak)
        elif section == "memory":
            record["memory"] = bench_memory(args, dev, sh)
        record["seconds"] = round(time.perf_counter() - started, 1)
        record["headline_lines"] = headlines(record)
        record["headline"] = "; ".join(record["headline_lines"]) or None
        if out is not None:
            from gpt2cli.atomic import write_text_atomic

            out.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out, json.dumps(record, indent=2) + "\n")
        if section == "cli_train" and "train" not in sections:
            print_tables(record, ("cli_train",))
        elif section != "cli_train":  # the CLI's training row joins the training table at the end
            print_tables(record, (section,))
    print("== all sections", file=sys.stderr)
    print_tables(record)
    if out is not None:
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
