"""Per-head statistics and ablation (gpt2cli.analysis.heads) against naive references."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from gpt2cli.analysis.heads import (
    attention_pattern,
    block_inputs,
    head_ablation_probe,
    induction_scores,
    induction_sums,
    inspect_heads,
    losses_from_layer,
    output_norm_sums,
    pattern_sums,
    repeated_random_tokens,
    sequence_losses,
    token_windows,
)
from gpt2cli.errors import UserError
from gpt2cli.model import GPT, Probe
from gpt2cli.model.attention import KINDS
from tests.conftest import tiny_config, tiny_model


def random_causal_weights(B: int, H: int, T: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, H, T, T, generator=gen) * 2
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


# -- statistics vs naive loops -------------------------------------------------------
def test_pattern_statistics_match_naive_loops():
    B, H, T = 2, 3, 7
    w = random_causal_weights(B, H, T)
    sums, rows = pattern_sums(w)
    assert rows == B * (T - 1)
    for h in range(H):
        ent = dist = sink = prev = 0.0
        for b in range(B):
            for i in range(1, T):
                row = [float(w[b, h, i, j]) for j in range(i + 1)]
                ent += -sum(p * math.log(p) for p in row if p > 0) / math.log(i + 1)
                dist += sum(p * (i - j) for j, p in enumerate(row))
                sink += row[0]
                prev += row[i - 1]
        n = B * (T - 1)
        assert sums["entropy"][h] / rows == pytest.approx(ent / n, rel=1e-5)
        assert sums["distance"][h] / rows == pytest.approx(dist / n, rel=1e-5)
        assert sums["sink"][h] / rows == pytest.approx(sink / n, rel=1e-5)
        assert sums["previous_token"][h] / rows == pytest.approx(prev / n, rel=1e-5)


def test_uniform_attention_has_entropy_one():
    T = 9
    w = torch.ones(T, T).tril()
    w = (w / w.sum(-1, keepdim=True)).expand(1, 1, T, T)
    sums, rows = pattern_sums(w)
    assert float(sums["entropy"][0] / rows) == pytest.approx(1.0, abs=1e-6)
    # mean over i=1..T-1 of i/2 (uniform over 0..i) and of 1/(i+1)
    assert float(sums["distance"][0] / rows) == pytest.approx(np.mean([i / 2 for i in range(1, T)]))
    assert float(sums["sink"][0] / rows) == pytest.approx(
        np.mean([1 / (i + 1) for i in range(1, T)])
    )


def test_induction_sums_match_naive_loops():
    B, H, half = 2, 2, 5
    w = random_causal_weights(B, H, 2 * half, seed=1)
    s, n = induction_sums(w, half)
    assert n == B * half
    for h in range(H):
        ref = sum(float(w[b, h, i, i - half + 1]) for b in range(B) for i in range(half, 2 * half))
        assert float(s[h]) == pytest.approx(ref, rel=1e-6)


def test_output_norm_matches_naive_loops():
    B, H, T, D = 2, 3, 4, 5
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(B, H, T, D, generator=gen)
    w = torch.randn(7, H * D, generator=gen)  # c_proj.weight: (C_out, H*D)
    s, n = output_norm_sums(y, w)
    assert n == B * T
    for h in range(H):
        ref = 0.0
        for b in range(B):
            for t in range(T):
                written = [
                    sum(float(y[b, h, t, d]) * float(w[c, h * D + d]) for d in range(D))
                    for c in range(7)
                ]
                ref += math.sqrt(sum(x * x for x in written))
        assert float(s[h]) == pytest.approx(ref, rel=1e-5)


def test_repeated_random_tokens_repeat_and_are_seeded():
    a = repeated_random_tokens(3, 6, 64, seed=5)
    assert a.shape == (3, 12)
    assert torch.equal(a[:, :6], a[:, 6:])
    assert a.max() < 64
    assert torch.equal(a, repeated_random_tokens(3, 6, 64, seed=5))
    assert not torch.equal(a, repeated_random_tokens(3, 6, 64, seed=6))


# -- Done when 1: a hand-set model whose heads the scores must find -------------------
def hand_set_model(T: int = 32) -> GPT:
    """One layer, four heads of width 8, attention patterns fixed by hand.

    Token embeddings are zero, so the residual stream at position p is the
    position embedding wpe[p] = (cos θp, sin θp, -cos θp, -sin θp, 0, ...),
    θ = π/T. It has zero mean and constant norm, so ln_1 only scales it by
    g = 1/sqrt(2/C + eps). In each head's 2-d (cos, sin) plane:
    - head 0 (previous token): q_i = s·R(-θ)·g(cos θi, sin θi) = s·g(cos θ(i-1), sin θ(i-1)),
      k_j = g(cos θj, sin θj): the score s·g²·cos θ(i-1-j) peaks at j = i-1, and as
      θ(T-1) < π it falls off monotonically on either side;
    - head 1 (sink): q = s·(1, 0) from the c_attn bias, k_j as above: the score
      s·g·cos θj is largest at j = 0;
    - head 2 (self): q_i = s·g(cos θi, sin θi): peaks at j = i;
    - head 3: q = k = 0, uniform attention over the visible positions.
    Scales are set so that the nearest rival key trails by 12 nats, leaving the
    target ~0.99 of the mass. Values, c_proj and the MLP are zero.
    """
    torch.manual_seed(0)
    cfg = tiny_config(n_layer=1, n_head=4, n_embd=32, block_size=T, vocab_size=128)
    model = GPT(cfg).eval()
    C, D = cfg.n_embd, cfg.head_dim
    theta = math.pi / T
    g = 1.0 / math.sqrt(2.0 / C + 1e-5)
    gap = 1.0 - math.cos(
        theta
    )  # score gap between the target and its nearest rival, per unit scale
    s_pair = 12.0 * math.sqrt(D) / (gap * g * g)  # q and k both carry g
    s_bias = 12.0 * math.sqrt(D) / (gap * g)  # only k carries g
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        blk = model.transformer.h[0]
        blk.ln_1.weight.fill_(1.0)
        blk.ln_2.weight.fill_(1.0)
        model.transformer.ln_f.weight.fill_(1.0)
        pos = torch.arange(T, dtype=torch.float32) * theta
        model.transformer.wpe.weight[:, 0] = torch.cos(pos)
        model.transformer.wpe.weight[:, 1] = torch.sin(pos)
        model.transformer.wpe.weight[:, 2] = -torch.cos(pos)
        model.transformer.wpe.weight[:, 3] = -torch.sin(pos)
        W, bias = blk.attn.c_attn.weight, blk.attn.c_attn.bias  # rows: q (0..C), k (C..2C), v
        for h in (0, 1, 2):  # keys of heads 0-2: g(cos θj, sin θj) in the head's first two dims
            W[C + h * D + 0, 0] = 1.0
            W[C + h * D + 1, 1] = 1.0
        c, s = math.cos(theta), math.sin(theta)
        W[0 * D + 0, 0], W[0 * D + 0, 1] = s_pair * c, s_pair * s  # head 0: rotate back by θ
        W[0 * D + 1, 0], W[0 * D + 1, 1] = -s_pair * s, s_pair * c
        bias[1 * D + 0] = s_bias  # head 1: a constant query (1, 0)
        W[2 * D + 0, 0] = s_pair  # head 2: the query is its own key
        W[2 * D + 1, 1] = s_pair
    return model


def test_hand_set_heads_are_found():
    model = hand_set_model(T=32)
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 128, (4, 33), generator=gen)
    report = inspect_heads(model, windows, induction_sequences=2)
    prev, sink = report.previous_token[0], report.sink[0]
    assert prev[0] >= 0.9 and sink[1] >= 0.9
    # the others score low: uniform head 3 gets mean_i 1/(i+1) ~ 0.1, the rest less
    assert max(prev[1], prev[2], prev[3]) < 0.15
    assert max(sink[0], sink[2], sink[3]) < 0.15
    assert report.distance[0, 0] == pytest.approx(1.0, abs=0.05)  # one position back
    assert report.distance[0, 2] == pytest.approx(0.0, abs=0.05)  # itself
    assert report.entropy[0, 3] == pytest.approx(1.0, abs=1e-4)  # uniform
    assert report.entropy[0, 0] < 0.1


# -- Done when 2: ablation through the probe == zeroing c_proj's input by hand ----------
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_zero_ablation_equals_zeroed_c_proj_columns(kind):
    model = tiny_model(3, n_layer=2, n_head=4, n_embd=32, attention=kind)
    D = model.config.head_dim
    idx = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(idx)
        for layer in range(2):
            for head in range(4):
                ours = model(idx, probe=head_ablation_probe(model, layer, head))
                hand = copy.deepcopy(model)
                hand.transformer.h[layer].attn.c_proj.weight[:, head * D : (head + 1) * D] = 0.0
                ref = hand(idx)
                torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
                assert not torch.allclose(ours, base)  # the head did something


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_mean_ablation_equals_folding_the_mean_into_c_proj_bias(kind):
    """Replacing head h's output by a constant m adds W[:, h] @ m to c_proj's bias."""
    model = tiny_model(4, n_layer=2, n_head=4, n_embd=32, attention=kind)
    D = model.config.head_dim
    fill = torch.randn(2, 4, D, generator=torch.Generator().manual_seed(2))
    idx = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for layer, head in ((0, 1), (1, 3)):
            ours = model(idx, probe=head_ablation_probe(model, layer, head, fill))
            hand = copy.deepcopy(model)
            proj = hand.transformer.h[layer].attn.c_proj
            cols = slice(head * D, (head + 1) * D)
            proj.bias += proj.weight[:, cols] @ fill[layer, head]
            proj.weight[:, cols] = 0.0
            torch.testing.assert_close(ours, hand(idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_ablation_resumed_at_its_layer_is_bit_identical_to_the_full_pass(kind):
    """inspect heads reruns only the blocks from the ablated layer on: same bits as a full pass."""
    model = tiny_model(5, n_layer=3, n_head=4, n_embd=32, attention=kind).eval()
    fill = torch.randn(3, 4, model.config.head_dim, generator=torch.Generator().manual_seed(6))
    windows = torch.randint(0, 128, (3, 17), generator=torch.Generator().manual_seed(7))
    inputs = block_inputs(model, windows[:, :-1])
    assert torch.equal(losses_from_layer(model, inputs, 3, windows[:, 1:]), sequence_losses(model, windows))
    for layer in range(3):
        for head in (0, 3):
            for f in (None, fill):
                probe = head_ablation_probe(model, layer, head, f)
                full = sequence_losses(model, windows, probe)
                assert torch.equal(losses_from_layer(model, inputs, layer, windows[:, 1:], probe), full)


def test_report_losses_match_cross_entropy_of_hand_ablated_models():
    model = tiny_model(5, n_layer=2, n_head=2, n_embd=32)
    D = model.config.head_dim
    windows = torch.randint(0, 128, (6, 17), generator=torch.Generator().manual_seed(4))
    report = inspect_heads(model, windows, ablation_sequences=4, induction_sequences=2)
    abl = windows[[0, 2, 3, 5]]  # 4 of 6, evenly spaced
    with torch.no_grad():
        _, base = model(abl[:, :-1], abl[:, 1:])
        assert report.baseline_loss == pytest.approx(float(base), rel=1e-5)
        # the mean head output over all 6 windows, from the probe's captured outputs
        probe = Probe(capture_heads=True)
        model(windows[:, :-1], probe=probe)
        means = [y.mean(dim=(0, 2)) for y in probe.head_outputs]
        for layer in range(2):
            for head in range(2):
                cols = slice(head * D, (head + 1) * D)
                zeroed = copy.deepcopy(model)
                zeroed.transformer.h[layer].attn.c_proj.weight[:, cols] = 0.0
                _, loss = zeroed(abl[:, :-1], abl[:, 1:])
                assert report.zero_ablation_loss[layer, head] == pytest.approx(
                    float(loss), rel=1e-5
                )
                meaned = copy.deepcopy(model)
                proj = meaned.transformer.h[layer].attn.c_proj
                proj.bias += proj.weight[:, cols] @ means[layer][head]
                proj.weight[:, cols] = 0.0
                _, loss = meaned(abl[:, :-1], abl[:, 1:])
                assert report.mean_ablation_loss[layer, head] == pytest.approx(
                    float(loss), rel=1e-5
                )
    assert np.all(report.zero_ablation_se >= 0)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_attention_kind_is_inspected(kind):
    model = tiny_model(6, n_layer=2, n_head=2, n_embd=32, attention=kind)
    windows = torch.randint(0, 128, (3, 17), generator=torch.Generator().manual_seed(5))
    report = inspect_heads(model, windows, induction_sequences=2)
    assert report.attention == kind
    for key in ("entropy", "distance", "sink", "previous_token", "induction", "output_norm"):
        grid = report.grid(key)
        assert grid.shape == (2, 2) and np.all(np.isfinite(grid))
    assert np.all((report.sink >= 0) & (report.sink <= 1 + 1e-5))


def test_induction_scores_of_an_untrained_model_are_low():
    model = tiny_model(7, n_layer=2, n_head=2, n_embd=32, block_size=32)
    scores = induction_scores(model, n_seq=4, half=16, seed=0)
    assert scores.shape == (2, 2)
    # near-uniform attention: about mean over i of 1/(i+1) for i in 16..31
    assert np.all(scores < 0.1)


def test_attention_pattern_is_one_heads_causal_rows():
    model = hand_set_model(T=32)
    w = attention_pattern(model, list(range(10)), layer=0, head=0)
    assert w.shape == (10, 10)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(w, k=1) == 0)
    assert np.all(w[np.arange(1, 10), np.arange(0, 9)] > 0.9)


@pytest.mark.parametrize(
    "layer, head, ids, needle",
    [
        (1, 0, [1, 2], "--layer 1"),
        (0, 4, [1, 2], "--head 4"),
        (0, 0, [], "empty"),
        (0, 0, list(range(40)), "context"),
    ],
)
def test_attention_pattern_rejects_bad_input(layer, head, ids, needle):
    model = hand_set_model(T=32)
    with pytest.raises(UserError, match=needle):
        attention_pattern(model, ids, layer, head)


# -- input windows ---------------------------------------------------------------------
def test_token_windows_are_shifted_consecutive_slices():
    tokens = np.arange(100)
    w = token_windows(tokens, seq_len=10, n_tokens=35)
    assert w.shape == (3, 11)
    assert w[1].tolist() == list(range(10, 21))
    # asking for more than there is gives what there is; a short text gives one short window
    assert token_windows(tokens, 10, 10_000).shape == (9, 11)
    assert token_windows(np.arange(5), 10, 100).tolist() == [[0, 1, 2, 3, 4]]
    with pytest.raises(UserError, match="at least 3"):
        token_windows(np.arange(2), 10, 100)
