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


# Every GPT2Config field that changes the network, at a value we reproduce: logits must match.
ACCEPTED_FIELDS = [
    dict(activation_function="gelu_pytorch_tanh"),
    dict(activation_function="gelu_fast"),
    dict(n_inner=4 * 64),
    dict(layer_norm_epsilon=1e-5, scale_attn_weights=True, tie_word_embeddings=True),
    dict(scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, add_cross_attention=False),
    dict(resid_pdrop=0.3, embd_pdrop=0.2, attn_pdrop=0.1, summary_type="mean", bos_token_id=5, eos_token_id=5),
]


@pytest.mark.parametrize("fields", ACCEPTED_FIELDS, ids=lambda f: ",".join(f))
def test_accepted_hf_fields_give_hf_logits(tmp_path, fields):
    shape = dict(SHAPES[0], n_positions=16)
    torch.manual_seed(3)
    hf = GPT2LMHeadModel(GPT2Config(**shape, **fields)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path / "hf")
    res = run_cli("convert", "from-hf", tmp_path / "hf", tmp_path / "ours.safetensors")
    assert res.code == 0, res.err
    ours = load_checkpoint(tmp_path / "ours.safetensors")
    idx = torch.randint(0, shape["vocab_size"], (2, 16))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max().item() <= 1e-5


# Fields (and values) our GPT-2 cannot reproduce: refused with exit 2, naming the field.
REFUSED_FIELDS = [
    ("activation_function", "relu"),
    ("activation_function", "gelu"),
    ("layer_norm_epsilon", 1e-6),
    ("layer_norm_epsilon", "small"),
    ("n_inner", 100),
    ("scale_attn_weights", False),
    ("scale_attn_by_inverse_layer_idx", True),
    ("reorder_and_upcast_attn", True),
    ("add_cross_attention", True),
    ("tie_word_embeddings", False),
    ("model_type", "gpt_neo"),
    ("n_embd", 128),
    ("n_positions", 99),
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-src")
    hf_model(4, **dict(SHAPES[0], n_positions=16)).save_pretrained(root)
    return root


@pytest.mark.parametrize(("key", "value"), REFUSED_FIELDS, ids=lambda v: str(v))
def test_unreproducible_hf_fields_are_refused(tmp_path, hf_dir, key, value):
    import json
    import shutil

    shutil.copytree(hf_dir, tmp_path / "hf")
    config = json.loads((hf_dir / "config.json").read_text())
    config[key] = value
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    res = run_cli("convert", "from-hf", tmp_path / "hf", tmp_path / "ours.safetensors")
    assert res.code == 2 and res.err.count("\n") == 1, res.err
    assert f"{key}=" in res.err or f"{key} " in res.err
    assert not (tmp_path / "ours.safetensors").exists()


def test_hf_config_that_is_not_an_object_is_refused(tmp_path, hf_dir):
    import shutil

    shutil.copytree(hf_dir, tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text("[1, 2]")
    res = run_cli("convert", "from-hf", tmp_path / "hf", tmp_path / "ours.safetensors")
    assert res.code == 2 and res.err == f"error: {tmp_path / 'hf' / 'config.json'}: not a JSON object (expected a Hugging Face GPT2Config)\n"

