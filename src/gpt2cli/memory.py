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

Which training loss (`choose_loss`): the full-logits loss adds the whole
(B*T, vocab) logits of a micro-batch to the step (`full_logits_bytes`); the
chunked loss never holds more than one block of them (model/loss.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from gpt2cli.config import ModelConfig
from gpt2cli.device import env_int, rank_device
from gpt2cli.errors import UserError

GiB = 2**30


def parameter_count(cfg: ModelConfig) -> int:
    """GPT-2's weights (a lower bound for the other attention kinds, which add a few)."""
    C, L = cfg.n_embd, cfg.n_layer
    # Per block: c_attn 3C^2, attn c_proj C^2, c_fc 4C^2, mlp c_proj 4C^2; biases 9C and two LayerNorms.
    per_layer = 12 * C * C + (13 * C if cfg.bias else 2 * C)
    return L * per_layer + cfg.padded_vocab_size * C + cfg.block_size * C + (2 * C if cfg.bias else C)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` (CUDA: this rank's GPU's own; otherwise the machine's); None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(rank_device(device))
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
    model: ModelConfig,
    batch_size: int,
    block_size: int,
    world_size: int = 1,
    activation_checkpointing: bool = False,
    full_logits: bool = False,
) -> Need:
    """full_logits: `--loss full` asked for (counted at 2-byte logits, the lower bound)."""
    params = parameter_count(model)
    tokens = batch_size * block_size
    vectors = model.n_layer + 16 if activation_checkpointing else model.n_layer * 16
    parts = {
        "weights, gradients and AdamW state": 16 * params // max(1, world_size),
        f"activations for {batch_size:,} x {block_size:,} tokens": tokens * vectors * model.n_embd * 2,
    }
    if full_logits:
        parts["full logits (--loss full)"] = full_logits_bytes(batch_size, block_size, model.padded_vocab_size, 2)
    return Need("training", parts)


def full_logits_bytes(batch_size: int, block_size: int, padded_vocab: int, dtype_bytes: int) -> int:
    """The memory the full-logits loss adds to a training step, for one micro-batch.

    Per logit: the LM head's output in the compute dtype (dtype_bytes: 2 under
    bf16/fp16 autocast, 4 in fp32); cross-entropy's fp32 copy of it
    (`logits.float()`, whose log-softmax output backward keeps: 4); and in
    backward the fp32 gradient of the logits before it is cast back (4). So
    B x T x padded vocab x (dtype_bytes + 8): 8.2 GB for the small preset at
    16 x 1024 in bf16. Eager kernels may hold a little more for a moment (the
    upcast and the log-softmax output side by side); inductor's fused kernel
    holds less (the low-precision logits and one logsumexp per row). The
    chunked loss's own block (CHUNK_BYTES, 128 MiB) is small beside it.
    """
    return batch_size * block_size * padded_vocab * (dtype_bytes + 8)


# `--loss auto` takes the full-logits loss only when its logits need at most this
# share of the GPU's memory: the rest is the weights, AdamW state, activations and
# the allocator's slack, which grow with the preset while the logits do not.
FULL_LOGITS_SHARE = 8  # i.e. at most 1/8 of the device's total memory


@dataclass(frozen=True)
class LossChoice:
    """The training loss a run uses: "full" (whole logits) or "chunked" (model/loss.py), and why."""

    kind: str
    reason: str

    @property
    def full(self) -> bool:
        return self.kind == "full"

    def describe(self) -> str:
        name = "full logits" if self.full else "chunked cross-entropy"
        return f"loss: {name} ({self.reason})"


def choose_loss(
    requested: str,
    *,
    device_type: str,
    compiled: bool,
    batch_size: int,
    block_size: int,
    padded_vocab: int,
    dtype_bytes: int,
    total_memory: int | None,
    sharded: bool = False,
    activation_checkpointing: bool = False,
) -> LossChoice:
    """`--loss` resolved: "chunked" and "full" as asked; "auto" full only where it should be faster and fits.

    auto's rule: full logits only on CUDA under --compile (inductor fuses the
    LM head's output, the fp32 upcast and cross-entropy into few kernels;
    `model.loss` is opaque to the compiler and breaks the graph), and only
    when `full_logits_bytes` is at most 1/FULL_LOGITS_SHARE of the GPU's total
    memory. Eager CUDA keeps chunked (the eager full loss is unmeasured there,
    and costs the memory), and so do the CPU (where the chunked loss is the
    measured fast path), MPS, FSDP and activation checkpointing (both chosen
    to save memory). total_memory: the device's total bytes (None: unknown).
    """
    need = full_logits_bytes(batch_size, block_size, padded_vocab, dtype_bytes)
    size = f"{format_bytes(need)} of logits per micro-batch"
    if requested == "chunked":
        return LossChoice("chunked", "--loss chunked")
    if requested == "full":
        return LossChoice("full", f"--loss full; {size}")
    if requested != "auto":
        raise ValueError(f"unknown loss {requested!r} (choose from auto, chunked, full)")
    if device_type != "cuda":
        return LossChoice("chunked", f"auto: on {device_type}, full logits only on CUDA with --compile")
    if not compiled:
        return LossChoice("chunked", "auto: eager CUDA, full logits only with --compile")
    if sharded:
        return LossChoice("chunked", "auto: --fsdp saves memory, so no full logits")
    if activation_checkpointing:
        return LossChoice("chunked", "auto: --activation-checkpointing saves memory, so no full logits")
    budget = None if total_memory is None else total_memory // FULL_LOGITS_SHARE
    if budget is None or need > budget:
        limit = "the GPU's memory is unknown" if budget is None else (
            f"more than 1/{FULL_LOGITS_SHARE} of the GPU's {format_bytes(total_memory)}"
        )
        return LossChoice("chunked", f"auto: full logits would need {size}, {limit}")
    return LossChoice(
        "full", f"auto: compiled on CUDA, {size} fit in 1/{FULL_LOGITS_SHARE} of the GPU's {format_bytes(total_memory)}"
    )


def total_device_memory(device: torch.device) -> int | None:
    """The device's total memory in bytes (CUDA: this rank's GPU; None elsewhere)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(rank_device(device)).total_memory)


def decoding_need(model: ModelConfig, batch: int, positions: int, dtype_bytes: int) -> Need:
    """Weights, the decoding state for `positions` positions, and one row of fp32 logits per sample."""
    positions = min(positions, model.block_size)
    if model.attention == "linear":  # a fixed-size recurrent state, fp32 whatever the weights
        head = model.n_embd // model.n_head
        state = (f"recurrent state for {batch:,} samples", model.n_layer * batch * model.n_head * (head + 1) * head * 4)
    else:
        state = (f"KV cache for {batch:,} x {positions:,} positions",
                 2 * model.n_layer * batch * positions * model.n_embd * dtype_bytes)  # fmt: skip
    return Need(
        "decoding",
        {"weights": parameter_count(model) * dtype_bytes, state[0]: state[1], "logits": batch * model.padded_vocab_size * 4},
    )


def decoding_positions(model: ModelConfig, device: torch.device, decode: str, prompt_tokens: int, new_tokens: int) -> int:
    """Positions the KV cache holds: the plain path's grow to the text's length, while the
    static step (the default on CUDA) allocates the whole context up front."""
    if decodes_static(device, decode):
        return model.block_size
    return min(model.block_size, prompt_tokens + new_tokens)


def decodes_static(device: torch.device, decode: str) -> bool:
    """Whether --decode DECODE on DEVICE takes the static step (static_decode.resolve_decode's rule)."""
    return decode in ("static", "graph") or (decode == "auto" and device.type == "cuda")


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
            f"({need.describe()}), {rank_device(device)} has {format_bytes(free)} free; {hint}"
        )


def local_ranks() -> int:
    """Ranks sharing this machine's memory (torchrun sets LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_decoding_memory(
    ckpt, device: torch.device, dtype: torch.dtype, batch: int, new_tokens: int, decode: str = "auto",
    prompt_tokens: int = 1,
) -> None:
    """Before loading `ckpt`: refuse a sample batch whose weights and decoding state cannot fit."""
    from gpt2cli.checkpoint import checkpoint_config

    cfg = checkpoint_config(ckpt)  # the header only: the same refusals as loading, none of the cost
    itemsize = torch.empty(0, dtype=dtype).element_size()
    positions = decoding_positions(cfg, device, decode, prompt_tokens, new_tokens)
    need = decoding_need(cfg, batch, positions, itemsize)
    weights, cache, _ = need.parts.values()
    hint = "the model alone is too large for this device" if weights >= cache else (
        "use a smaller --num-samples or --max-new-tokens" if not decodes_static(device, decode)
        else "use a smaller --num-samples (the static decode step holds the whole context; --decode plain holds less)"
    )
    require_fits(need, device, hint)


def check_training_memory(
    model: ModelConfig,
    batch_size: int,
    block_size: int,
    device_name: str,
    activation_checkpointing: bool = False,
    full_logits: bool = False,
    sharded: bool = False,
) -> None:
    """Before a run starts: refuse a micro-batch and model whose lower-bound need exceeds free memory.

    sharded: FSDP splits weights, gradients and AdamW state over the WORLD_SIZE ranks;
    under plain data parallelism every rank holds all of them."""
    from gpt2cli.device import resolve_device

    device = resolve_device(device_name)
    world = max(1, env_int("WORLD_SIZE", 1)) if sharded else 1
    need = training_need(model, batch_size, block_size, world, activation_checkpointing, full_logits)
    weights, *per_token = need.parts.values()
    hint = (
        "use a smaller model (--preset, or --set model.n_layer / model.n_embd / model.block_size)"
        if weights >= sum(per_token)
        else "use a smaller --batch-size or --block-size (--grad-accum keeps the tokens per step)"
    )
    if full_logits and per_token[-1] > weights + per_token[0]:
        hint = "use --loss chunked (it never holds the whole logits), or a smaller --batch-size or --block-size"
    require_fits(need, device, hint, share=1 if device.type == "cuda" else local_ranks())
