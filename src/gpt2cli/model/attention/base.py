"""The attention interface every kind implements, and the probe that looks inside.

A kind subclasses `CausalSelfAttention` and provides `mix`: given per-head
queries, keys and values (B, H, T, D) it returns the per-head outputs, and on
request the attention weights (B, H, T, T, each causal row summing to 1). It
also provides `new_state` for incremental decoding (a KV cache for softmax
kinds, a constant-size recurrent state for linear attention). The shared
projections `c_attn` / `c_proj` carry GPT-2's names so checkpoints transfer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from gpt2cli.config import ModelConfig


@dataclass
class Probe:
    """Look inside without surgery (STYLE.md §6): one per forward call.

    - need_weights: each layer appends its attention weights to `weights`.
    - capture_heads: each layer appends its per-head outputs (B, H, T, D),
      taken before the output projection, to `head_outputs`.
    - head_mask (L, H): multiplies each head's output (0 removes the head).
    - head_fill (L, H, D): what a removed head is replaced by (mean-ablation);
      y = mask * y + (1 - mask) * fill.
    """

    need_weights: bool = False
    capture_heads: bool = False
    head_mask: torch.Tensor | None = None
    head_fill: torch.Tensor | None = None
    weights: list[torch.Tensor] = field(default_factory=list)
    head_outputs: list[torch.Tensor] = field(default_factory=list)

    def visit(self, layer: int, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        if self.need_weights and w is not None:
            self.weights.append(w)
        if self.capture_heads:
            self.head_outputs.append(y)
        if self.head_mask is not None:
            mask = self.head_mask[layer].to(y.dtype).view(1, -1, 1, 1)
            fill = 0.0
            if self.head_fill is not None:
                fill = self.head_fill[layer].to(y.dtype).view(1, y.shape[1], 1, y.shape[3])
            y = mask * y + (1 - mask) * fill
        return y


class CausalSelfAttention(nn.Module):
    """Shared projections around a kind-specific causal token mixer."""

    kind = "abstract"

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def mix(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        state: object | None,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def new_state(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> object:
        raise NotImplementedError

    def gate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-head output gate; the identity except in gated attention."""
        return y

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head queries, keys and values (B, H, T, D) of the block input x (B, T, C)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return tuple(t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """Per-head outputs (B, H, T, D) -> the block's residual update (B, T, C)."""
        B, H, T, D = y.shape
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, H * D)))

    def forward(self, x: torch.Tensor, state: object | None = None, probe: Probe | None = None) -> torch.Tensor:
        q, k, v = self.heads(x)
        y, w = self.mix(q, k, v, state, need_weights=probe is not None and probe.need_weights)
        y = self.gate(x, y)
        if probe is not None:
            y = probe.visit(self.layer, y, w)
        return self.merge(y)
