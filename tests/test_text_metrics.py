"""Known answers for the repetition and entropy metrics, and naive references."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gpt2cli.analysis.entropy import curve_summary, entropy_curve, entropy_from_logits
from gpt2cli.analysis.text_metrics import (
    Loop,
    distinct_n,
    generation_metrics,
    longest_loop,
    loop_share,
    mean_seq_rep_n,
    rep_l,
    repetition_metrics,
    seq_rep_n,
)

WAVE, TO, EACH, OTHER, THEY = 10, 11, 12, 13, 14


def test_wave_eight_times_is_a_loop():
    loop = longest_loop([WAVE] * 8)
    assert loop == Loop(start=0, period=1, repeats=8)
    assert loop.length == 8
    # under 8 tokens it is emphasis ("no, no, no, no"), not a degenerate loop
    assert longest_loop([WAVE] * 7) is None
    assert longest_loop([WAVE] * 7, min_tokens=1) == Loop(0, 1, 7)


def test_two_or_three_repeats_are_not_a_loop():
    assert longest_loop([WAVE, WAVE]) is None
    assert longest_loop([1, 2, 3, 1, 2, 3, 4]) is None  # a 3-token span twice only
    # real stories repeat a phrase three times for emphasis: "I want to watch TV!" x 3
    assert longest_loop([1, 2, 3, 4, 5, 6] * 3) is None
    assert longest_loop([1, 2, 3, 4, 5, 6] * 4) == Loop(0, 6, 4)
    assert longest_loop([1, 2, 3, 4, 5, 6] * 3, min_repeats=3) == Loop(0, 6, 3)


def test_seed_sentence_loop():
    # "They wave to each other each to wave each each to other …" has no clean loop,
    # but its degenerate tail "each to wave each to wave each to wave" has one.
    tokens = [THEY, WAVE, TO, EACH, OTHER, EACH, TO, WAVE, EACH, TO, WAVE, EACH, TO, WAVE, EACH, TO, WAVE, 99]
    loop = longest_loop(tokens)
    assert (loop.period, loop.repeats) == (3, 4)
    assert loop.unit(tokens) == [EACH, TO, WAVE]
    assert loop.start == 5


def test_loop_prefers_shortest_period_on_ties_and_counts_full_repeats():
    assert longest_loop([7] * 12) == Loop(0, 1, 12)
    # (a b c) x 4 then a b: four full repeats of "a b c", the trailing "a b" does not count
    loop = longest_loop([1, 2, 3] * 4 + [1, 2])
    assert (loop.period, loop.repeats, loop.length) == (3, 4, 12)
    # The longer of two loops wins, wherever it is.
    loop = longest_loop([5, 5, 5, 0, 1, 2, 1, 2, 1, 2, 1, 2, 9])
    assert (loop.start, loop.period, loop.repeats) == (4, 2, 4)


def test_loop_period_limit():
    unit = list(range(100, 133))  # 33 tokens
    assert longest_loop(unit * 4) is None
    assert longest_loop(unit * 4, max_period=33) == Loop(0, 33, 4)
    assert longest_loop(unit[:32] * 4) == Loop(0, 32, 4)


def naive_longest_loop(tokens, max_period=32, min_repeats=4, min_tokens=8):
    """Try every start and period; keep the most tokens covered, then shortest period, earliest start."""
    best = None
    for p in range(1, max_period + 1):
        for s in range(len(tokens)):
            r = 1
            while tokens[s + r * p : s + (r + 1) * p] == tokens[s : s + p] and s + (r + 1) * p <= len(tokens):
                r += 1
            if r >= min_repeats and r * p >= min_tokens and s + p <= len(tokens):
                key = (r * p, -p, -s)
                if best is None or key > best[0]:
                    best = (key, Loop(s, p, r))
    return None if best is None else best[1]


def test_loop_matches_naive_search_on_random_sequences():
    rng = random.Random(0)
    for trial in range(300):
        vocab = rng.choice([2, 3, 5])
        tokens = [rng.randrange(vocab) for _ in range(rng.randrange(0, 40))]
        if trial % 3 == 0 and tokens:  # plant a loop
            unit = tokens[: rng.randrange(1, 6)]
            tokens = tokens + unit * rng.randrange(3, 9) + tokens
        assert longest_loop(tokens, max_period=8) == naive_longest_loop(tokens, max_period=8), tokens
        # the looser definition (3 repeats, any length) against the same brute force
        loose = dict(max_period=8, min_repeats=3, min_tokens=1)
        assert longest_loop(tokens, **loose) == naive_longest_loop(tokens, **loose), tokens


def test_distinct_n_hand_computed():
    samples = [[1, 2, 1, 2], [1, 3]]
    # unigrams 1,2,1,2,1,3: 3 distinct of 6; bigrams (1,2),(2,1),(1,2),(1,3): 3 of 4
    assert distinct_n(samples, 1) == pytest.approx(3 / 6)
    assert distinct_n(samples, 2) == pytest.approx(3 / 4)
    # trigrams (1,2,1),(2,1,2): 2 of 2; 4-grams only (1,2,1,2): 1 of 1
    assert distinct_n(samples, 3) == 1.0
    assert distinct_n(samples, 4) == 1.0
    assert distinct_n([[1, 2]], 3) is None


def test_seq_rep_hand_computed():
    assert seq_rep_n([WAVE] * 8, 4) == pytest.approx(1 - 1 / 5)  # 5 identical 4-grams
    assert seq_rep_n(list(range(10)), 4) == 0.0
    # 1 2 3 4 1 2 3 4: 4-grams 1234 2341 3412 4123 1234 -> 4 unique of 5
    assert seq_rep_n([1, 2, 3, 4, 1, 2, 3, 4], 4) == pytest.approx(1 - 4 / 5)
    assert seq_rep_n([1, 2, 3], 4) is None
    assert mean_seq_rep_n([[WAVE] * 8, list(range(10)), [1, 2]], 4) == pytest.approx(0.4)


def test_rep_l_hand_computed():
    # positions: 1 2 1 3 1 ; the token at i=2 (1) was at 0 (distance 2); i=4 (1) at 2 (distance 2)
    assert rep_l([[1, 2, 1, 3, 1]], 16) == pytest.approx(2 / 5)
    assert rep_l([[1, 2, 1, 3, 1]], 1) == 0.0
    assert rep_l([[1, 2, 1, 3, 1]], 2) == pytest.approx(2 / 5)
    assert rep_l([[7, 7, 7], [1, 2]], 16) == pytest.approx(2 / 5)  # pooled over samples


def test_rep_l_matches_naive_definition():
    rng = random.Random(1)
    samples = [[rng.randrange(6) for _ in range(rng.randrange(1, 50))] for _ in range(20)]
    for w in (1, 3, 16):
        hits = sum(t[i] in t[max(0, i - w) : i] for t in samples for i in range(len(t)))
        assert rep_l(samples, w) == pytest.approx(hits / sum(map(len, samples)))


def test_loop_share_and_repetition_metrics():
    samples = [[WAVE] * 10, list(range(20)), [1, 2] * 4]
    assert loop_share(samples) == pytest.approx(2 / 3)
    rep = repetition_metrics(samples)
    assert rep["loop_share"] == pytest.approx(2 / 3)
    assert rep["longest_loop"] == {
        "sample": 0, "start": 0, "period": 1, "repeats": 10, "length": 10, "unit_tokens": [WAVE]
    }
    assert rep["distinct_1"] == pytest.approx(20 / 38)  # WAVE, 1 and 2 are all in range(20)


def test_entropy_of_known_distributions():
    V = 50
    uniform = torch.zeros(V)
    assert float(entropy_from_logits(uniform)) == pytest.approx(math.log(V), rel=1e-6)
    one_hot = torch.full((V,), -math.inf)
    one_hot[3] = 0.0
    assert float(entropy_from_logits(one_hot)) == 0.0
    # p = (0.25, 0.75): H = -(0.25 ln 0.25 + 0.75 ln 0.75)
    two = torch.log(torch.tensor([0.25, 0.75]))
    assert float(entropy_from_logits(two)) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    # top-k style masking: the 4 kept logits are equal -> ln 4
    masked = torch.tensor([1.0, 1.0, -math.inf, 1.0, 1.0, -math.inf])
    assert float(entropy_from_logits(masked)) == pytest.approx(math.log(4))
    batch = torch.stack([uniform, one_hot])
    assert entropy_from_logits(batch).tolist() == pytest.approx([math.log(V), 0.0])


def test_entropy_curve_and_summary():
    curve = entropy_curve([[4.0, 3.0, 2.0, 1.0], [2.0, 1.0]])
    assert curve == [3.0, 2.0, 2.0, 1.0]
    s = curve_summary([4.0, 4.0, 2.0, 2.0, 1.0, 1.0, 0.5, 0.5])
    assert s["first_quarter"] == 4.0 and s["last_quarter"] == 0.5
    assert s["mean"] == pytest.approx(15 / 8)
    assert s["last_over_first"] == pytest.approx(0.125)
    assert curve_summary([])["mean"] is None


def test_generation_metrics_flat_floats():
    out = generation_metrics([[WAVE] * 8, list(range(8))], [[2.0] * 8, [1.0] * 8])
    assert out["seq_rep_4"] == pytest.approx((0.8 + 0.0) / 2)
    assert out["loop_share"] == 0.5
    assert out["longest_loop_length"] == 8.0
    assert out["mean_entropy"] == pytest.approx(1.5)
    assert out["entropy_first_quarter"] == out["entropy_last_quarter"] == pytest.approx(1.5)
    for key in ("distinct_1", "distinct_2", "distinct_3", "distinct_4", "rep_16", "rep_32"):
        assert isinstance(out[key], float)
    assert "mean_entropy" not in generation_metrics([[1, 2, 3]])
