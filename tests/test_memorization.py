"""Overlap reports, window sampling and the extraction test, on crafted data."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2cli.analysis.memorization import (
    extraction_rate,
    memorization_evidence,
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
    def ex(extracted, windows=50):
        return {"windows": windows, "extracted": extracted, "share": extracted / windows,
                "mean_prefix_match": extracted / windows}

    def verdict(train, val, **kw):
        return memorization_verdict(memorization_evidence(train, val, **kw))

    assert verdict(ex(25), ex(1))[0] == "HIGH"  # 50% vs 2%: rise 95% interval ~[+0.32, +0.61]
    # 6% vs 2% of 50 windows each: could be chance
    assert verdict(ex(3), ex(1))[0] == "not enough evidence"
    # 12% vs 2% of 200 windows each: beyond chance, but not surely by 10 points
    assert verdict(ex(24, 200), ex(4, 200))[0] == "ELEVATED"
    v, line = verdict(ex(1), ex(1))
    assert v == "ok" and line.startswith("memorization: ok — 1/50 train windows extracted (2%) vs 1/50 val (2%;")
    # overlap: every sampled 32-gram in training while real text shares none
    hits = (np.full(20, 30.0), np.full(20, 30.0))
    none = (np.zeros(20), np.full(20, 30.0))
    v, line = verdict(ex(1), ex(1), overlap=hits, overlap_reference=none, n=32)
    assert v == "HIGH" and "100% of sampled 32-grams are in the training data" in line
