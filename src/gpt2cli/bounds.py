"""The range of every number a command takes, in one table.

The CLI checks each numeric flag against `RULES` as it is parsed (so every
command gets the same words for the same flag), and the library's option
models call `check` for the values they share with it (sampling, tokenize),
so a caller of the library meets the same limits. A float must be finite
everywhere: `inf` and `nan` parse as floats but mean nothing as a setting, and
JSON cannot hold them.

Rules are tried in order; the first one a value fails gives the line
`FLAG VALUE: MESSAGE`. A key "COMMAND FLAG" overrides "FLAG" for that command.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from gpt2cli.errors import UserError

WORKERS_PER_CORE = 4  # tokenizer processes beyond this only fight over the cores
MIN_SHARD_TOKENS = 1000  # smaller shards make thousands of tiny files for any real corpus
MAX_COUNT = 2**53  # the largest count a float (JSON, progress bars) still holds exactly
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit seed
MIN_TEMPERATURE = 1e-6  # below this, logits / T overflows float32; 0 already means greedy
PENALTY_RANGE = (1e-6, 1e6)  # the same overflow, from both sides of the penalty


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Rule:
    ok: Callable[[float], bool]
    message: Callable[[], str]  # a callable: some limits (cores) are read when a value breaks them


def _rule(ok: Callable[[float], bool], message: str | Callable[[], str]) -> Rule:
    return Rule(ok, message if callable(message) else (lambda: message))


def positive(message: str = "must be positive") -> Rule:
    return _rule(lambda v: v > 0, message)


def at_least(low: float, message: str | None = None) -> Rule:
    return _rule(lambda v: v >= low, message or f"must be at least {low}")


def at_most(high: float, message: str | Callable[[], str] | None = None) -> Rule:
    return _rule(lambda v: v <= high, message or f"must be at most {high}")


def _workers_message() -> str:
    n = cores()
    return f"must be at most {WORKERS_PER_CORE * n} ({WORKERS_PER_CORE} per core, {n} cores here)"


_MORE_THAN_CORES = _rule(lambda v: v <= WORKERS_PER_CORE * cores(), _workers_message)
_SEED = (at_least(0, "must be 0 or more"), at_most(MAX_SEED))
_COUNT = (positive(),)

RULES: dict[str, tuple[Rule, ...]] = {
    # tokenize
    "--val-fraction": (_rule(lambda v: 0 < v < 1, "must be between 0 and 1 (exclusive)"),),
    "--workers": (positive(), _MORE_THAN_CORES),
    "--shard-tokens": (
        positive(),
        at_least(MIN_SHARD_TOKENS, f"must be at least {MIN_SHARD_TOKENS} (smaller shards make thousands of files)"),
    ),
    "--seed": _SEED,
    # train
    "--steps": _COUNT,
    "--batch-size": _COUNT,
    "--block-size": _COUNT,
    "--grad-accum": _COUNT,
    "--lr": _COUNT,
    "--eval-every": _COUNT,
    "--save-every": _COUNT,
    "--skip-nonfinite": (at_least(0, "must be 0 or more"),),
    "--peak-tflops": (at_least(0, "must be 0 or more"),),
    "--nproc": (positive(), _MORE_THAN_CORES),
    "--dropout": (_rule(lambda v: 0 <= v < 1, "must be in [0, 1)"),),
    # generate, eval (sampling)
    "--max-new-tokens": _COUNT,
    "generate --max-new-tokens": (at_least(1),),
    "--temperature": (
        at_least(0, "must be >= 0 (0 means greedy)"),
        _rule(lambda v: v == 0 or v >= MIN_TEMPERATURE, f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}"),
    ),
    "--top-k": (at_least(1),),
    "--top-p": (_rule(lambda v: 0 < v <= 1, "must be in (0, 1]"),),
    "--repetition-penalty": (
        positive("must be positive (1 means none)"),
        _rule(
            lambda v: PENALTY_RANGE[0] <= v <= PENALTY_RANGE[1],
            f"must be between {PENALTY_RANGE[0]:g} and {PENALTY_RANGE[1]:g} (1 means none)",
        ),
    ),
    "--num-samples": _COUNT,
    # eval
    "--eval-tokens": _COUNT,
    "--gap-margin": (at_least(0, "must be >= 0"),),
    "--extract-windows": _COUNT,
    "--prompt-tokens": _COUNT,
    "--suffix-tokens": _COUNT,
    # demo
    "--minutes": _COUNT,
    # inspect heads
    "--tokens": _COUNT,
    "--seq-len": _COUNT,
    "--ablation-tokens": _COUNT,
    "--induction-seqs": _COUNT,
    # inspect attention: which layers and heads exist depends on the model; checked there.
    "--layer": (),
    "--head": (),
}


def rules_for(flag: str, command: str | None = None) -> tuple[Rule, ...] | None:
    if command is not None and f"{command} {flag}" in RULES:
        return RULES[f"{command} {flag}"]
    return RULES.get(flag)


def check(flag: str, value: float | int | None, command: str | None = None) -> None:
    """Raise UserError (`FLAG VALUE: why`) when `value` is outside the flag's range; None passes."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{flag} {value}: must be a finite number")
    for rule in (*(rules_for(flag, command) or ()), at_most(MAX_COUNT), at_least(-MAX_COUNT)):
        if not rule.ok(value):
            raise UserError(f"{flag} {value}: {rule.message()}")
