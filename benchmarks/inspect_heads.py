"""Time `gpt2 inspect heads` on the tiny preset over 64 x 256 tokens (issue #8, target <= 30 s).

Builds a tiny-preset checkpoint (random init, seeded), a text of Python's own
stdlib sources (present on every machine) long enough for 64 sequences of 256
tokens, then runs the real command as a subprocess and times it end to end
(interpreter start, imports, checkpoint load, PNG and JSON included). The
stages' own timings come from the command's --json output.

Cost model: the attention statistics take one forward pass over all tokens;
the ablation takes 1 + 2 * n_layer * n_head = 33 passes (with the 50k-row LM
head) over --ablation-tokens tokens (the command's default unless given), so
the wall time grows with that figure, not with --tokens.

    python benchmarks/inspect_heads.py                        # 64 x 256 tokens, default ablation
    python benchmarks/inspect_heads.py --ablation-tokens 4096 --threads 1
    python benchmarks/inspect_heads.py --quick                # 16 x 256 tokens, ablation on 256

Prints the figures and writes benchmarks/results/inspect_heads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

# Sibling modules (machine.py) stay importable, but this folder goes last on the
# path: benchmarks/tokenize.py would otherwise shadow the standard library's
# `tokenize`, which torch imports.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import torch  # noqa: E402
from machine import machine_info  # noqa: E402

from gpt2cli.checkpoint import save_checkpoint  # noqa: E402
from gpt2cli.config import load_run_config  # noqa: E402
from gpt2cli.model import GPT  # noqa: E402
from gpt2cli.tokenizer import get_tokenizer  # noqa: E402

RESULTS = _HERE / "results" / "inspect_heads.json"
STDLIB_FILES = ("argparse.py", "textwrap.py", "difflib.py", "inspect.py", "typing.py")
TARGET_SECONDS = 30.0


def write_text(path: Path, n_tokens: int) -> int:
    """Concatenate stdlib sources until they hold `n_tokens` GPT-2 tokens."""
    enc = get_tokenizer()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, count = [], 0
    for name in STDLIB_FILES:
        text = (stdlib / name).read_text(encoding="utf-8")
        parts.append(text)
        count += len(enc.encode_ordinary(text))
        if count >= n_tokens:
            break
    if count < n_tokens:
        raise SystemExit(f"stdlib sources give only {count} tokens, {n_tokens} needed")
    path.write_text("\n".join(parts), encoding="utf-8")
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument(
        "--ablation-tokens", type=int, default=None, help="default: the command's own default"
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for the command (default: torch's own)",
    )
    ap.add_argument("--quick", action="store_true", help="16 sequences, ablation on 256 tokens")
    args = ap.parse_args()
    if args.quick:
        args.sequences = 16
        args.ablation_tokens = args.ablation_tokens or 256
    n_tokens = args.sequences * args.seq_len

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        cfg = load_run_config("tiny").model
        ckpt = save_checkpoint(GPT(cfg), tmp / "tiny.safetensors")
        text = tmp / "stdlib.txt"
        have = write_text(text, n_tokens + 1)
        cmd = [
            sys.executable, "-m", "gpt2cli", "inspect", "heads", str(ckpt), "--text", str(text),
            "--tokens", str(n_tokens), "--seq-len", str(args.seq_len),
            "--json", str(tmp / "out.json"), "--png", str(tmp / "out.png"),
        ]  # fmt: skip
        if args.ablation_tokens is not None:
            cmd += ["--ablation-tokens", str(args.ablation_tokens)]
        env = dict(os.environ)
        if args.threads is not None:
            env["OMP_NUM_THREADS"] = str(args.threads)
        walls = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            walls.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise SystemExit(f"inspect heads failed ({proc.returncode}):\n{proc.stderr}")
        report = json.loads((tmp / "out.json").read_text())

    best = min(walls)
    result = {
        "benchmark": "inspect_heads",
        "headline": (
            f"inspect heads, tiny preset, {report['sequences']} x {report['seq_len']} tokens "
            f"(ablation on {report['ablation_tokens']:,}): {best:.1f} s (target <= {TARGET_SECONDS:.0f} s)"
        ),
        "preset": "tiny",
        "model": cfg.model_dump(),
        "weights": "random init (seed 0)",
        "text": f"stdlib sources ({', '.join(STDLIB_FILES)}), {have} tokens available",
        "tokens": report["tokens"],
        "sequences": report["sequences"],
        "seq_len": report["seq_len"],
        "ablation_tokens": report["ablation_tokens"],
        "ablation_forward_passes": 1 + 2 * cfg.n_layer * cfg.n_head,
        "wall_seconds": [round(w, 2) for w in walls],
        "best_wall_seconds": round(best, 2),
        "target_seconds": TARGET_SECONDS,
        "omp_num_threads": args.threads,
        "stage_seconds": report["seconds"],
        "baseline_loss": report["baseline_loss"],
        "machine": machine_info(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(result["headline"])
    print(f"wall: {', '.join(f'{w:.1f} s' for w in walls)}")
    print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["stage_seconds"].items()))
    m = result["machine"]
    print(
        f"machine: {m['cpu']}, {m['logical_cpus']} cpus, torch {m['torch']}, load {m['load_average']}"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
