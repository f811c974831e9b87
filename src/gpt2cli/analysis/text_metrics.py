"""Repetition metrics on token lists: distinct-n, seq-rep-n, rep-l and back-to-back loops.

All functions take token ids (any ints) and no model, so the same code scores
generated samples and real text (the human reference) alike. Undefined values
(no n-grams in a sample shorter than n) are None, never NaN, so they survive
JSON.

Sources:
- distinct-n: Li et al. 2016, "A Diversity-Promoting Objective Function":
  distinct n-grams / all n-grams, pooled over all samples.
- seq-rep-n and rep/l: Welleck et al. 2019, "Neural Text Generation with
  Unlikelihood Training", §5: seq-rep-n = 1 - |unique n-grams| / |n-grams|
  within one continuation, averaged over continuations; rep/l = share of
  tokens that already occur in the previous l tokens.
- Back-to-back loops are what the seed write-up saw ("wave wave wave …"):
  a span of 1..32 tokens repeated consecutively at least 4 times, covering
  at least 8 tokens. Real stories repeat a phrase three times for emphasis
  ("up, up, up", "I want to watch TV! I want to watch TV! I want to watch
  TV"): of 24,049 windows of up to 128 tokens of tinystories-12k, 10 hold a
  span repeated 3 times and none one repeated 4 times over 8 tokens or more.
  A degenerate loop keeps going, so the fourth repeat and the 8 tokens are
  what set it apart (tests/test_verdict_panel.py pins the rate on real text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gpt2cli.analysis.evidence import (
    LEVEL,
    NOT_ENOUGH,
    fmt_interval,
    graded_verdict,
    mean_difference,
    rate_difference,
    worst,
)

LOOP_MAX_PERIOD = 32
LOOP_MIN_REPEATS = 4
LOOP_MIN_TOKENS = 8
DISTINCT_NS = (1, 2, 3, 4)
REP_WINDOWS = (16, 32)

Tokens = Sequence[int]


def ngrams(tokens: Tokens, n: int) -> list[tuple[int, ...]]:
    """Every contiguous n-gram of `tokens`, in order."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    t = [int(x) for x in tokens]
    return [tuple(t[i : i + n]) for i in range(len(t) - n + 1)]


def distinct_n(samples: Sequence[Tokens], n: int) -> float | None:
    """Distinct n-grams / all n-grams, pooled over the samples (Li et al. 2016)."""
    seen: set[tuple[int, ...]] = set()
    total = 0
    for tokens in samples:
        grams = ngrams(tokens, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else None


def seq_rep_n(tokens: Tokens, n: int = 4) -> float | None:
    """1 - unique n-grams / all n-grams within one sequence (Welleck et al. 2019)."""
    grams = ngrams(tokens, n)
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


def seq_rep_values(samples: Sequence[Tokens], n: int = 4) -> list[float]:
    """seq-rep-n of each sample that has at least one n-gram."""
    return [v for v in (seq_rep_n(t, n) for t in samples) if v is not None]


def mean_seq_rep_n(samples: Sequence[Tokens], n: int = 4) -> float | None:
    """seq-rep-n averaged over the samples that have at least one n-gram."""
    values = seq_rep_values(samples, n)
    return float(np.mean(values)) if values else None


def rep_l(samples: Sequence[Tokens], window: int) -> float | None:
    """Share of tokens that already occur among the previous `window` tokens.

    Welleck et al. 2019 (rep/l), pooled over every position of every sample.
    Positions are counted within the given tokens only (for generated samples:
    the new tokens, not the prompt), so real text of the same length is scored
    the same way.
    """
    hits = total = 0
    for tokens in samples:
        t = [int(x) for x in tokens]
        last_seen: dict[int, int] = {}
        for i, tok in enumerate(t):
            j = last_seen.get(tok)
            if j is not None and i - j <= window:
                hits += 1
            last_seen[tok] = i
        total += len(t)
    return hits / total if total else None


@dataclass(frozen=True)
class Loop:
    """A span of `period` tokens repeated `repeats` times back to back, from `start`."""

    start: int
    period: int
    repeats: int

    @property
    def length(self) -> int:
        """Tokens covered by the full repeats."""
        return self.period * self.repeats

    def unit(self, tokens: Tokens) -> list[int]:
        return [int(x) for x in tokens[self.start : self.start + self.period]]


def longest_loop(
    tokens: Tokens,
    max_period: int = LOOP_MAX_PERIOD,
    min_repeats: int = LOOP_MIN_REPEATS,
    min_tokens: int = LOOP_MIN_TOKENS,
) -> Loop | None:
    """The back-to-back loop covering the most tokens, or None.

    A loop is `min_repeats` or more full repeats of a span of 1..max_period
    tokens covering at least `min_tokens` tokens.
    For each period p, positions where t[i] == t[i+p] form runs; a run of r
    such positions is a stretch of r + p tokens with period p, i.e.
    (r + p) // p full repeats of its first p tokens. The loop covering most
    tokens wins; ties go to the shorter period (so "wave wave wave wave" is
    1 token x 4, not 2 tokens x 2), then to the earlier start.
    """
    t = np.asarray(tokens, dtype=np.int64)
    best: Loop | None = None
    for p in range(1, min(max_period, len(t) // min_repeats) + 1):
        same = np.concatenate(([False], t[p:] == t[:-p], [False]))
        edges = np.flatnonzero(np.diff(same.astype(np.int8)))
        starts, ends = edges[0::2], edges[1::2]
        runs = ends - starts
        repeats = (runs + p) // p
        ok = (repeats >= min_repeats) & (repeats * p >= min_tokens)
        if not ok.any():
            continue
        cover = np.where(ok, repeats * p, 0)
        k = int(np.argmax(cover))  # first maximum = earliest start
        cand = Loop(start=int(starts[k]), period=p, repeats=int(repeats[k]))
        if best is None or cand.length > best.length:
            best = cand
    return best


def loop_count(samples: Sequence[Tokens]) -> int:
    """How many samples hold a back-to-back loop."""
    return sum(longest_loop(t) is not None for t in samples)


def loop_share(samples: Sequence[Tokens]) -> float | None:
    """Share of samples holding a back-to-back loop."""
    if not samples:
        return None
    return loop_count(samples) / len(samples)


def repetition_metrics(samples: Sequence[Tokens]) -> dict:
    """Every repetition figure for a set of samples, plus the longest loop overall."""
    loops = [longest_loop(t) for t in samples]
    best_i = None
    for i, loop in enumerate(loops):
        if loop is not None and (best_i is None or loop.length > loops[best_i].length):
            best_i = i
    out: dict = {f"distinct_{n}": distinct_n(samples, n) for n in DISTINCT_NS}
    out["seq_rep_4"] = mean_seq_rep_n(samples, 4)
    for w in REP_WINDOWS:
        out[f"rep_{w}"] = rep_l(samples, w)
    out["loop_share"] = (sum(x is not None for x in loops) / len(samples)) if samples else None
    out["longest_loop"] = None
    if best_i is not None:
        loop = loops[best_i]
        out["longest_loop"] = {
            "sample": best_i,
            "start": loop.start,
            "period": loop.period,
            "repeats": loop.repeats,
            "length": loop.length,
            "unit_tokens": loop.unit(samples[best_i]),
        }
    out["mean_length"] = float(np.mean([len(t) for t in samples])) if samples else 0.0
    return out


def generation_metrics(
    token_lists: Sequence[Tokens], entropies: Sequence[Sequence[float]] | None = None
) -> dict[str, float | None]:
    """Flat figures for one set of generated samples, as `gpt2 train` logs them per eval.

    Keys: distinct_1..4, seq_rep_4, rep_16, rep_32, loop_share,
    longest_loop_length, mean_length and, when per-token entropies are given,
    mean_entropy, entropy_first_quarter, entropy_last_quarter. Undefined
    values are None. The evidence the mismatch alarm needs rides along:
    n_samples (how many), loop_count (how many loop) and seq_rep_4_sd (the
    standard deviation of seq-rep-4 over the samples).
    """
    from gpt2cli.analysis.entropy import curve_summary, entropy_curve

    rep = repetition_metrics(token_lists)
    out: dict[str, float | None] = {f"distinct_{n}": rep[f"distinct_{n}"] for n in DISTINCT_NS}
    out["seq_rep_4"] = rep["seq_rep_4"]
    for w in REP_WINDOWS:
        out[f"rep_{w}"] = rep[f"rep_{w}"]
    out["loop_share"] = rep["loop_share"]
    loop = rep["longest_loop"]
    out["longest_loop_length"] = float(loop["length"]) if loop else 0.0
    out["mean_length"] = rep["mean_length"]
    out["n_samples"] = float(len(token_lists))
    out["loop_count"] = float(loop_count(token_lists))
    reps = seq_rep_values(token_lists, 4)
    out["seq_rep_4_sd"] = float(np.std(reps, ddof=1)) if len(reps) > 1 else None
    if entropies is not None:
        summary = curve_summary(entropy_curve(entropies))
        out["mean_entropy"] = summary["mean"]
        out["entropy_first_quarter"] = summary["first_quarter"]
        out["entropy_last_quarter"] = summary["last_quarter"]
    return out


# Verdict thresholds, as rises over real text of the same length (the human
# reference): a quarter more samples looping, or 0.15 more of each sample's
# 4-grams repeated, is far outside what real text does; a twentieth / 0.05 is
# a warning sign (real stories almost never loop, see LOOP_MIN_REPEATS). A
# level fires only when the lower end of the rise's 95% interval is past it
# (gpt2cli.analysis.evidence).
HIGH_LOOP_RISE, HIGH_SEQ_REP_RISE = 0.25, 0.15
ELEVATED_LOOP_RISE, ELEVATED_SEQ_REP_RISE = 0.05, 0.05
VERDICT_ORDER = ("ok", NOT_ENOUGH, "ELEVATED", "HIGH")


def repetition_evidence(samples: Sequence[Tokens], references: Sequence[Tokens], seed: int = 0) -> dict:
    """Loop rate and mean seq-rep-4 of the samples against real-text windows, with 95% intervals.

    The samples and the references are the units: a sample loops or not
    (Wilson / Newcombe intervals), its seq-rep-4 is one value (bootstrap of
    the difference of means).
    """
    return {
        "level": LEVEL,
        "loop": rate_difference(loop_count(samples), len(samples), loop_count(references), len(references)),
        "seq_rep_4": mean_difference(seq_rep_values(samples, 4), seq_rep_values(references, 4), seed=seed),
    }


def repetition_verdict(evidence: dict) -> tuple[str, str]:
    """(verdict, line) from `repetition_evidence`: the worse of the loop and seq-rep-4 verdicts."""
    loop, rep = evidence["loop"], evidence["seq_rep_4"]
    v_loop = graded_verdict(
        loop["rise"], loop["rise_interval"][0], [("HIGH", HIGH_LOOP_RISE), ("ELEVATED", ELEVATED_LOOP_RISE)]
    )
    rep_lo = rep["rise_interval"][0] if rep["rise_interval"] else None
    v_rep = graded_verdict(
        rep["rise"], rep_lo, [("HIGH", HIGH_SEQ_REP_RISE), ("ELEVATED", ELEVATED_SEQ_REP_RISE)]
    )
    verdict = worst([v_loop, v_rep], VERDICT_ORDER)
    lo, hi = loop["interval"]
    rlo, rhi = loop["reference_interval"]
    parts = [
        f"{loop['count']}/{loop['n']} samples loop ({loop['rate'] or 0:.0%}, 95% {lo:.0%}–{hi:.0%}) vs "
        f"{loop['reference_count']}/{loop['reference_n']} real-text windows "
        f"({loop['reference_rate'] or 0:.0%}, 95% {rlo:.0%}–{rhi:.0%})"
    ]
    if rep["rise"] is not None:
        parts.append(
            f"seq-rep-4 {rep['mean']:.2f} vs {rep['reference_mean']:.2f} in real text "
            f"(rise {rep['rise']:+.2f}, 95% {fmt_interval(*rep['rise_interval'], '+.2f')})"
        )
    return verdict, f"repetition: {verdict} — " + "; ".join(parts)
