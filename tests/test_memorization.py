"""Overlap reports, window sampling and the extraction test, on crafted data."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2cli.analysis.memorization import (
    extraction_rate,
    memorization_verdict,
    overlap_report,
    sample_windows,
)
from gpt2cli.analysis.ngram_index import NgramIndex
from gpt2cli.errors import UserError

EOT = 999


def test_overlap_report_counts_hits_per_n():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 900, size=4_000)
    copied = train[100:164].tolist()  # 64 tokens verbatim
    fresh = rng.integers(0, 900, size=64).tolist()
    index = NgramIndex.build(train)
    rep = overlap_report(index, [copied, fresh])
    # copied: all 57 8-grams, 49 16-grams, 33 32-grams hit; fresh: none (random over 900 symbols)
    assert rep["per_n"]["8"] == {"share": 57 / 114, "samples_with_hit": 0.5, "ngrams": 114}
    assert rep["per_n"]["16"]["share"] == pytest.approx(49 / 98)
    assert rep["per_n"]["32"]["share"] == pytest.approx(33 / 66)
    assert rep["longest"] == {"per_sample": [64, 0], "max": 64, "mean": 32.0, "sample": 0, "start": 0}


def test_sample_windows_stay_inside_documents():
    docs = [np.arange(10, 10 + n) for n in (5, 40, 12, 3, 25)]
    stream = np.concatenate([np.concatenate((d, [EOT])) for d in docs])[:-1]
    starts = sample_windows(stream, k=1000, length=12, seed=1, eot_id=EOT)
    # valid windows: 40-12+1 + 12-12+1 + 25-12+1 = 29 + 1 + 14
    assert len(starts) == 44 and len(set(starts.tolist())) == 44
    for s in starts:
        assert EOT not in stream[s : s + 12] and s + 12 <= len(stream)
    again = sample_windows(stream, k=10, length=12, seed=1, eot_id=EOT)
    assert np.array_equal(again, sample_windows(stream, k=10, length=12, seed=1, eot_id=EOT))
    assert not np.array_equal(again, sample_windows(stream, k=10, length=12, seed=2, eot_id=EOT))
    with pytest.raises(UserError, match="--prompt-tokens"):
        sample_windows(stream, k=10, length=41, seed=1, eot_id=EOT)


def test_extraction_rate_with_a_recalling_and_a_blank_model():
    rng = np.random.default_rng(3)
    train = rng.integers(0, 500, size=5_000)
    starts = sample_windows(train, k=20, length=24, seed=0, eot_id=EOT)

    def recall(prompts, n):
        # A perfect memoriser: find the prompt in the training data, return what followed.
        out = []
        for p in prompts:
            for i in range(len(train) - len(p)):
                if train[i : i + len(p)].tolist() == p:
                    out.append(train[i + len(p) : i + len(p) + n].tolist())
                    break
        return out

    full = extraction_rate(train, starts, 8, 16, recall)
    assert full == {"windows": 20, "extracted": 20, "share": 1.0, "mean_prefix_match": 1.0}

    def half(prompts, n):  # right for the first 8 tokens, then wrong
        return [r[:8] + [EOT] * (n - 8) for r in recall(prompts, n)]

    part = extraction_rate(train, starts, 8, 16, half)
    assert part["share"] == 0.0 and part["mean_prefix_match"] == pytest.approx(0.5)

    def short(prompts, n):  # stops early (an EOT): not extracted
        return [r[:5] for r in recall(prompts, n)]

    assert extraction_rate(train, starts, 8, 16, short)["share"] == 0.0


def test_memorization_verdict():
    ex = lambda share: {"windows": 50, "extracted": int(50 * share), "share": share, "mean_prefix_match": share}  # noqa: E731
    assert memorization_verdict(ex(0.5), ex(0.02), None, None)[0] == "HIGH"
    assert memorization_verdict(ex(0.06), ex(0.02), None, None)[0] == "ELEVATED"
    verdict, line = memorization_verdict(ex(0.02), ex(0.02), None, None)
    assert verdict == "ok" and line == "memorization: ok — 2% of train windows extracted vs 2% of val"
