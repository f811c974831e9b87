"""Data-parallel training with PyTorch's own engine: torchrun, DDP, FSDP2.

torchrun (torch.distributed.run) starts one process per rank and sets RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous address; `init_from_env` joins the
process group (NCCL on CUDA, gloo on the CPU). Without those variables, or
with WORLD_SIZE=1, nothing is initialised and training is single-process.

The batch split: `--batch-size` is the per-rank micro-batch B, so one step
sees B x world_size x grad_accum sequences. The data reader draws the k-th
global batch of B x world_size windows from (seed, k) and rank r takes rows
[r*B, (r+1)*B), so N ranks with B each see exactly the windows one process
with N*B sees, and the resume position (k) does not depend on world size.

Gradient averaging: DDP and FSDP average gradients over ranks; each rank's
loss is the mean over its B rows, so the averaged gradient is that of the
mean over the global batch, the same as one process (up to float rounding).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from gpt2cli.device import env_int, rank_device
from gpt2cli.errors import UserError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; world_size 1 = no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    fsdp: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: torch.device, fsdp: bool = False) -> tuple[Dist, torch.device]:
    """Join the torchrun job described by the environment; returns (Dist, this rank's device).

    On CUDA each rank uses GPU LOCAL_RANK. Called once per process.
    """
    world = env_int("WORLD_SIZE", 1)
    rank = env_int("RANK", 0)
    local = env_int("LOCAL_RANK", 0)
    if world <= 1:
        return Dist(fsdp=fsdp), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = rank_device(device)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"--device {device.type}: distributed training runs on cuda (nccl) or cpu (gloo)")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, world_size=world, local_rank=local, fsdp=fsdp), device


def shutdown(d: Dist) -> None:
    import torch.distributed as dist

    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


class LossModule(torch.nn.Module):
    """forward(x, y) = the training loss, so DDP's and FSDP's forward hooks see the training path.

    `GPT.loss` (chunked cross-entropy) and `GPT.full_loss` (whole logits) are
    not `GPT.forward`; the wrappers only hook `forward`, so the loss the run
    chose is exposed as this module's forward. `full=False` in a call picks
    the chunked one for that call (the eval losses under FSDP).
    """

    def __init__(self, model: torch.nn.Module, full: bool = False):
        super().__init__()
        self.model = model
        self.full = full

    def forward(self, x: torch.Tensor, y: torch.Tensor, full: bool | None = None) -> torch.Tensor:
        if self.full if full is None else full:
            return self.model.full_loss(x, y)
        return self.model.loss(x, y)


PREFIX = "model."  # LossModule's name for the GPT inside it


def wrap_model(
    model: torch.nn.Module, d: Dist, device: torch.device, amp_dtype: torch.dtype | None, full: bool = False
):
    """The training loss function (x, y) -> mean loss: `model.loss` (or `model.full_loss` when `full`),
    or a DDP/FSDP2-wrapped LossModule that calls the same one.

    DDP keeps `model` unchanged inside. FSDP2 shards `model` in place (each
    transformer block, then the rest as the root group: FULL_SHARD, i.e.
    parameters re-sharded after forward); its parameters become DTensors.
    """
    if not d.enabled and not d.fsdp:
        return model.full_loss if full else model.loss
    if d.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not d.enabled:
            raise UserError("--fsdp: needs 2 or more ranks (run under torchrun or with --nproc N)")
        mp = None
        if amp_dtype == torch.bfloat16:
            # bf16 compute copies of the sharded fp32 weights; gradients reduced in fp32.
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kw = {"mp_policy": mp} if mp is not None else {}
        root = LossModule(model, full)
        for block in model.transformer.h:
            fully_shard(block, **kw)
        fully_shard(root, **kw)
        return root
    from torch.nn.parallel import DistributedDataParallel as DDP

    # GPT's buffers are constants, so no per-forward buffer broadcast.
    return DDP(
        LossModule(model, full), device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
    )


def micro_step_context(wrapped: torch.nn.Module, d: Dist, last: bool):
    """Skip the gradient all-reduce on all but the last micro-step of an accumulated step.

    DDP: `no_sync()`. FSDP2: `set_requires_gradient_sync(False)` (gradients
    stay unsharded locally until the last micro-step reduce-scatters them).
    """
    if not d.enabled:
        return contextlib.nullcontext()
    if d.fsdp:
        wrapped.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if last else wrapped.no_sync()


def all_reduce_mean(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """The mean of `t` over ranks (a copy); `t` itself when single-process."""
    if not d.enabled:
        return t
    import torch.distributed as dist

    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / d.world_size


def any_rank(flag: torch.Tensor | bool, d: Dist, device: torch.device) -> torch.Tensor:
    """True on every rank when it is true on any rank (so all ranks take the same branch)."""
    t = torch.as_tensor(flag, device=device).to(torch.int32).reshape(())
    if not d.enabled:
        return t.bool()
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.bool()


def _strip(name: str) -> str:
    return name.removeprefix(PREFIX)


def max_over_ranks(value: int, d: Dist, device: torch.device) -> int:
    """The largest of the ranks' values (a host sync), so every rank takes the same branch."""
    if not d.enabled:
        return value
    import torch.distributed as dist

    t = torch.tensor(value, dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def full_model_state(root: torch.nn.Module, d: Dist) -> dict[str, torch.Tensor] | None:
    """FSDP: the unsharded GPT weights on the CPU, by GPT parameter name (rank 0; None elsewhere).

    A collective: every rank must call it at the same point.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {_strip(k): v for k, v in sd.items()} if d.is_main else None


def full_optimizer_moments(
    root: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Dist
) -> dict[str, dict[str, torch.Tensor]] | None:
    """FSDP: AdamW state per GPT parameter name, unsharded, on the CPU (rank 0; None elsewhere).

    A collective. (DDP's optimizer state is the same on every rank, so it needs none.)
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sd = get_optimizer_state_dict(root, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {_strip(k): v for k, v in sd["state"].items()} if d.is_main else None


def load_optimizer_moments(
    root: torch.nn.Module, optimizer: torch.optim.Optimizer, moments: dict[str, dict[str, torch.Tensor]]
) -> None:
    """FSDP: load full per-name AdamW state into the sharded optimizer (every rank passes the full state)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    current = get_optimizer_state_dict(root, optimizer, options=opts)
    state = {PREFIX + name: entry for name, entry in moments.items()}
    set_optimizer_state_dict(root, optimizer, {"state": state, "param_groups": current["param_groups"]}, options=opts)
