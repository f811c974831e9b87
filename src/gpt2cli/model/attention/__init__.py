"""Attention kinds, one module each, chosen by `ModelConfig.attention`.

Adding a kind: write a module with a `CausalSelfAttention` subclass and add it
to `KINDS` below (and to `config.ATTENTION_KINDS`).
"""

from __future__ import annotations

from gpt2cli.config import ModelConfig
from gpt2cli.errors import UserError
from gpt2cli.model.attention.base import CausalSelfAttention, Probe
from gpt2cli.model.attention.gated import GatedAttention
from gpt2cli.model.attention.linear import LinearAttention
from gpt2cli.model.attention.standard import StandardAttention

KINDS: dict[str, type[CausalSelfAttention]] = {
    "standard": StandardAttention,
    "linear": LinearAttention,
    "gated": GatedAttention,
}


def build_attention(cfg: ModelConfig, layer: int) -> CausalSelfAttention:
    try:
        cls = KINDS[cfg.attention]
    except KeyError:
        raise UserError(
            f"attention kind {cfg.attention!r} is not implemented (choose from {', '.join(KINDS)})"
        ) from None
    return cls(cfg, layer)


__all__ = ["KINDS", "CausalSelfAttention", "Probe", "build_attention"]
