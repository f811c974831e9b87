"""Our GPT-2 against Hugging Face's GPT2LMHeadModel, the independent reference."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2cli.checkpoint import load_checkpoint
from gpt2cli.convert import from_hf
from tests.conftest import run_cli

SHAPES = [
    dict(n_layer=2, n_head=4, n_embd=64, n_positions=48, vocab_size=300),
    dict(n_layer=3, n_head=12, n_embd=96, n_positions=40, vocab_size=50257),
]


def hf_model(seed: int, **shape) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF zero-inits biases and LN; randomise so every weight is tested
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("shape", SHAPES, ids=["4heads", "12heads"])
def test_logits_match_hf_after_convert(tmp_path, shape):
    hf = hf_model(0, **shape)
    hf.save_pretrained(tmp_path / "hf")
    res = run_cli("convert", "from-hf", tmp_path / "hf", tmp_path / "ours.safetensors")
    assert res.code == 0, res.err
    ours = load_checkpoint(tmp_path / "ours.safetensors")
    idx = torch.randint(0, shape["vocab_size"], (2, shape["n_positions"]))
    with torch.no_grad():
        expected = hf(idx).logits
        got = ours(idx)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5


def test_to_hf_round_trip_and_hf_loads_export(tmp_path):
    hf = hf_model(1, **SHAPES[0])
    hf.save_pretrained(tmp_path / "hf")
    first = from_hf(tmp_path / "hf", tmp_path / "a.safetensors")
    res = run_cli("convert", "to-hf", tmp_path / "a.safetensors", tmp_path / "export")
    assert res.code == 0, res.err
    res = run_cli("convert", "from-hf", tmp_path / "export", tmp_path / "b.safetensors")
    assert res.code == 0, res.err
    second = load_checkpoint(tmp_path / "b.safetensors")
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    idx = torch.randint(0, 300, (1, 48))
    with torch.no_grad():
        assert (reloaded(idx).logits - hf(idx).logits).abs().max().item() <= 1e-5
        assert (reloaded(idx).logits - second(idx)).abs().max().item() <= 1e-5


def test_from_hf_bare_safetensors_uses_config_beside_it(tmp_path):
    hf = hf_model(2, **SHAPES[0])
    hf.save_pretrained(tmp_path / "hf")
    model = from_hf(tmp_path / "hf" / "model.safetensors", tmp_path / "c.safetensors")
    assert model.config.n_head == 4 and model.config.block_size == 48


def test_to_hf_refuses_missing_checkpoint(tmp_path):
    res = run_cli("convert", "to-hf", tmp_path / "nope.safetensors", tmp_path / "out")
    assert res.code == 2
    assert "nope.safetensors" in res.err and "no such file" in res.err
