"""AdamW with weight decay on matrices only.

Decaying biases and LayerNorm gains pulls them towards 0 for no benefit, so
only parameters with two or more dimensions (linear weights, embeddings) are
decayed, as in GPT-3 / nanoGPT. Betas come from the config (GPT-3 §B: 0.9, 0.95).
"""

from __future__ import annotations

import torch

from gpt2cli.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups, each with its parameters' names (for the resume state)."""
    decay, no_decay = [], []
    # named_parameters() lists a tied weight once (lm_head shares wte).
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append((name, p))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def fused_available(device: torch.device) -> bool:
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return device.type in _get_fused_kernels_supported_devices()


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device, allow_fused: bool = True
) -> torch.optim.AdamW:
    """Fused AdamW where the device has the kernel (one pass over all tensors), else foreach.

    allow_fused False (FSDP's sharded DTensor parameters): foreach.
    """
    fused = allow_fused and fused_available(device)
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=1e-8,
        fused=fused,
        foreach=None if fused else True,
    )


def parameter_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its state_dict order."""
    return [name for group in optimizer.param_groups for name in group["names"]]
