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

from gpt2cli.analysis.evidence import (
    LEVEL,
    NOT_ENOUGH,
    RESAMPLES,
    fmt_interval,
    graded_verdict,
    interval,
    resample_indices,
    worst,
)


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


def _matrix(entropies: Sequence[Sequence[float]], length: int) -> np.ndarray:
    m = np.full((len(entropies), length), np.nan)
    for i, e in enumerate(entropies):
        m[i, : len(e)] = np.asarray(e, dtype=np.float64)[:length]
    return m


def _quarters(m: np.ndarray, idx: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """First- and last-quarter means of the curve of each resample (rows of idx) of m's samples."""
    filled = np.nan_to_num(m)
    counts = (~np.isnan(m)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = filled[idx].sum(axis=1) / counts[idx].sum(axis=1)  # (resamples, length)
        first = np.nanmean(curve[:, :q], axis=1) if q else np.full(len(idx), np.nan)
        last = np.nanmean(curve[:, -q:], axis=1) if q else np.full(len(idx), np.nan)
    return first, last


def entropy_evidence(
    generated: Sequence[Sequence[float]],
    reference: Sequence[Sequence[float]] | None,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """Ratios last quarter / first quarter (samples) and last quarter / real text's, with 95% intervals.

    Bootstrap over samples (and, apart, over the real-text readings): each
    resample's curve is summarised exactly as `curve_summary` does, with the
    quarter fixed by the full curve's length (`last_quarter_positions`, [start,
    stop)). The real-text ratio compares the same positions on both sides: the
    last quarter of the positions both the samples and the real text reach
    (`reference_positions`). Real continuations often end before the samples
    do (short val stories); past their end there is nothing to compare with,
    so the ratio is taken where they end.
    """
    import warnings

    n = len(generated)
    length = max((len(e) for e in generated), default=0)
    out: dict = {"level": LEVEL, "resamples": resamples, "samples": n,
                 "reference_samples": len(reference) if reference else 0}
    if n == 0 or length == 0:
        return {**out, "last_over_first": None, "last_over_first_interval": None,
                "last_over_reference": None, "last_over_reference_interval": None,
                "last_quarter_positions": None, "reference_positions": None}
    q = math.ceil(length / 4)
    out["last_quarter_positions"] = [length - q, length]
    rng = np.random.default_rng(seed)
    g = _matrix(generated, length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no sample reaching a position
        first, last = _quarters(g, np.arange(n)[None, :], q)
        g_idx = resample_indices(n, resamples, rng)
        gf, gl = _quarters(g, g_idx, q)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["last_over_first"] = float(last[0] / first[0]) if first[0] > 0 else None
            out["last_over_first_interval"] = list(interval(gl / gf))
        out["last_over_reference"] = out["last_over_reference_interval"] = out["reference_positions"] = None
        common = min(length, max((len(e) for e in reference), default=0)) if reference else 0
        if common:
            qc = math.ceil(common / 4)
            out["reference_positions"] = [common - qc, common]
            _, g_last = _quarters(g[:, :common], np.arange(n)[None, :], qc)
            _, g_l = _quarters(g[:, :common], g_idx, qc)
            r = _matrix(reference, common)
            _, rlast = _quarters(r, np.arange(len(reference))[None, :], qc)
            _, rl = _quarters(r, resample_indices(len(reference), resamples, rng), qc)
            with np.errstate(invalid="ignore", divide="ignore"):
                if np.isfinite(rlast[0]) and rlast[0] > 0:
                    out["last_over_reference"] = float(g_last[0] / rlast[0])
                    out["last_over_reference_interval"] = list(interval(g_l / rl))
    return out


def entropy_verdict(generated: dict, reference: dict | None, evidence: dict | None = None) -> tuple[str, str]:
    """(verdict, line) from `curve_summary` of the samples and of the model reading real text.

    COLLAPSE when the whole 95% interval of either ratio (last quarter over
    the first; last quarter over real text's) is below COLLAPSE_RATIO; "not
    enough evidence" when a ratio is below it but its interval is not (or
    there is no interval).
    """
    first, last = generated["first_quarter"], generated["last_quarter"]
    if first is None or last is None:
        return "n/a", "entropy: n/a — no generated tokens"
    ref_last = reference["last_quarter"] if reference else None
    evidence = evidence or {}
    verdicts, shown = [], []
    # Where real text ends before the samples, the ratio to it is taken earlier (entropy_evidence).
    at = evidence.get("reference_positions")
    where = f" at positions {at[0]}–{at[1] - 1}" if at and at != evidence.get("last_quarter_positions") else ""
    for key, label, plain in (
        ("last_over_first", "of the first quarter", last / first if first > 0 else None),
        ("last_over_reference", f"of real text's{where}", last / ref_last if ref_last else None),
    ):
        ratio = evidence.get(key)
        if ratio is None and not evidence:  # no evidence at all: the plain ratio of the summaries
            ratio = plain
        if ratio is None:
            continue
        lo, hi = evidence.get(f"{key}_interval") or [None, None]
        # The rise below the ratio: a drop to under COLLAPSE_RATIO is the alarm.
        verdicts.append(graded_verdict(-ratio, -hi if hi is not None and math.isfinite(hi) else None,
                                       [("COLLAPSE", -COLLAPSE_RATIO)]))
        shown.append(f"{ratio:.2f} {label} (95% {fmt_interval(lo, hi, '.2f')})")
    verdict = worst(verdicts, ("ok", NOT_ENOUGH, "COLLAPSE")) if verdicts else "ok"
    line = f"entropy: {verdict} — last quarter {last:.2f} nats (first quarter {first:.2f}"
    if ref_last is not None:
        line += f"; reading real text {ref_last:.2f}"
    line += ")"
    if shown:
        line += f"; last quarter = {' and '.join(shown)}, collapse below {COLLAPSE_RATIO:g}"
        if evidence.get("samples"):
            n = evidence["samples"]
            line += f", over {n} sample{'s' if n != 1 else ''}"
    return verdict, line
