"""Loss on val and train, the same number of tokens each, and the overfitting verdict.

Mean cross-entropy (nats per token) over random windows of the split drawn
with a fixed seed, the model in eval mode (no dropout). Perplexity is
exp(mean cross-entropy). The gap val - train measures overfitting: a model
that generalises scores about the same on text it has not seen; one that has
memorised its training set scores much better on it. The default margin of
0.1 nats means the model finds unseen text about 10% more surprising
(perplexity ratio e^0.1 = 1.105) than the text it was trained on.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_GAP_MARGIN = 0.1


def window_batches(tokens: np.ndarray, n_tokens: int, block_size: int, batch_size: int, seed: int):
    """Yield (x, y) int64 arrays of windows; exactly `n_tokens` targets are >= 0 (-1: ignored).

    Windows of block_size + 1 tokens start at seeded random offsets; the
    targets past the `n_tokens` budget in the last window are ignored.
    When the budget covers the whole split (n_tokens >= len - 1), the windows
    tile it instead, so every target counts exactly once: the exact loss.
    """
    if n_tokens < 1 or len(tokens) < 2:
        raise ValueError("need n_tokens >= 1 and at least 2 tokens")
    T = min(block_size, len(tokens) - 1)
    skip = None  # per window: leading targets already counted by the window before
    if n_tokens >= len(tokens) - 1:
        n_tokens = len(tokens) - 1
        starts = np.arange(0, n_tokens, T)
        skip = np.zeros(len(starts), dtype=np.int64)
        last = len(tokens) - 1 - T  # pull the last window back inside the split
        skip[-1] = starts[-1] - last
        starts[-1] = last
    else:
        rng = np.random.default_rng(seed)
        starts = rng.integers(0, len(tokens) - T, size=math.ceil(n_tokens / T), endpoint=True)
    left = n_tokens
    for b in range(0, len(starts), batch_size):
        idx = starts[b : b + batch_size]
        chunk = np.stack([np.asarray(tokens[s : s + T + 1], dtype=np.int64) for s in idx])
        x, y = chunk[:, :-1], chunk[:, 1:].copy()
        if skip is not None:
            for row, k in enumerate(skip[b : b + batch_size]):
                y[row, :k] = -1
        flat = y.reshape(-1)
        valid = np.flatnonzero(flat >= 0)
        if left < len(valid):
            flat[valid[left:]] = -1
        left -= min(left, len(valid))
        yield x, y


def mean_loss(
    model,
    tokens: np.ndarray,
    n_tokens: int,
    batch_size: int = 8,
    seed: int = 1337,
    amp_dtype=None,
    progress=None,
) -> float:
    """Mean cross-entropy of `model` over `n_tokens` targets of `tokens` (nats/token)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for x, y in window_batches(tokens, n_tokens, model.config.block_size, batch_size, seed):
                xb = torch.from_numpy(x).to(device)
                yb = torch.from_numpy(y).to(device)
                valid = int((yb >= 0).sum())
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = model.loss(xb, yb)
                total += float(loss) * valid
                count += valid
                if progress:
                    progress(count, n_tokens)
    finally:
        model.train(was_training)
    return total / count


def loss_verdict(val_loss: float, train_loss: float, tokens: int, margin: float = DEFAULT_GAP_MARGIN) -> dict:
    """Figures and verdict: overfitting when val exceeds train by more than `margin` nats."""
    gap = val_loss - train_loss
    overfitting = gap > margin
    verdict = "OVERFITTING" if overfitting else "ok"
    relation = ">" if overfitting else "<="
    line = (
        f"loss: {verdict} — val {val_loss:.3f} vs train {train_loss:.3f} nats "
        f"(gap {gap:+.3f} {relation} margin {margin:g})"
    )
    return {
        "tokens": tokens,
        "val_loss": val_loss,
        "train_loss": train_loss,
        "val_perplexity": math.exp(min(val_loss, 700.0)),
        "train_perplexity": math.exp(min(train_loss, 700.0)),
        "gap": gap,
        "gap_margin": margin,
        "overfitting": overfitting,
        "verdict": verdict,
        "line": line,
    }
