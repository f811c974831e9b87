"""Model FLOPs per token, for MFU (model FLOPs utilisation).

Kaplan et al. 2020 (§2.1) count 2N FLOPs per token forward and twice that
backward, 6N in all, for N non-embedding parameters; the LM head is a matmul
too, so its vocab x n_embd weights count here (the embedding lookup is free).
Attention scores and their weighted sum add 2 * 2 * T * C per layer forward
(PaLM, Chowdhery et al. 2022, App. B), so 12 * L * C * T per token in all.
"""

from __future__ import annotations

from gpt2cli.config import ModelConfig


def flops_per_token(cfg: ModelConfig, non_embedding_params: int, block_size: int) -> float:
    """Training FLOPs (forward + backward) per token at context `block_size`."""
    n = non_embedding_params + cfg.vocab_size * cfg.n_embd
    return 6.0 * n + 12.0 * cfg.n_layer * cfg.n_embd * block_size


def mfu(tokens_per_sec: float, per_token: float, peak_tflops: float) -> float | None:
    """Achieved FLOP/s over the peak, or None when no peak is known."""
    if peak_tflops <= 0:
        return None
    return tokens_per_sec * per_token / (peak_tflops * 1e12)
