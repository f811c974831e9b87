"""The entropy-collapse curve: mean next-token entropy by position in the samples.

A healthy sampler keeps drawing from a spread-out distribution; a model that
has fallen into a loop becomes ever more certain (entropy -> 0) as the sample
goes on. The curve is summarised by its first and last quarter.

Entropy is in nats: H(p) = -sum_i p_i log p_i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def entropy_from_logits(logits):
    """H(softmax(logits)) in nats over the last axis (a torch tensor in, one out).

    Masked entries (-inf logits, e.g. after top-k) have p = 0 and add nothing:
    0 * log 0 is taken as 0.
    """
    logp = logits.float().log_softmax(dim=-1)
    return -(logp.exp() * logp).nan_to_num(nan=0.0).sum(dim=-1)


def entropy_curve(entropies: Sequence[Sequence[float]]) -> list[float]:
    """Mean entropy at each position, over the samples that reach that position."""
    length = max((len(e) for e in entropies), default=0)
    sums = np.zeros(length)
    counts = np.zeros(length)
    for e in entropies:
        sums[: len(e)] += np.asarray(e, dtype=np.float64)
        counts[: len(e)] += 1
    return [float(s / c) for s, c in zip(sums, counts, strict=True)]


def curve_summary(curve: Sequence[float]) -> dict:
    """Mean of the curve, of its first and last quarter (positions), and their ratio.

    The quarter is ceil(len/4) positions, so curves shorter than 4 still have
    one position in each. `last_over_first` is None when the first quarter is 0.
    """
    if not curve:
        return {"mean": None, "first_quarter": None, "last_quarter": None, "last_over_first": None}
    q = math.ceil(len(curve) / 4)
    first = float(np.mean(curve[:q]))
    last = float(np.mean(curve[-q:]))
    return {
        "mean": float(np.mean(curve)),
        "first_quarter": first,
        "last_quarter": last,
        "last_over_first": last / first if first > 0 else None,
    }


# Collapse: by the last quarter of the samples the model draws from
# distributions with less than half the entropy it has when reading real text
# at the same positions, or less than half its own entropy in the first quarter.
COLLAPSE_RATIO = 0.5


def entropy_verdict(generated: dict, reference: dict | None) -> tuple[str, str]:
    """(verdict, line) from `curve_summary` of the samples and of the model reading real text."""
    first, last = generated["first_quarter"], generated["last_quarter"]
    if first is None or last is None:
        return "n/a", "entropy: n/a — no generated tokens"
    ref_last = reference["last_quarter"] if reference else None
    collapsed = last < COLLAPSE_RATIO * first
    if ref_last is not None:
        collapsed = collapsed or last < COLLAPSE_RATIO * ref_last
    verdict = "COLLAPSE" if collapsed else "ok"
    line = f"entropy: {verdict} — last quarter {last:.2f} nats (first quarter {first:.2f}"
    if ref_last is not None:
        line += f"; reading real text {ref_last:.2f}"
    return verdict, line + ")"
