"""Causal softmax multi-head attention (Vaswani et al. 2017), as in GPT-2."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpt2cli.model.attention.base import CausalSelfAttention


class KVCache:
    """Preallocated keys and values for incremental decoding: (B, H, max_len, D)."""

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, device, dtype):
        self.k = torch.empty(batch, n_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise RuntimeError(f"KV cache overflow: {end} > {self.k.shape[2]} positions")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


def causal_mask(t_q: int, t_k: int, device) -> torch.Tensor:
    """Boolean (t_q, t_k) mask: query i (the last t_q of t_k positions) sees keys <= its own."""
    offset = t_k - t_q
    rows = torch.arange(t_q, device=device).unsqueeze(1) + offset
    return torch.arange(t_k, device=device).unsqueeze(0) <= rows


def softmax_attention(q, k, v, dropout_p: float, need_weights: bool):
    """Causal scaled dot-product attention where queries are the last positions of the keys."""
    t_q, t_k = q.shape[2], k.shape[2]
    if not need_weights:
        if t_q == t_k:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif t_q == 1:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            mask = causal_mask(t_q, t_k, q.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return y, None
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~causal_mask(t_q, t_k, q.device), float("-inf"))
    w = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    y = F.dropout(w, p=dropout_p, training=dropout_p > 0) @ v
    return y, w


class StandardAttention(CausalSelfAttention):
    kind = "standard"

    def new_state(self, batch, max_len, device, dtype):
        return KVCache(batch, self.n_head, max_len, self.head_dim, device, dtype)

    def mix(self, q, k, v, state, need_weights):
        if state is not None:
            k, v = state.append(k, v)
        p = self.attn_dropout if self.training else 0.0
        return softmax_attention(q, k, v, p, need_weights)
