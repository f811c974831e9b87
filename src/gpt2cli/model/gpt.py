"""GPT-2 (Radford et al. 2019), read top to bottom: MLP, Block, GPT.

Token + learned position embeddings, pre-LayerNorm blocks (LN -> causal
self-attention -> residual; LN -> 4x MLP with tanh-GELU -> residual), a final
LayerNorm and an LM head tied to the token embedding. Parameter names follow
GPT-2's (`wte`, `wpe`, `h`, `ln_1`, `attn.c_attn`, `mlp.c_fc`, `ln_f`), with
nn.Linear layout (out, in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gpt2cli.config import ModelConfig
from gpt2cli.model.attention import Probe, build_attention
from gpt2cli.model.loss import chunked_cross_entropy, full_cross_entropy


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 uses the tanh approximation of GELU (HF's "gelu_new").
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias)
        self.attn = build_attention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, state=None, probe: Probe | None = None):
        x = x + self.attn(self.ln_1(x), state, probe)
        return x + self.mlp(self.ln_2(x))


@dataclass
class DecodeState:
    """Per-layer decoding state (KV caches or recurrent states) and the next position."""

    layers: list = field(default_factory=list)
    pos: int = 0

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.layers)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, *, init: bool = True):
        """`init=False` leaves the weights unset, for a checkpoint to fill (or the meta device to size)."""
        super().__init__()
        self.config = cfg
        V = cfg.padded_vocab_size

        def embedding(rows: int) -> nn.Embedding:
            if init:
                return nn.Embedding(rows, cfg.n_embd)
            # nn.Embedding's own normal_ on the meta device imports torch._dynamo (~3 s).
            return nn.Embedding(rows, cfg.n_embd, _weight=torch.empty(rows, cfg.n_embd))

        self.transformer = nn.ModuleDict(
            dict(
                wte=embedding(V),
                wpe=embedding(cfg.block_size),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer)),
                ln_f=nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, V, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, GPT-2 §2.3
        # Recompute each block's activations in backward instead of keeping them (the
        # trainer's --activation-checkpointing): ~1/3 more compute, far less memory.
        self.activation_checkpointing = False
        if not init:
            return
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # residual projections scaled by 1/sqrt(2*n_layer), GPT-2 §2.3
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        with torch.no_grad():
            self.transformer.wte.weight[cfg.vocab_size :].zero_()  # padding rows never used

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        init_extra = getattr(module, "init_extra_parameters", None)
        if init_extra is not None:
            init_extra()

    # -- sizes ---------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters as GPT-2 counts them: tied head once, vocabulary padding excluded."""
        cfg = self.config
        n = sum(p.numel() for p in self.parameters())
        n -= (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd
        if non_embedding:
            n -= cfg.vocab_size * cfg.n_embd + cfg.block_size * cfg.n_embd
        return n

    # -- forward -------------------------------------------------------------
    def hidden(self, idx: torch.Tensor, state: DecodeState | None = None, probe: Probe | None = None):
        """Final hidden states (B, T, C) after ln_f."""
        B, T = idx.shape
        start = state.pos if state is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} positions exceeds the context of {self.config.block_size}"
            )
        x = self.embed(idx, start)
        recompute = self.activation_checkpointing and state is None and probe is None and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            if recompute:
                # Non-reentrant: works under torch.compile and FSDP, restores dropout's RNG.
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, state.layers[i] if state is not None else None, probe)
        if state is not None:
            state.pos += T
        return self.transformer.ln_f(x)

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The residual stream entering the first block: token + position embeddings."""
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))

    def logits_from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h)[..., : self.config.vocab_size]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        state: DecodeState | None = None,
        probe: Probe | None = None,
        last_only: bool = False,
    ):
        """Logits (B, T, vocab); with `targets`, (logits, mean cross-entropy).

        state: a `DecodeState` from `new_state` for incremental decoding.
        last_only: compute logits for the last position only (decoding).
        """
        h = self.hidden(idx, state, probe)
        if last_only:
            h = h[:, -1:, :]
        logits = self.logits_from_hidden(h)
        if targets is None:
            return logits
        return logits, full_cross_entropy(logits, targets)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
        """Mean cross-entropy without materialising the whole (B*T, vocab) logits (model/loss.py)."""
        h = self.hidden(idx)
        return chunked_cross_entropy(
            h.flatten(0, 1), self.lm_head.weight, targets.flatten(), self.config.vocab_size, chunk_rows
        )

    def full_loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy through the whole (B, T, vocab) logits: `forward(idx, targets)`'s loss alone.

        `gpt2 train --loss full`: under torch.compile the LM head and the loss
        fuse into one graph with the body (`model.loss` is opaque to the compiler).
        """
        return full_cross_entropy(self.logits_from_hidden(self.hidden(idx)), targets)

    def new_state(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> DecodeState:
        """Empty decoding state for `batch` sequences of up to `max_len` positions."""
        p = self.transformer.wte.weight
        max_len = max_len or self.config.block_size
        layers = [blk.attn.new_state(batch, max_len, p.device, dtype or p.dtype) for blk in self.transformer.h]
        return DecodeState(layers=layers, pos=0)
