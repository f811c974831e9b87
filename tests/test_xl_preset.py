"""The xl preset is GPT-2 XL: the same parameter count as transformers' GPT2Config, both on the meta device."""

from __future__ import annotations

import json

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tests.conftest import run_cli


def test_inspect_model_xl_counts_gpt2_xl_parameters():
    res = run_cli("inspect", "model", "--preset", "xl", "--json")
    assert res.code == 0, res.err
    info = json.loads(res.out)
    assert info["parameters"] == 1_557_611_200
    with torch.device("meta"):  # no 6 GB allocation
        hf = GPT2LMHeadModel(GPT2Config(n_layer=48, n_head=25, n_embd=1600))
    # The head is tied to wte: count each tensor once, as GPT-2 does.
    unique = {id(p): p.numel() for p in hf.parameters()}
    assert sum(unique.values()) == info["parameters"]
    assert (info["config"]["n_layer"], info["config"]["n_head"], info["config"]["n_embd"]) == (48, 25, 1600)
