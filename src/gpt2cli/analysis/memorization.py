"""Memorization: verbatim overlap of samples with the training data, and extraction.

Overlap: for each sample, the share of its n-grams (n = 8, 16, 32) found
verbatim in the training tokens (through `NgramIndex`), and the longest
verbatim overlap in tokens.

Extraction: a training sequence is extractable with P tokens of context when
greedy decoding from its first P tokens reproduces its next S tokens exactly
(Carlini et al. 2021, "Extracting Training Data from Large Language Models";
the P-token-context definition is from Carlini et al. 2023, "Quantifying
Memorization Across Neural Language Models"). The same test on validation
windows is the control: what a model that generalises, rather than recalls,
gets right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from gpt2cli.analysis.evidence import (
    LEVEL,
    NOT_ENOUGH,
    bootstrap_ratio,
    fmt_interval,
    graded_verdict,
    interval,
    rate_difference,
    worst,
)
from gpt2cli.analysis.ngram_index import NgramIndex
from gpt2cli.errors import UserError


def _longest_true_run(mask: np.ndarray) -> tuple[int, int]:
    """(length, start) of the longest run of True; (0, -1) when there is none."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    if len(edges) == 0:
        return 0, -1
    starts, ends = edges[0::2], edges[1::2]
    k = int(np.argmax(ends - starts))
    return int(ends[k] - starts[k]), int(starts[k])


def longest_overlap(index: NgramIndex, tokens: Sequence[int]) -> tuple[int, int]:
    """(length, start) of the longest span of `tokens` found verbatim in the training data.

    Resolution comes from the indexed n's (8, 16, 32). With the largest n that
    has a hit, consecutive hit positions chain into a span of run + n - 1
    tokens. A verbatim span of L >= n tokens has all its n-grams in the index,
    so the figure is never below the true overlap; it is exact when the chain
    comes from one place in the training data (the normal case for n = 32),
    and a chain found at a smaller n is capped below the next n (no hit at
    32 means no verbatim span of 32). 0 means not even an n-gram of the
    smallest n (8) is in the training data.
    """
    ns = sorted(index.ns)
    for i in range(len(ns) - 1, -1, -1):
        n = ns[i]
        run, start = _longest_true_run(index.contains(tokens, n))
        if run:
            length = run + n - 1
            if i + 1 < len(ns):
                length = min(length, ns[i + 1] - 1)
            return length, start
    return 0, -1


def overlap_report(index: NgramIndex, samples: Sequence[Sequence[int]]) -> dict:
    """Verbatim overlap of `samples` with the training data.

    per_n[n]: share of all the samples' n-grams found in the training data
    (pooled) and the share of samples with at least one such n-gram.
    longest: the longest overlap of each sample, and the sample and position
    of the longest overall.
    """
    per_n = {}
    for n in index.ns:
        hits, totals = overlap_counts(index, samples, n)
        total = int(totals.sum())
        per_n[str(n)] = {
            "share": int(hits.sum()) / total if total else None,
            "samples_with_hit": int((hits > 0).sum()) / len(samples) if samples else None,
            "ngrams": total,
        }
    lengths, starts = [], []
    for tokens in samples:
        length, start = longest_overlap(index, tokens)
        lengths.append(length)
        starts.append(start)
    best = int(np.argmax(lengths)) if lengths else -1
    return {
        "per_n": per_n,
        "longest": {
            "per_sample": lengths,
            "max": lengths[best] if lengths else 0,
            "mean": float(np.mean(lengths)) if lengths else 0.0,
            "sample": best,
            "start": starts[best] if lengths else -1,
        },
    }


def sample_windows(tokens: np.ndarray, k: int, length: int, seed: int, eot_id: int) -> np.ndarray:
    """Start positions of up to k distinct windows of `length` tokens with no EOT inside.

    Windows stay inside one document: a suffix after a document break is a new
    story that no prefix determines, which would dilute the test. Drawn
    uniformly over all such windows with a seeded generator.
    """
    eots = np.flatnonzero(np.asarray(tokens) == eot_id)
    doc_starts = np.concatenate(([0], eots + 1))
    doc_ends = np.concatenate((eots, [len(tokens)]))
    per_doc = np.maximum(doc_ends - doc_starts - length + 1, 0)
    total = int(per_doc.sum())
    if total == 0:
        raise UserError(
            f"no stretch of {length} tokens without a document break in the data; "
            "lower --prompt-tokens/--suffix-tokens"
        )
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=min(k, total), replace=False))
    cum = np.cumsum(per_doc)
    doc = np.searchsorted(cum, picks, side="right")
    before = cum[doc] - per_doc[doc]
    return doc_starts[doc] + (picks - before)


Continue = Callable[[list[list[int]], int], list[list[int]]]


def extraction_rate(
    tokens: np.ndarray, starts: np.ndarray, prompt_tokens: int, suffix_tokens: int, greedy: Continue
) -> dict:
    """Share of windows whose S-token suffix greedy decoding reproduces from the P-token prefix.

    greedy(prompts, S) returns the greedy continuation of each prompt (it may
    stop early). Also reports the mean share of suffix tokens matched before
    the first difference.
    """
    prompts, suffixes = [], []
    for s in starts:
        window = np.asarray(tokens[s : s + prompt_tokens + suffix_tokens]).tolist()
        prompts.append(window[:prompt_tokens])
        suffixes.append(window[prompt_tokens:])
    outputs = greedy(prompts, suffix_tokens)
    exact, prefix_match = [], []
    for out, want in zip(outputs, suffixes, strict=True):
        got = list(out)[:suffix_tokens]
        same = 0
        while same < len(got) and got[same] == want[same]:
            same += 1
        exact.append(same == suffix_tokens)
        prefix_match.append(same / suffix_tokens)
    return {
        "windows": len(prompts),
        "extracted": int(sum(exact)),
        "share": float(np.mean(exact)) if exact else None,
        "mean_prefix_match": float(np.mean(prefix_match)) if prefix_match else None,
    }


# Extraction: 10 points more of train windows reproduced than of val windows is
# recall, not generalisation; 2 points is a warning. Sampled 32-grams found
# verbatim in training, beyond what real val text shares with it, likewise.
# A level fires only when the lower end of the rise's 95% interval is past it.
HIGH_RISE, ELEVATED_RISE = 0.10, 0.02
VERDICT_ORDER = ("ok", NOT_ENOUGH, "ELEVATED", "HIGH")


def overlap_counts(index: NgramIndex, samples: Sequence[Sequence[int]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n-grams found in the training data, n-grams) for each sample."""
    hits, totals = [], []
    for tokens in samples:
        found = index.contains(tokens, n)
        hits.append(int(found.sum()))
        totals.append(len(found))
    return np.asarray(hits, dtype=np.float64), np.asarray(totals, dtype=np.float64)


def memorization_evidence(
    extraction_train: dict,
    extraction_val: dict,
    overlap: tuple[np.ndarray, np.ndarray] | None = None,
    overlap_reference: tuple[np.ndarray, np.ndarray] | None = None,
    n: int | None = None,
    seed: int = 0,
) -> dict:
    """Extraction of train vs val windows (Newcombe interval of the difference) and, given the
    per-sample overlap counts of samples and real text, the rise of the pooled n-gram share
    (bootstrap over samples)."""
    out: dict = {
        "level": LEVEL,
        "extraction": rate_difference(
            extraction_train["extracted"], extraction_train["windows"],
            extraction_val["extracted"], extraction_val["windows"],
        ),
        "overlap": None,
    }
    if overlap is not None and overlap_reference is not None and overlap[1].sum() and overlap_reference[1].sum():
        ds = bootstrap_ratio(*overlap, seed=seed)
        dr = bootstrap_ratio(*overlap_reference, seed=seed + 1)
        share = float(overlap[0].sum() / overlap[1].sum())
        ref = float(overlap_reference[0].sum() / overlap_reference[1].sum())
        out["overlap"] = {
            "n": n,
            "samples": len(overlap[0]),
            "share": share,
            "interval": list(interval(ds)),
            "reference_samples": len(overlap_reference[0]),
            "reference_share": ref,
            "reference_interval": list(interval(dr)),
            "rise": share - ref,
            "rise_interval": list(interval(ds - dr)),
        }
    return out


def memorization_verdict(evidence: dict, samples: dict | None = None) -> tuple[str, str]:
    """(verdict, line) from `memorization_evidence` (and the samples' `overlap_report`, for the longest overlap)."""
    levels = [("HIGH", HIGH_RISE), ("ELEVATED", ELEVATED_RISE)]
    ex = evidence["extraction"]
    verdicts = [graded_verdict(ex["rise"], ex["rise_interval"][0], levels)]
    parts = [
        f"{ex['count']}/{ex['n']} train windows extracted ({ex['rate'] or 0:.0%}) vs "
        f"{ex['reference_count']}/{ex['reference_n']} val ({ex['reference_rate'] or 0:.0%}; "
        f"rise 95% {fmt_interval(*ex['rise_interval'], '+.0%')})"
    ]
    ov = evidence.get("overlap")
    if ov is not None:
        verdicts.append(graded_verdict(ov["rise"], ov["rise_interval"][0], levels))
        parts.append(
            f"{ov['share']:.0%} of sampled {ov['n']}-grams are in the training data (real val text "
            f"{ov['reference_share']:.0%}; rise 95% {fmt_interval(*ov['rise_interval'], '+.0%')})"
        )
    if samples is not None:
        parts.append(f"longest verbatim overlap {samples['longest']['max']} tokens")
    verdict = worst(verdicts, VERDICT_ORDER)
    return verdict, f"memorization: {verdict} — " + "; ".join(parts)
