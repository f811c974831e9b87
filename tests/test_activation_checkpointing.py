"""Activation checkpointing (`--activation-checkpointing`) changes memory, not maths.

- gradients of the training loss equal those without it (rtol 1e-5), dropout on or off;
- through the CLI, a short fp32 run with the flag ends at the same weights as one without
  (on the CPU, whose kernels are deterministic).
"""

from __future__ import annotations

import json

import pytest
import torch

from gpt2cli.checkpoint import load_checkpoint_with_meta
from gpt2cli.cli.train import flag_overrides
from gpt2cli.config import load_run_config
from gpt2cli.errors import UserError
from gpt2cli.memory import available_bytes, check_training_memory, training_need
from tests.conftest import run_cli, tiny_config, tiny_model
from tests.test_resume import stories_data  # noqa: F401  (a fixture)
from tests.test_train_cli import train_args

pytestmark = pytest.mark.usefixtures("one_thread")


def gradients(model, x, y, seed: int) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks both times
    loss = model.loss(x, y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["standard", "linear"])
def test_gradients_equal_without_checkpointing(dropout, kind):
    model = tiny_model(seed=3, dropout=dropout, attention=kind).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 128, (2, 24), generator=g)
    y = torch.randint(0, 128, (2, 24), generator=g)
    loss_plain, plain = gradients(model, x, y, seed=7)
    model.activation_checkpointing = True
    calls = []
    for block in model.transformer.h:
        block.register_forward_pre_hook(lambda *_: calls.append(1))
    loss_ckpt, ckpt = gradients(model, x, y, seed=7)
    # Each block ran twice: once in forward, once recomputed in backward (which may stop
    # early, once it has what backward needs: a pre-hook still sees it start).
    assert len(calls) == 2 * model.config.n_layer
    assert loss_ckpt == loss_plain
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_memory_check_counts_only_the_kept_block_inputs():
    """With checkpointing a step keeps one vector per token per layer (+ one block's 16 in
    backward) instead of 16 per layer: a batch refused without the flag is let through with it."""
    cfg = tiny_config(n_layer=4, n_embd=64, n_head=4, vocab_size=256, block_size=64)
    plain = training_need(cfg, 8, 64)
    ckpt = training_need(cfg, 8, 64, activation_checkpointing=True)
    assert list(ckpt.parts.values())[1] == 8 * 64 * (4 + 16) * 64 * 2
    assert list(plain.parts.values())[1] == 8 * 64 * 4 * 16 * 64 * 2
    free = available_bytes(torch.device("cpu"))
    if free is None:
        pytest.skip("this system does not say how much memory is free")
    # Sized so the checkpointed need is half the free memory: the plain one is 3.2x that.
    batch = int(free / 2 / (64 * (4 + 16) * 64 * 2))
    with pytest.raises(UserError, match="not enough memory"):
        check_training_memory(cfg, batch, 64, "cpu")
    check_training_memory(cfg, batch, 64, "cpu", activation_checkpointing=True)


def test_flag_reaches_the_config():
    assert flag_overrides(activation_checkpointing=True) == ["train.activation_checkpointing=true"]
    assert flag_overrides(activation_checkpointing=False) == []
    assert load_run_config("tiny").train.activation_checkpointing is False
    assert load_run_config("tiny", ["train.activation_checkpointing=true"]).train.activation_checkpointing


def test_cli_run_with_the_flag_ends_at_the_same_weights(stories_data, tmp_path):  # noqa: F811
    weights = []
    for extra in ([], ["--activation-checkpointing"]):
        out = tmp_path / f"run{len(extra)}"
        r = run_cli(*train_args(stories_data, out, "--steps", "3", "--dtype", "fp32", "--device", "cpu", "--eval-every", "100", *extra))
        assert r.code == 0, r.err
        model, meta = load_checkpoint_with_meta(out / "ckpt.safetensors")
        assert json.loads(meta["train"])["activation_checkpointing"] is bool(extra)
        weights.append(model.state_dict())
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-5, atol=1e-7, msg=name)
