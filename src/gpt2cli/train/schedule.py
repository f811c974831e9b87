"""Learning rate: linear warm-up, then cosine decay to `min_lr`.

The GPT-2 paper gives no schedule; this is GPT-3's (Brown et al. 2020, §B:
linear warm-up, cosine decay to 10% of the peak), as nanoGPT uses it.
"""

from __future__ import annotations

import math

from gpt2cli.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of update number `step` (0-based) of `cfg.steps`.

    Warm-up ramps linearly from lr/(warmup+1) to lr over the first
    `warmup_steps` updates (never 0, so step 0 already learns); then a half
    cosine runs from lr at the end of warm-up to `min_lr` at the last update.
    """
    peak, floor = cfg.lr, min(cfg.min_lr, cfg.lr)
    warmup = min(cfg.warmup_steps, cfg.steps)
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    decay_steps = cfg.steps - warmup
    if decay_steps <= 1 or step >= cfg.steps:
        return floor if step >= cfg.steps else peak
    progress = (step - warmup) / (decay_steps - 1)  # 0 at the first decay step, 1 at the last
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)
