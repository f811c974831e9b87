"""Sampling controls on crafted logits: which tokens keep probability mass, and how much.

References: hand-computed distributions, Hugging Face's logits processors
(RepetitionPenalty, Temperature, TopK, TopP), and for the fast `Sampler`
the empirical frequencies of many draws.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gpt2cli.errors import UserError
from gpt2cli.sampling import Sampler, apply_repetition_penalty, sampling_distribution

pytestmark = pytest.mark.usefixtures("one_thread")


def row(*values: float) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32)


def probs_of(*p: float) -> torch.Tensor:
    """Logits whose softmax is exactly the given (normalised) probabilities."""
    return torch.log(row(*p))


def test_temperature_sharpens_and_flattens():
    logits = row(2.0, 1.0, 0.0, -1.0)
    for t in (0.5, 1.0, 2.0):
        got = sampling_distribution(logits, temperature=t)[0]
        z = [math.exp(v / t) for v in (2.0, 1.0, 0.0, -1.0)]
        expected = torch.tensor([v / sum(z) for v in z])
        torch.testing.assert_close(got, expected)
    # Lower temperature moves mass to the top token.
    assert sampling_distribution(logits, 0.5)[0, 0] > sampling_distribution(logits, 2.0)[0, 0]


def test_temperature_zero_is_greedy_one_hot():
    got = sampling_distribution(row(0.1, 3.0, 2.9, -5.0), temperature=0.0, top_k=3, top_p=0.1)
    assert got.tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_top_k_keeps_k_best_renormalised():
    logits = row(1.0, 5.0, 3.0, 4.0, 2.0)
    got = sampling_distribution(logits, top_k=2)[0]
    e = math.e
    expected = torch.tensor([0.0, e / (e + 1), 0.0, 1 / (e + 1), 0.0])  # exp(5), exp(4) renormalised
    torch.testing.assert_close(got, expected)
    # k at or beyond the vocabulary keeps everything.
    torch.testing.assert_close(sampling_distribution(logits, top_k=99), torch.softmax(logits, -1))


@pytest.mark.parametrize(
    "top_p, kept",
    [
        (0.4, [1.0, 0.0, 0.0, 0.0]),  # the first token alone reaches 0.4
        (0.75, [0.625, 0.375, 0.0, 0.0]),  # 0.5 + 0.3 >= 0.75
        (0.85, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]),
        (1.0, [0.5, 0.3, 0.15, 0.05]),
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(top_p, kept):
    # Order shuffled so the sort is exercised: probabilities 0.3, 0.05, 0.5, 0.15.
    logits = probs_of(0.3, 0.05, 0.5, 0.15)
    got = sampling_distribution(logits, top_p=top_p)[0]
    expected = torch.tensor([kept[1], kept[3], kept[0], kept[2]])
    torch.testing.assert_close(got, expected)


def test_top_p_measures_mass_after_top_k():
    # Top-2 of (0.4, 0.35, 0.25) renormalises to (0.533, 0.467): p=0.5 keeps only the first.
    logits = probs_of(0.4, 0.35, 0.25)
    got = sampling_distribution(logits, top_k=2, top_p=0.5)[0]
    assert got.tolist() == [1.0, 0.0, 0.0]
    # Without top-k the first token's 0.4 < 0.5, so two stay.
    got = sampling_distribution(logits, top_p=0.5)[0]
    torch.testing.assert_close(got, torch.tensor([0.4 / 0.75, 0.35 / 0.75, 0.0]))


def test_repetition_penalty_ctrl_rule():
    logits = row(2.0, -1.0, 0.5, 3.0)
    present = torch.tensor([[True, True, False, False]])
    got = apply_repetition_penalty(logits, present, 2.0)
    assert got.tolist() == [[1.0, -2.0, 0.5, 3.0]]  # positive halved, negative doubled, absent untouched
    probs = sampling_distribution(logits, repetition_penalty=2.0, present=present)
    torch.testing.assert_close(probs, torch.softmax(got, -1))
    # A penalty below 1 rewards repeats instead.
    assert apply_repetition_penalty(logits, present, 0.5).tolist() == [[4.0, -0.5, 0.5, 3.0]]


def test_penalty_applies_before_top_k():
    # Token 0 leads, but it was seen: divided by 4 it drops below token 2 and out of the top-1.
    logits = row(4.0, 0.0, 2.0)
    present = torch.tensor([[True, False, False]])
    got = sampling_distribution(logits, top_k=1, repetition_penalty=4.0, present=present)
    assert got.tolist() == [[0.0, 0.0, 1.0]]


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.7),
        dict(top_k=5),
        dict(top_p=0.8),
        dict(top_k=10, top_p=0.6, temperature=1.3),
        dict(repetition_penalty=1.7, top_k=20),
    ],
    ids=["temperature", "top_k", "top_p", "all_three", "penalty"],
)
def test_distribution_matches_hugging_face_processors(settings):
    torch.manual_seed(0)
    logits = torch.randn(3, 40) * 2
    seen = torch.randint(0, 40, (3, 12))
    present = torch.zeros(3, 40, dtype=torch.bool).scatter_(1, seen, True)
    ours = sampling_distribution(logits, present=present, **settings)
    # transformers' order in generate(): processors (penalty) then warpers (temperature, top-k, top-p).
    hf = logits.clone()
    if settings.get("repetition_penalty", 1.0) != 1.0:
        hf = RepetitionPenaltyLogitsProcessor(settings["repetition_penalty"])(seen, hf)
    if "temperature" in settings:
        hf = TemperatureLogitsWarper(settings["temperature"])(seen, hf)
    if "top_k" in settings:
        hf = TopKLogitsWarper(settings["top_k"])(seen, hf)
    if "top_p" in settings:
        hf = TopPLogitsWarper(settings["top_p"])(seen, hf)
    torch.testing.assert_close(ours, torch.softmax(hf, -1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(temperature=0.5),
        dict(top_k=4),
        dict(top_p=0.7),
        dict(top_k=6, top_p=0.8),
        dict(repetition_penalty=3.0, top_k=8),
    ],
    ids=["plain", "temperature", "top_k", "top_p", "top_k_top_p", "penalty"],
)
def test_sampler_draws_follow_the_distribution(settings):
    """Many draws from one row: frequencies match `sampling_distribution`, and no
    token without mass is ever drawn."""
    torch.manual_seed(1)
    V, n = 24, 40_000
    logits = (torch.randn(1, V) * 1.5).expand(n, V)
    present = torch.zeros(n, V, dtype=torch.bool)
    present[:, :5] = True
    expected = sampling_distribution(logits[:1], present=present[:1], **settings)[0]
    sampler = Sampler(V, **settings)
    u = torch.rand(n, dtype=torch.float32).double()
    token, _, _ = sampler(logits, present, u)
    freq = torch.bincount(token, minlength=V).double() / n
    assert (freq[expected == 0] == 0).all()
    # 4 standard deviations of a frequency estimate at p=0.5 over n draws.
    assert (freq - expected.double()).abs().max().item() < 4 * math.sqrt(0.25 / n)


def test_sampler_extreme_uniforms_stay_on_tokens_with_mass():
    logits = probs_of(0.0001, 0.5, 0.0001, 0.4998)
    for settings in (dict(), dict(top_k=2), dict(top_p=0.5)):
        sampler = Sampler(4, **settings)
        u = torch.tensor([0.0, 1.0 - 2.0**-24], dtype=torch.float64)
        token, _, _ = sampler(logits.expand(2, 4), None, u)
        kept = sampling_distribution(logits, **settings)[0]
        assert all(kept[t] > 0 for t in token.tolist())


GPT2_VOCAB = 50257  # ids 0..50256, the last one <|endoftext|>


@pytest.mark.parametrize(
    "settings, expected",
    [
        (dict(), {50256: 0.5, 50255: 0.3, 50200: 0.1}),  # and 0.1 spread over the other ids
        (dict(top_k=2), {50256: 0.625, 50255: 0.375}),
        (dict(top_p=0.85), {50256: 5 / 9, 50255: 3 / 9, 50200: 1 / 9}),
        (dict(top_k=3, top_p=0.6), {50256: 0.625, 50255: 0.375}),
    ],
    ids=["plain", "top_k", "top_p", "top_k_top_p"],
)
def test_sampling_from_the_whole_gpt2_vocabulary(settings, expected):
    """At GPT-2's real width the mass at the very end of the id range is drawn where it
    belongs. Uniforms (i + 0.5) / n stratify [0, 1), so each token's share of the n
    draws is its probability to within 1/n."""
    V, n = GPT2_VOCAB, 100
    p = torch.full((V,), 0.1 / (V - 3), dtype=torch.float64)
    p[[50256, 50255, 50200]] = torch.tensor([0.5, 0.3, 0.1], dtype=torch.float64)
    logits = p.log().float().unsqueeze(0)
    reference = sampling_distribution(logits, **settings)[0]
    for token_id, share in expected.items():
        assert reference[token_id].item() == pytest.approx(share, rel=1e-5)
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    token, logprob, _ = Sampler(V, **settings)(logits.expand(n, V), None, u)
    counts = torch.bincount(token, minlength=V)
    for token_id, share in expected.items():
        assert abs(counts[token_id].item() / n - share) <= 1 / n
    if settings:
        assert set(token.tolist()) <= set(expected)  # truncation left nothing else
    else:
        assert abs((n - counts[list(expected)].sum().item()) / n - 0.1) <= 1 / n
    # Log-probabilities of the untruncated distribution, and ids exact through the float32 row
    # that generation.py reads back in one transfer.
    assert logprob[token == 50256].tolist() == pytest.approx([math.log(0.5)] * int(counts[50256]), abs=1e-5)
    assert torch.stack((token.float(), logprob)).tolist()[0] == token.tolist()


def test_whole_gpt2_vocabulary_greedy_penalty_and_extreme_draws():
    V = GPT2_VOCAB
    p = torch.full((V,), 0.1 / (V - 3), dtype=torch.float64)
    p[[50256, 50255, 50200]] = torch.tensor([0.5, 0.3, 0.1], dtype=torch.float64)
    logits = p.log().float().unsqueeze(0)
    token, logprob, _ = Sampler(V, temperature=0.0)(logits)
    assert token.tolist() == [50256] and logprob.item() == pytest.approx(math.log(0.5), abs=1e-5)
    assert sampling_distribution(logits, temperature=0.0)[0].nonzero().flatten().tolist() == [50256]
    # The penalty's mask reaches the last id: log 0.5 (< 0) x 2 leaves it 0.25 against 0.3.
    present = torch.zeros(1, V, dtype=torch.bool)
    present[0, 50256] = True
    token, _, _ = Sampler(V, temperature=0.0, repetition_penalty=2.0)(logits, present)
    assert token.tolist() == [50255]
    # Untruncated, the inverse CDF runs in id order: the largest uniform lands on the last id,
    # the smallest on the first.
    u = torch.tensor([0.0, 1.0 - 2.0**-24], dtype=torch.float64)
    token, _, _ = Sampler(V)(logits.expand(2, V), None, u)
    assert token.tolist() == [0, 50256]


def test_logprob_and_entropy_are_of_the_processed_untruncated_distribution():
    logits = row(2.0, 1.0, 0.5, -1.0)
    present = torch.tensor([[False, True, False, False]])
    for settings in (dict(temperature=0.0), dict(temperature=0.5, top_k=1), dict(top_p=0.3, repetition_penalty=2.0)):
        sampler = Sampler(4, **settings)
        token, logprob, entropy = sampler(logits, present, torch.tensor([0.3], dtype=torch.float64))
        # Naive reference: penalty, then temperature (0 counts as 1), then a plain softmax.
        x = [2.0, 1.0, 0.5, -1.0]
        r = settings.get("repetition_penalty", 1.0)
        x[1] = x[1] / r if x[1] > 0 else x[1] * r
        t = settings.get("temperature", 1.0) or 1.0
        z = [math.exp(v / t) for v in x]
        p = [v / sum(z) for v in z]
        assert token.item() == 0  # every setting here keeps only the top token
        assert logprob.item() == pytest.approx(math.log(p[0]), abs=1e-5)
        assert entropy.item() == pytest.approx(-sum(q * math.log(q) for q in p), abs=1e-5)


@pytest.mark.parametrize(
    "settings, flag",
    [
        (dict(temperature=-0.1), "--temperature"),
        (dict(temperature=float("nan")), "--temperature"),
        (dict(top_k=0), "--top-k"),
        (dict(top_p=0.0), "--top-p"),
        (dict(top_p=1.5), "--top-p"),
        (dict(repetition_penalty=0.0), "--repetition-penalty"),
    ],
)
def test_bad_values_name_their_flag(settings, flag):
    with pytest.raises(UserError, match=flag):
        Sampler(10, **settings)
