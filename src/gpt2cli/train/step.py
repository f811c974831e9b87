"""One optimisation step's maths: accumulate gradients over micro-batches, clip, update.

Kept apart from the loop so tests can check it on fixed batches (gradient
accumulation must give the gradients of the whole batch, and the optimised
step the loss and gradients of a plain one).

`train_step` is the whole step as the loop runs it. What makes it fast
(benchmarks/train_throughput.py measures it):
- the loss is `model.loss`: the LM head and cross-entropy in chunks, never the
  whole (B*T, vocab) logits (model/loss.py); or, compiled on a GPU where
  they fit, `model.full_loss`, which the compiler fuses (memory.choose_loss);
- the forward runs under autocast (bf16 on CPUs with bf16 matmuls and on
  CUDA), weights, gradients and AdamW state stay fp32;
- AdamW is fused where the device has the kernel (optim.py), and a
  non-finite step is skipped by the kernel itself (found_inf), so nothing in
  the step waits for the host: no .item(), no bool(tensor).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the forward pass; weights, grads and AdamW stay fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def accumulate_gradients(
    loss_fn: LossFn,
    micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    n_micro: int,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    sync_context: Callable[[bool], contextlib.AbstractContextManager] | None = None,
) -> torch.Tensor:
    """Add d(mean loss)/d(params) over `n_micro` equal micro-batches to `.grad`.

    Each micro-batch's mean loss is divided by n_micro, so the summed
    gradients are those of the mean over the whole batch. Returns that mean
    loss as a detached device tensor (no host sync).

    sync_context(last) wraps each micro-step's forward and backward; data
    parallel training passes one that skips the gradient all-reduce unless
    `last` (distributed.micro_step_context).
    """
    total = torch.zeros((), device=device)
    for i, (x, y) in enumerate(micro_batches):
        ctx = sync_context(i == n_micro - 1) if sync_context is not None else contextlib.nullcontext()
        with ctx:
            with autocast_context(device, amp_dtype):
                loss = loss_fn(x, y) / n_micro
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach().float()
    return total


def grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """The global L2 norm of the gradients (before clipping); clips to max_norm when > 0.

    Clipping as in GPT-3 §B (global norm 1.0). Stays on the device.
    """
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    # Sharded gradients (FSDP) give a DTensor of per-shard partial norms; full_tensor() reduces them.
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


@dataclass
class StepResult:
    """What one step leaves for the loop to log; all device tensors, read them at log time."""

    loss: torch.Tensor  # mean loss over the whole batch, fp32
    grad_norm: torch.Tensor  # global L2 norm of the gradients before clipping
    skipped: torch.Tensor  # bool: the loss or gradients were not finite, so no update happened


def train_step(
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    n_micro: int,
    *,
    params: list[torch.nn.Parameter],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    max_norm: float = 1.0,
    sync_context: Callable[[bool], contextlib.AbstractContextManager] | None = None,
    agree: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepResult:
    """One update: gradients of the mean loss over `n_micro` micro-batches, clip, AdamW, zero grads.

    loss_fn(x, y) -> mean loss (normally `model.loss` or `model.full_loss`, or
    its torch.compile'd version); the optimizer's lr is whatever its param groups hold (the loop
    sets the schedule). A step whose loss or gradient norm is not finite
    changes no weight and no optimizer state. With a GradScaler (fp16) the
    scaler skips overflowing steps itself; `skipped` then reports only a
    non-finite loss.

    agree(flag) -> flag true on every rank if true on any (data parallel:
    all ranks must skip the same steps; distributed.any_rank).
    """
    loss = accumulate_gradients(
        loss_fn, micro_batches, n_micro, device=device, amp_dtype=amp_dtype, scaler=scaler,
        sync_context=sync_context,
    )
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = grad_norm(params, max_norm)
    if scaler is not None:
        skipped = ~torch.isfinite(loss)
        if agree is not None:
            skipped = agree(skipped)
        scaler.step(optimizer)
        scaler.update()
    else:
        skipped = ~(torch.isfinite(loss) & torch.isfinite(norm))
        if agree is not None:
            skipped = agree(skipped)
        if optimizer.defaults.get("fused"):
            # The fused kernel skips the update (and its step count) where found_inf is 1.
            optimizer.found_inf = skipped.float()
            optimizer.step()
            optimizer.found_inf = None
        elif not bool(skipped):  # no fused kernel on this device: decide on the host
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=loss, grad_norm=norm, skipped=skipped)
