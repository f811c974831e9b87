"""Memory needs estimated up front: the figures, and refusals with them before anything is allocated."""

from __future__ import annotations

import pytest
import torch

import gpt2cli.memory
from gpt2cli.errors import UserError
from gpt2cli.memory import (
    check_training_memory,
    decoding_need,
    parameter_count,
    require_fits,
    training_need,
)
from gpt2cli.model import GPT
from tests.conftest import tiny_config


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"vocab_size": 50257, "n_embd": 64, "n_head": 4, "n_layer": 3}])
def test_parameter_count_matches_the_model(kw):
    cfg = tiny_config(**kw)
    with torch.device("meta"):
        model = GPT(cfg, init=False)
    assert parameter_count(cfg) == sum(p.numel() for p in model.parameters())


def test_kv_cache_figure_matches_the_model_s_own_cache():
    cfg = tiny_config()
    model = GPT(cfg, init=False)
    state = model.new_state(3, max_len=20)
    held = sum(t.numel() * t.element_size() for layer in state.layers for t in (layer.k, layer.v))
    need = decoding_need(cfg, batch=3, positions=20, dtype_bytes=4)
    assert need.parts["KV cache for 3 x 20 positions"] == held


def test_training_need_is_a_lower_bound_of_what_a_step_keeps():
    """Weights + grads + AdamW moments are exactly 16 bytes a parameter; the activation figure is at
    most what autograd really saves for backward (measured with saved-tensor hooks, fp32 on CPU)."""
    cfg = tiny_config(n_embd=64, n_head=4, vocab_size=256, block_size=64)
    need = training_need(cfg, batch_size=8, block_size=64)
    state, activations = need.parts.values()
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randint(0, 256, (8, 64))
    saved: dict[int, int] = {}
    params = {p.data_ptr() for p in model.parameters()}

    def pack(t):
        if t.data_ptr() not in params:  # the weights themselves are counted in the state part
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x, x)
    loss.backward()
    opt.step()
    kept = sum(p.numel() * 4 * 2 for p in model.parameters())  # weights and gradients
    kept += sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim())
    assert state == kept
    assert activations <= sum(saved.values())


def test_refused_with_the_figures(monkeypatch):
    monkeypatch.setattr(gpt2cli.memory, "available_bytes", lambda device: 2**30)
    cfg = tiny_config()
    with pytest.raises(UserError) as err:
        check_training_memory(cfg, batch_size=10**6, block_size=32, device_name="cpu")
    assert str(err.value).startswith("not enough memory: training needs at least 61.0 GiB (")
    assert "cpu has 1.0 GiB free; use a smaller --batch-size" in str(err.value)
    check_training_memory(cfg, batch_size=8, block_size=32, device_name="cpu")  # fits
    monkeypatch.setattr(gpt2cli.memory, "available_bytes", lambda device: None)
    require_fits(training_need(cfg, 10**9, 10**9), torch.device("cpu"), "")  # unknown: not refused
