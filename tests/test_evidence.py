"""Intervals and the verdict rule against published values and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpt2cli.analysis.entropy import entropy_evidence, entropy_verdict
from gpt2cli.analysis.evidence import (
    NOT_ENOUGH,
    bootstrap_ratio,
    graded_verdict,
    rate_difference_interval,
    wilson_interval,
)
from gpt2cli.analysis.loss_eval import document_losses, gap_evidence, mean_loss
from gpt2cli.analysis.text_metrics import repetition_evidence, repetition_verdict
from tests.conftest import tiny_model


def test_wilson_interval_known_values():
    # Newcombe 1998, Table I: 81/263 -> 0.2553..0.3662; 15/148 -> 0.0624..0.1605; 0/10 -> 0..0.2775
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_newcombe_difference_known_values():
    # Newcombe 1998, Table II, method 10: 56/70 - 48/80 = 0.2000, 0.0524..0.3339;
    # 9/10 - 3/10 = 0.6, 0.1705..0.8090
    assert rate_difference_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert rate_difference_interval(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=1e-4)


def test_bootstrap_ratio_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    sums, counts = rng.random(30) * 10, rng.integers(1, 20, 30).astype(float)
    draws = bootstrap_ratio(sums, counts, resamples=50, seed=3)
    idx_rng = np.random.default_rng(3)
    for d in draws:
        idx = idx_rng.integers(0, 30, size=30)
        assert d == pytest.approx(sums[idx].sum() / counts[idx].sum())


def test_graded_verdict_rule():
    levels = [("HIGH", 0.25), ("ELEVATED", 0.05)]
    assert graded_verdict(0.5, 0.3, levels) == "HIGH"
    assert graded_verdict(0.5, 0.1, levels) == "ELEVATED"
    assert graded_verdict(0.5, 0.0, levels) == NOT_ENOUGH  # looks bad, chance could give it
    assert graded_verdict(0.04, -0.1, levels) == "ok"
    assert graded_verdict(0.5, None, levels) == NOT_ENOUGH  # no interval: never fires
    assert graded_verdict(None, None, levels) == NOT_ENOUGH


def test_document_losses_sum_to_the_mean_loss_and_split_by_document():
    torch.manual_seed(0)
    model = tiny_model(vocab_size=64, block_size=16).eval()
    rng = np.random.default_rng(0)
    eot = 63
    tokens = rng.integers(0, 63, size=400)
    tokens[[50, 120, 121, 300]] = eot  # an empty document between 120 and 121
    sums, counts = document_losses(model, tokens, 399, eot, batch_size=3, seed=1)
    assert counts.sum() == 399
    assert sums.sum() / counts.sum() == pytest.approx(mean_loss(model, tokens, 399, 3, 1), rel=1e-5)
    # whole split: targets 1..399, documents end at the EOTs (inclusive)
    assert counts.tolist() == [50, 70, 1, 179, 99]
    # brute force per document: the loss of each target from its full left context within one window
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens[:16][None]))[0]
    first = torch.nn.functional.cross_entropy(logits[:15], torch.from_numpy(tokens[1:16]), reduction="sum")
    assert float(first) <= sums[0] + 1e-9  # the first document holds these 15 targets and 35 more


def test_gap_interval_is_wider_with_fewer_documents():
    rng = np.random.default_rng(0)
    big = (rng.normal(300, 30, 500), np.full(500, 100.0))
    small = (big[0][:20], big[1][:20])
    train = (rng.normal(290, 30, 500), np.full(500, 100.0))
    wide, narrow = gap_evidence(small, train)["gap_interval"], gap_evidence(big, train)["gap_interval"]
    assert wide[1] - wide[0] > 3 * (narrow[1] - narrow[0])
    assert narrow[0] < 0.1 < narrow[1]  # the true gap, 0.1 nats per token


def test_repetition_verdict_needs_evidence():
    real = [list(range(i, i + 60)) for i in range(200)]  # no repeats at all
    looping = [[7] * 60] * 32
    v, line = repetition_verdict(repetition_evidence(looping, real))
    assert v == "HIGH" and line.startswith("repetition: HIGH — 32/32 samples loop (100%, 95% 89%–100%)")
    # 2 of 20 looping: 10%, but the interval of the rise over real text reaches below 5%
    two_of_twenty = [[7] * 60] * 2 + real[:18]
    assert repetition_verdict(repetition_evidence(two_of_twenty, real))[0] == NOT_ENOUGH
    # while 1 of 3 against 0 of 200 real windows is already beyond chance (Fisher's p = 3/203)
    assert repetition_verdict(repetition_evidence([[7] * 60] + real[:2], real))[0] == "ELEVATED"
    assert repetition_verdict(repetition_evidence(real[:32], real))[0] == "ok"


def test_entropy_verdict_needs_evidence():
    flat = [[3.0] * 40 for _ in range(32)]
    collapsing = [[3.0] * 10 + [0.1] * 30 for _ in range(32)]
    ev = entropy_evidence(collapsing, flat)
    assert ev["last_over_first"] == pytest.approx(0.1 / 3.0)
    assert entropy_verdict({"first_quarter": 3.0, "last_quarter": 0.1}, {"last_quarter": 3.0}, ev)[0] == "COLLAPSE"
    # two samples, one collapsing: the ratio is below 0.5 but could be the luck of the draw
    mixed = [collapsing[0], [3.0] * 40, [3.0] * 10 + [0.5] * 30]
    ev = entropy_evidence(mixed, flat)
    summary = {"first_quarter": 3.0, "last_quarter": float(np.mean([0.1, 3.0, 0.5]))}
    assert ev["last_over_first"] < 0.5 < ev["last_over_first_interval"][1]
    assert entropy_verdict(summary, {"last_quarter": 3.0}, ev)[0] == NOT_ENOUGH
    ev = entropy_evidence(flat, flat)
    assert entropy_verdict({"first_quarter": 3.0, "last_quarter": 3.0}, {"last_quarter": 3.0}, ev)[0] == "ok"
    assert math.isclose(ev["last_over_reference"], 1.0)
    assert entropy_verdict({"first_quarter": 3.0, "last_quarter": 3.0}, None, ev)[1].endswith("over 32 samples")
    one = entropy_evidence(flat[:1], flat)
    assert entropy_verdict({"first_quarter": 3.0, "last_quarter": 3.0}, None, one)[1].endswith("over 1 sample")


def test_entropy_against_real_text_shorter_than_the_samples():
    """Real continuations that end before the samples do: the ratio compares the positions both reach."""
    low, real = [[1.0] * 40 for _ in range(32)], [[3.0] * 20 for _ in range(12)]
    ev = entropy_evidence(low, real)
    assert ev["reference_positions"] == [15, 20]  # the last quarter of the 20 positions real text has
    assert ev["last_over_reference"] == pytest.approx(1 / 3)
    assert ev["last_over_reference_interval"] == pytest.approx([1 / 3, 1 / 3])
    verdict, line = entropy_verdict({"first_quarter": 1.0, "last_quarter": 1.0}, {"last_quarter": 3.0}, ev)
    assert verdict == "COLLAPSE"
    assert "0.33 of real text's at positions 15–19 (95% [0.33, 0.33])" in line and "[n/a]" not in line
    # as long as the samples: the same last quarter for both, said as before
    ev = entropy_evidence(low, [[3.0] * 40 for _ in range(12)])
    assert ev["reference_positions"] == [30, 40]
    line = entropy_verdict({"first_quarter": 1.0, "last_quarter": 1.0}, {"last_quarter": 3.0}, ev)[1]
    assert "0.33 of real text's (95% [0.33, 0.33])" in line
