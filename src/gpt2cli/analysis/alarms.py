"""The loss–generation mismatch alarm over a run's eval history.

The failure the seed write-up saw: validation loss keeps falling while the
samples degrade into loops. Loss alone says "better"; the generation figures
say "worse". This compares the two over the last k evals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Smallest rises that count as "got worse": seq-rep-4 is a share of 4-grams,
# so +0.02 is about five repeated 4-grams in a 256-token sample; the loop share
# counts samples, so any rise means at least one more sample now loops.
SEQ_REP_TOLERANCE = 0.02
LOOP_SHARE_TOLERANCE = 0.0


def _number(record: dict, key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def mismatch_alarm(
    history: Sequence[dict],
    k: int = 3,
    seq_rep_tolerance: float = SEQ_REP_TOLERANCE,
    loop_share_tolerance: float = LOOP_SHARE_TOLERANCE,
) -> str | None:
    """A warning when val loss improved over the last k evals while generations got worse.

    history: eval records in order (dicts with `val_loss` and `seq_rep_4`
    and/or `loop_share`; other keys ignored; records without a val_loss are
    skipped). Over the last k of them, "improved" means the last val loss is
    below the first; "worse" means seq-rep-4 rose by more than
    `seq_rep_tolerance` or the loop share by more than `loop_share_tolerance`
    from the first to the last record. Returns None when there are fewer than
    k usable records or nothing is wrong.
    """
    if k < 2:
        raise ValueError(f"k must be >= 2 (a change needs two evals), got {k}")
    records = [r for r in history if _number(r, "val_loss") is not None]
    if len(records) < k:
        return None
    first, last = records[-k], records[-1]
    loss0, loss1 = _number(first, "val_loss"), _number(last, "val_loss")
    if not loss1 < loss0:
        return None
    worse = []
    for key, label, tol, fmt in (
        ("seq_rep_4", "seq-rep-4", seq_rep_tolerance, "{:.3f}"),
        ("loop_share", "loop share", loop_share_tolerance, "{:.0%}"),
    ):
        a, b = _number(first, key), _number(last, key)
        if a is not None and b is not None and b - a > tol:
            worse.append(f"{label} rose {fmt.format(a)} → {fmt.format(b)}")
    if not worse:
        return None
    steps = ""
    if "step" in first and "step" in last:
        steps = f" (steps {first['step']}–{last['step']})"
    return (
        f"loss–generation mismatch: val loss fell {loss0:.3f} → {loss1:.3f} over the last {k} evals"
        f"{steps} while {' and '.join(worse)}"
    )
