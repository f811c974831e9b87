"""Issue #6, Done when 4: `gpt2 train --attention linear|gated` then `gpt2 generate` on what it wrote.

A smoke test through the real command line: tokenize the built-in stories,
train a 2-layer model for 3 steps with each non-standard kind, check the
checkpoint records the kind and carries the kind's own weights, and generate
from it (generate must pick the kind up from the checkpoint alone).
"""

from __future__ import annotations

import math

import pytest
import torch

from gpt2cli.checkpoint import checkpoint_config, load_checkpoint
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "stories"
    res = run_cli("tokenize", "--builtin-stories", "200KB", "-o", out)
    assert res.code == 0, res.err
    return out


@pytest.mark.parametrize("kind", ["linear", "gated"])
def test_train_then_generate(tmp_path, data_dir, kind):
    run_dir = tmp_path / f"run-{kind}"
    res = run_cli(
        "train", "--preset", "tiny", "--attention", kind,
        "--data", data_dir, "--out", run_dir,
        "--steps", "3", "--batch-size", "2", "--block-size", "32",
        "--set", "model.n_layer=2", "--set", "model.n_embd=64", "--set", "model.n_head=2",
        "--set", "model.block_size=32",
        "--eval-every", "3", "--save-every", "3",
    )  # fmt: skip
    assert res.code == 0, res.err
    ckpt = run_dir / "ckpt.safetensors"
    assert ckpt.is_file()

    cfg = checkpoint_config(ckpt)
    assert cfg.attention == kind and cfg.n_layer == 2 and cfg.n_embd == 64
    model = load_checkpoint(ckpt)
    names = set(model.state_dict())
    assert ("transformer.h.0.attn.c_gate.weight" in names) == (kind == "gated")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():
        idx = torch.randint(0, cfg.vocab_size, (1, 16))
        _, loss = model(idx, idx)
    assert math.isfinite(loss.item())

    res = run_cli("generate", "Once", "--ckpt", ckpt, "--max-new-tokens", "5", "--seed", "0")
    assert res.code == 0, res.err
    assert res.out.strip().startswith("Once")
