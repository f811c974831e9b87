"""This CPU's matmul peak, measured: the yardstick for model FLOPs utilisation (MFU).

    python benchmarks/matmul_peak.py            # sizes 1024, 2048, 4096; fp32 and bf16
    python benchmarks/matmul_peak.py --quick    # sizes 1024, 2048

Vendors' peak figures assume clocks and instruction mixes a real matmul does
not reach; what a training step can hope for is what torch's own matmul
(oneDNN / MKL underneath) achieves on large square operands. For each dtype
we time C = A @ B for n x n matrices (2 n^3 FLOPs), take the median of the
repeats per size and report the best size, in GFLOP/s.

Other benchmarks import `measure_peaks` (run it in the same process
configuration, i.e. the same torch thread count, as the work it is the
yardstick for). Writes benchmarks/results/matmul_peak.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

# Sibling modules (machine.py) stay importable, but this folder goes last on the
# path: benchmarks/tokenize.py would otherwise shadow the standard library's
# `tokenize`, which torch imports.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

RESULTS = _HERE / "results" / "matmul_peak.json"
SIZES = (1024, 2048, 4096)
QUICK_SIZES = (1024, 2048)


def matmul_gflops(n: int, dtype, repeats: int, min_seconds: float = 0.2, max_seconds: float = 2.0) -> float:
    """Median GFLOP/s of n x n @ n x n in `dtype` over `repeats` timings of >= min_seconds each.

    A dtype this CPU has no fast kernel for (bf16 without AVX512-BF16/AMX can run at
    ~1 GFLOP/s) would take minutes: once one call takes over `max_seconds`, that call's
    rate is the answer.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: oneDNN picks and caches its kernel
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    one = max(time.perf_counter() - t0, 1e-6)
    if one > max_seconds:
        return 2 * n**3 / one / 1e9
    inner = max(1, int(min_seconds / one))  # small sizes: several calls per timing
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        rates.append(2 * n**3 * inner / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def measure_peaks(sizes=SIZES, repeats: int = 5, dtypes=("fp32", "bf16")) -> dict:
    """{dtype: {"gflops": best median GFLOP/s, "size": n, "by_size": {n: GFLOP/s}}}."""
    import torch

    names = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {}
    for name in dtypes:
        by_size = {}
        for n in sizes:
            by_size[n] = matmul_gflops(n, names[name], repeats)
            if 2 * n**3 / (by_size[n] * 1e9) > 1.0:
                break  # a slow kernel: larger sizes only take longer to say the same
        best = max(by_size, key=by_size.get)
        peaks[name] = {"gflops": by_size[best], "size": best, "by_size": by_size}
    return peaks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 1024 and 2048, 3 repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch
    from machine import machine_info, physical_cores

    from gpt2cli.atomic import write_text_atomic

    torch.set_num_threads(args.threads or physical_cores())
    sizes, repeats = (QUICK_SIZES, 3) if args.quick else (SIZES, 5)
    peaks = measure_peaks(sizes, repeats)
    record = {"benchmark": "matmul_peak", "machine": machine_info(), "quick": args.quick,
              "repeats": repeats, "peaks": peaks}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
    print(f"{'dtype':<6}" + "".join(f"{f'n={n}':>10}" for n in sizes) + f"{'peak GFLOP/s':>14}")
    for name, p in peaks.items():
        cells = "".join(f"{p['by_size'][n]:>10.0f}" if n in p["by_size"] else f"{'-':>10}" for n in sizes)
        print(f"{name:<6}" + cells + f"{p['gflops']:>14.0f}")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
