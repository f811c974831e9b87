"""The loss–generation mismatch alarm over a run's eval history.

The failure the seed write-up saw: validation loss keeps falling while the
samples degrade into loops. Loss alone says "better"; the generation figures
say "worse". This compares the two over the last k evals.

"Worse" has to be beyond chance: a handful of samples per eval moves the
loop share and seq-rep-4 a lot from one draw to the next (one looping sample
of three is "33%"), so each figure's rise from the first to the last of the
k evals carries a 95% interval, and the alarm fires only when the whole
interval is above its tolerance. The loop share is a rate of samples
(Newcombe's interval for a difference of rates); seq-rep-4 is a mean over
samples (normal interval from the per-eval standard deviations, Welch).
Each of the two tests is one-sided at 2.5%, so a healthy run, whose figures
do not really rise, raises a false alarm at under 5% of evals
(experiments/failure_modes.py measures it by re-sampling a healthy run).
Records without sample counts (runs logged before these were kept) or with
fewer than MIN_SAMPLES samples per eval cannot decide: the check then says
"not enough evidence" instead of firing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpt2cli.analysis.evidence import NOT_ENOUGH, Z, fmt_interval, rate_difference_interval

# Smallest rises that count as "got worse", beyond chance: seq-rep-4 is a share
# of 4-grams, so +0.02 is about five repeated 4-grams in a 256-token sample; the
# loop share counts samples, so any rise whose interval is above 0 counts.
SEQ_REP_TOLERANCE = 0.02
LOOP_SHARE_TOLERANCE = 0.0
# Below this many samples per eval, the intervals are too rough to trust.
MIN_SAMPLES = 8


def _number(record: dict, key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _count(record: dict) -> int:
    n = _number(record, "n_samples")
    return int(n) if n is not None else 0


def _loop_rise(first: dict, last: dict) -> tuple[float, float, float] | None:
    """(rise, lo, hi) of the loop share, or None without the counts."""
    n0, n1 = _count(first), _count(last)
    k0, k1 = _number(first, "loop_count"), _number(last, "loop_count")
    if not (n0 and n1) or k0 is None or k1 is None:
        return None
    lo, hi = rate_difference_interval(int(k1), n1, int(k0), n0)
    return k1 / n1 - k0 / n0, lo, hi


def _seq_rep_rise(first: dict, last: dict) -> tuple[float, float, float] | None:
    n0, n1 = _count(first), _count(last)
    a, b = _number(first, "seq_rep_4"), _number(last, "seq_rep_4")
    s0, s1 = _number(first, "seq_rep_4_sd"), _number(last, "seq_rep_4_sd")
    if not (n0 and n1) or None in (a, b, s0, s1):
        return None
    half = Z * math.sqrt(s0 * s0 / n0 + s1 * s1 / n1)
    return b - a, b - a - half, b - a + half


def mismatch_check(
    history: Sequence[dict],
    k: int = 3,
    seq_rep_tolerance: float = SEQ_REP_TOLERANCE,
    loop_share_tolerance: float = LOOP_SHARE_TOLERANCE,
    min_samples: int = MIN_SAMPLES,
) -> dict:
    """The alarm's decision over the last k evals: {"status", "line"}.

    history: eval records in order (dicts with `val_loss`, `seq_rep_4`,
    `loop_share` and, to decide, `n_samples`, `loop_count`, `seq_rep_4_sd`;
    records without a val_loss are skipped). status: "fires" (val loss fell
    and a generation figure rose beyond chance: line is the warning),
    "not enough evidence" (a figure rose, but the interval reaches below the
    tolerance or there are too few samples: line says so), "ok", or
    "waiting" (fewer than k evals so far). line is None for "ok" and "waiting".
    """
    if k < 2:
        raise ValueError(f"k must be >= 2 (a change needs two evals), got {k}")
    records = [r for r in history if _number(r, "val_loss") is not None]
    if len(records) < k:
        return {"status": "waiting", "line": None}
    first, last = records[-k], records[-1]
    loss0, loss1 = _number(first, "val_loss"), _number(last, "val_loss")
    if not loss1 < loss0:
        return {"status": "ok", "line": None}
    n = min(_count(first), _count(last))
    worse, unsure = [], []
    for key, label, tol, fmt, rise_of in (
        ("seq_rep_4", "seq-rep-4", seq_rep_tolerance, "{:.3f}", _seq_rep_rise),
        ("loop_share", "loop share", loop_share_tolerance, "{:.0%}", _loop_rise),
    ):
        a, b = _number(first, key), _number(last, key)
        if a is None or b is None or not b - a > tol:
            continue
        text = f"{label} rose {fmt.format(a)} → {fmt.format(b)}"
        rise = rise_of(first, last) if n >= min_samples else None
        if rise is not None and rise[1] > tol:
            worse.append(f"{text} (95% interval of the rise {fmt_interval(rise[1], rise[2], '+.3f')})")
        elif rise is not None:
            unsure.append(f"{text}, but the 95% interval of the rise {fmt_interval(rise[1], rise[2], '+.3f')} "
                          f"reaches {fmt.format(tol)}")
        else:
            unsure.append(text)
    steps = ""
    if "step" in first and "step" in last:
        steps = f" (steps {first['step']}–{last['step']})"
    head = f"val loss fell {loss0:.3f} → {loss1:.3f} over the last {k} evals{steps}"
    if worse:
        line = f"loss–generation mismatch: {head} while {' and '.join(worse)}, from {n} samples per eval"
        return {"status": "fires", "line": line}
    if unsure:
        why = (f"from {n} samples per eval; it decides with {min_samples} or more (train.eval_samples)"
               if n < min_samples else f"from {n} samples per eval")
        line = f"mismatch alarm: {NOT_ENOUGH} — {head} while {' and '.join(unsure)}, {why}"
        return {"status": NOT_ENOUGH, "line": line}
    return {"status": "ok", "line": None}


def mismatch_alarm(history: Sequence[dict], k: int = 3, **kw) -> str | None:
    """The warning when the alarm fires over the last k evals (see `mismatch_check`), else None."""
    check = mismatch_check(history, k, **kw)
    return check["line"] if check["status"] == "fires" else None
