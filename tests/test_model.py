"""Model mechanics: causality, parameter counts, chunked loss vs the plain one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2cli.config import load_run_config
from gpt2cli.model.summary import count_params
from tests.conftest import run_cli, tiny_model


def test_changing_token_t_leaves_earlier_logits_exactly_unchanged():
    model = tiny_model(0)
    idx = torch.randint(0, 128, (2, 32))
    t = 17
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 128
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :t], b[:, :t])
    assert not torch.equal(a[:, t:], b[:, t:])


@pytest.mark.parametrize(
    "preset,total",
    [("tiny", None), ("small", 124_439_808), ("medium", 354_823_168), ("large", 774_030_080)],
)
def test_parameter_counts_match_gpt2(preset, total):
    cfg = load_run_config(preset).model
    n, non_emb = count_params(cfg)
    if total is not None:
        assert n == total
    C = cfg.n_embd
    # Independent count from the architecture: per block 12*C^2 + 13*C, plus embeddings and ln_f.
    expected = cfg.n_layer * (12 * C * C + 13 * C) + cfg.vocab_size * C + cfg.block_size * C + 2 * C
    assert n == expected
    assert non_emb == n - cfg.vocab_size * C - cfg.block_size * C


def test_inspect_model_preset_small_reports_gpt2_small_count():
    res = run_cli("inspect", "model", "--preset", "small", "--json")
    assert res.code == 0, res.err
    assert '"parameters": 124439808' in res.out


def test_chunked_loss_equals_plain_cross_entropy_and_gradients():
    model = tiny_model(1, vocab_size=100)  # padded to 128 rows inside
    assert model.transformer.wte.weight.shape[0] == 128
    idx = torch.randint(0, 100, (3, 32))
    tgt = torch.randint(0, 100, (3, 32))
    tgt[0, :5] = -1  # ignored positions
    logits = model.logits_from_hidden(model.hidden(idx))
    plain = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-1)
    plain.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    chunked = model.loss(idx, tgt, chunk_rows=7)
    chunked.backward()
    assert abs(chunked.item() - plain.item()) <= 1e-5
    for n, p in model.named_parameters():
        assert (p.grad - ref[n]).abs().max().item() <= 1e-5, n


def test_padding_rows_never_reach_logits():
    model = tiny_model(2, vocab_size=100)
    with torch.no_grad():
        model.transformer.wte.weight[100:] = 1e3
        logits = model(torch.randint(0, 100, (1, 8)))
    assert logits.shape[-1] == 100 and logits.abs().max() < 1e2
