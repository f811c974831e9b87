"""Gini, top shares, Lorenz curve and idle heads against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2cli.analysis.inequality import gini, lorenz_curve, share_verdict, summarize, top_share


def gini_brute_force(x) -> float:
    """The definition: mean absolute difference over all ordered pairs / (2 * mean)."""
    x = np.clip(np.asarray(x, dtype=float), 0, None)
    n = len(x)
    return sum(abs(a - b) for a in x for b in x) / (2 * n * n * x.mean())


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1, 2, 3, 4], 0.25),  # sum|xi-xj| = 20 over ordered pairs, 2 n^2 mean = 80
        ([0, 0, 0, 5], 0.75),  # one head holds everything: (n - 1) / n
        ([3, 3, 3, 3], 0.0),
        ([-1, 0, 1, 1], 0.5),  # negatives count as zero: [0, 0, 1, 1]
        ([7], 0.0),
    ],
)
def test_gini_hand_computed(values, expected):
    assert gini(np.array(values)) == pytest.approx(expected, abs=1e-12)


def test_gini_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    for n in (2, 5, 16, 48):
        x = rng.exponential(size=n) * (rng.random(n) < 0.7)
        assert gini(x) == pytest.approx(gini_brute_force(x), rel=1e-10)


@pytest.mark.parametrize(
    "values, fraction, expected",
    [
        ([1, 2, 3, 4], 0.25, 0.4),  # the top head (1 of 4) holds 4 / 10
        ([1, 2, 3, 4], 0.10, 0.16),  # 0.4 of the top head: 0.4 * 4 / 10
        ([1, 2, 3, 4], 0.50, 0.7),  # (4 + 3) / 10
        ([0, 0, 0, 5], 0.25, 1.0),
        ([0, 0, 0, 5], 0.10, 0.4),
        ([1] * 10, 0.10, 0.1),  # equal split: share == fraction
        ([0] * 9 + [2], 0.10, 1.0),  # 10 heads: the top 10% is exactly the one that holds all
        ([-1, 0, 1, 1], 0.25, 0.5),
    ],
)
def test_top_share_hand_computed(values, fraction, expected):
    assert top_share(np.array(values), fraction) == pytest.approx(expected, abs=1e-12)


def test_lorenz_curve_points():
    x, y = lorenz_curve(np.array([4, 1, 3, 2]))
    np.testing.assert_allclose(x, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(y, [0, 0.1, 0.3, 0.6, 1])
    x, y = lorenz_curve(np.zeros(3))
    np.testing.assert_allclose(y, x)  # nothing to share: the diagonal


def test_summary_idle_harmful_and_verdicts():
    labels = ["L0H0", "L0H1", "L1H0", "L1H1"]
    importance = np.array([0.004, -0.0018, 0.5, -0.03])
    baseline = 2.0
    summary = summarize(importance, importance / baseline, labels)
    # |relative| < 0.1%: 0.002 and 0.0009 -> L0H1 only; L0H0 changes loss by 0.2%
    assert summary.idle == ["L0H1"]
    assert summary.harmful == ["L1H1"]
    assert summary.gini == pytest.approx(gini_brute_force([0.004, 0, 0.5, 0]))
    assert summary.top_shares[0.25] == pytest.approx(0.5 / 0.504)
    text = "\n".join(summary.verdicts)
    assert "Gini 0.75: a few heads carry most of the importance" in text
    assert "top 25% of heads (1 of 4) carry 99% of the importance" in text
    assert "1 of 4 heads are idle" in text and "L0H1" in text
    assert "1 head lowers the loss" in text and "L1H1" in text
    doc = summary.to_json()
    assert doc["top_shares"] == {
        "top_10pct": pytest.approx(0.4 * 0.5 / 0.504),
        "top_25pct": pytest.approx(0.5 / 0.504),
    }
    assert len(doc["lorenz"]["x"]) == 5


def test_summary_of_even_and_of_nil_importance():
    labels = [f"L0H{i}" for i in range(8)]
    even = summarize(np.full(8, 0.1), np.full(8, 0.05), labels)
    assert even.gini == 0.0 and even.idle == []
    assert "spread evenly" in even.verdicts[0]
    assert any("no idle heads" in v for v in even.verdicts)
    nil = summarize(np.zeros(8), np.zeros(8), labels)
    assert nil.idle == labels
    assert "nil everywhere" in nil.verdicts[0]
    # Every head idle but the changes not all zero: a Gini over them is noise, and no verdict reads it as structure.
    rel = np.array([4e-4, 1e-5, 2e-5, 0.0, 3e-5, 1e-5, 0.0, 5e-5])
    noise = summarize(rel * 6.0, rel, labels)  # importance = loss change in nats, baseline 6 nats
    assert noise.idle == labels and noise.gini > 0.5
    assert noise.verdicts[0] == f"Gini {noise.gini:.2f} over changes this small (every head idle) measures noise, not which heads work"
    assert not any("carry" in v for v in noise.verdicts), noise.verdicts


@pytest.mark.parametrize(
    "fraction, share, n, expected",
    [
        (
            0.10,
            0.5,
            16,
            "top 10% of heads (1.6 of 16) carry 50% of the importance (5.0x their equal share: concentrated)",
        ),
        (
            0.25,
            0.45,
            8,
            "top 25% of heads (2 of 8) carry 45% of the importance (1.8x their equal share: somewhat concentrated)",
        ),
        (
            0.25,
            0.26,
            4,
            "top 25% of heads (1 of 4) carry 26% of the importance (1.0x their equal share: close to an equal split)",
        ),
    ],
)
def test_share_verdict_wording(fraction, share, n, expected):
    assert share_verdict(fraction, share, n) == expected
