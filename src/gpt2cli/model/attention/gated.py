"""Gated softmax attention (Qiu et al. 2025, "Gated Attention for Large Language Models").

Their G1 variant: the scaled dot-product attention output is multiplied,
elementwise per head and channel, by a sigmoid gate computed from the same
(LayerNormed) block input the queries come from, before the output projection:

    y' = y * sigmoid(x W_g + b_g),   W_g: (n_embd -> n_embd), one gate per head channel.

Everything else (projections, KV cache, attention weights) is standard
attention's. The gate is `attn.c_gate`, named in GPT-2's style.

Initialisation: W_g = 0 and b_g = GATE_BIAS_INIT, so at step 0 the gate is the
constant sigmoid(4) = 0.982 and the model is standard attention with outputs
scaled by 0.982. A gate at sigmoid(0) = 0.5 would halve every attention output
instead. W_g still gets a gradient at zero (through x), and Adam's per-parameter
step size does not shrink with the small sigmoid slope, so the gate becomes
input-dependent within the first steps. The paper's gate has no bias; we keep
one (even when `cfg.bias` is false) because it is what lets the gate start near 1.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gpt2cli.config import ModelConfig
from gpt2cli.model.attention.standard import StandardAttention

GATE_BIAS_INIT = 4.0


class GatedAttention(StandardAttention):
    kind = "gated"

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__(cfg, layer)
        self.c_gate = nn.Linear(cfg.n_embd, cfg.n_embd, bias=True)
        self.init_extra_parameters()

    def init_extra_parameters(self) -> None:
        # GPT._init_weights visits children before their parent (nn.Module.apply),
        # so this runs after c_gate got the generic N(0, 0.02) Linear init and overrides it.
        nn.init.zeros_(self.c_gate.weight)
        nn.init.constant_(self.c_gate.bias, GATE_BIAS_INIT)

    def gate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        B, H, T, D = y.shape
        g = torch.sigmoid(self.c_gate(x)).view(B, T, H, D).transpose(1, 2)
        return y * g
