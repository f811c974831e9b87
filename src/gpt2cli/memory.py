"""Memory a command will need, estimated before anything is allocated, against what the device has.

The estimates are lower bounds on purpose: what must exist at once whatever
the kernels do (weights, AdamW state, the activations backward keeps, a KV
cache). A run refused here could not have fitted; one let through may still
run out (the allocator's error then becomes one line at the CLI's top).

Training, per rank: weights + gradients + two AdamW moments, fp32 (16 bytes a
parameter, spread over the ranks when they are sharded, so divided by the
world size here), plus per token per layer at least 16 vectors of width
n_embd kept for backward (the block's input, LayerNorm outputs, q/k/v, the
attention output, the MLP's 4x expansion before and after GELU; GPT-2 block
arithmetic as in Korthikanti et al. 2022, §4.1), counted at 2 bytes each.
With activation checkpointing only each block's input is kept (one vector
per token per layer), plus one block's 16 while backward recomputes it.

Decoding: the weights at their dtype, a KV cache of 2 x n_layer x batch x
positions x n_embd, and one row of logits per sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from gpt2cli.config import ModelConfig
from gpt2cli.errors import UserError

GiB = 2**30


def parameter_count(cfg: ModelConfig) -> int:
    """GPT-2's weights (a lower bound for the other attention kinds, which add a few)."""
    C, L = cfg.n_embd, cfg.n_layer
    # Per block: c_attn 3C^2, attn c_proj C^2, c_fc 4C^2, mlp c_proj 4C^2; biases 9C and two LayerNorms.
    per_layer = 12 * C * C + (13 * C if cfg.bias else 2 * C)
    return L * per_layer + cfg.padded_vocab_size * C + cfg.block_size * C + (2 * C if cfg.bias else C)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` (CUDA: the device's own; otherwise the machine's); None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", GiB), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 2**10:,.1f} KiB"


@dataclass
class Need:
    """An estimate: named parts in bytes."""

    what: str
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {format_bytes(b)}" for name, b in self.parts.items())


def training_need(
    model: ModelConfig, batch_size: int, block_size: int, world_size: int = 1, activation_checkpointing: bool = False
) -> Need:
    params = parameter_count(model)
    tokens = batch_size * block_size
    vectors = model.n_layer + 16 if activation_checkpointing else model.n_layer * 16
    return Need(
        "training",
        {
            "weights, gradients and AdamW state": 16 * params // max(1, world_size),
            f"activations for {batch_size:,} x {block_size:,} tokens": tokens * vectors * model.n_embd * 2,
        },
    )


def decoding_need(model: ModelConfig, batch: int, positions: int, dtype_bytes: int) -> Need:
    positions = min(positions, model.block_size)
    return Need(
        "decoding",
        {
            "weights": parameter_count(model) * dtype_bytes,
            f"KV cache for {batch:,} x {positions:,} positions": 2 * model.n_layer * batch * positions
            * model.n_embd * dtype_bytes,
            "logits": batch * model.padded_vocab_size * 4,
        },
    )


def require_fits(need: Need, device: torch.device, hint: str, share: int = 1) -> None:
    """Refuse, with the figures, a need larger than the device's free memory (divided among `share` ranks)."""
    free = available_bytes(device)
    if free is None:
        return
    free //= max(1, share)
    if need.total > free:
        ranks = f" per rank ({share} ranks)" if share > 1 else ""
        raise UserError(
            f"not enough memory: {need.what} needs at least {format_bytes(need.total)}{ranks} "
            f"({need.describe()}), {device.type} has {format_bytes(free)} free; {hint}"
        )


def local_ranks() -> int:
    """Ranks sharing this machine's memory (torchrun sets LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_decoding_memory(ckpt, device: torch.device, dtype: torch.dtype, batch: int, new_tokens: int) -> None:
    """Before loading `ckpt`: refuse a sample batch whose weights and KV cache cannot fit."""
    from gpt2cli.checkpoint import checkpoint_config

    cfg = checkpoint_config(ckpt)  # the header only: the same refusals as loading, none of the cost
    itemsize = torch.empty(0, dtype=dtype).element_size()
    need = decoding_need(cfg, batch, new_tokens, itemsize)
    weights, cache, _ = need.parts.values()
    hint = "the model alone is too large for this device" if weights >= cache else (
        "use a smaller --num-samples or --max-new-tokens"
    )
    require_fits(need, device, hint)


def check_training_memory(
    model: ModelConfig, batch_size: int, block_size: int, device_name: str, activation_checkpointing: bool = False
) -> None:
    """Before a run starts: refuse a micro-batch and model whose lower-bound need exceeds free memory."""
    from gpt2cli.device import resolve_device

    device = resolve_device(device_name)
    world = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    need = training_need(model, batch_size, block_size, world, activation_checkpointing)
    weights, activations = need.parts.values()
    hint = (
        "use a smaller model (--preset, or --set model.n_layer / model.n_embd / model.block_size)"
        if weights >= activations
        else "use a smaller --batch-size or --block-size (--grad-accum keeps the tokens per step)"
    )
    require_fits(need, device, hint, share=1 if device.type == "cuda" else local_ranks())
