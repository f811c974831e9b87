"""Loss on val and train, the same number of tokens each, and the overfitting verdict.

Mean cross-entropy (nats per token) over random windows of the split drawn
with a fixed seed, the model in eval mode (no dropout). Perplexity is
exp(mean cross-entropy). The gap val - train measures overfitting: a model
that generalises scores about the same on text it has not seen; one that has
memorised its training set scores much better on it. The default margin of
0.1 nats means the model finds unseen text about 10% more surprising
(perplexity ratio e^0.1 = 1.105) than the text it was trained on.

How sure the gap is: the tokens of one story are not independent draws, so
the interval comes from a bootstrap over documents (each document's loss sum
and token count resampled together, val and train independently). A val
split of 62 stories gives a wide interval; the verdict then says "not
enough evidence" rather than guessing (gpt2cli.analysis.evidence).
"""

from __future__ import annotations

import math

import numpy as np

from gpt2cli.analysis.evidence import (
    LEVEL,
    NOT_ENOUGH,
    RESAMPLES,
    bootstrap_ratio,
    fmt_interval,
    graded_verdict,
    interval,
)

DEFAULT_GAP_MARGIN = 0.1


def window_batches(
    tokens: np.ndarray, n_tokens: int, block_size: int, batch_size: int, seed: int, positions: bool = False
):
    """Yield (x, y) int64 arrays of windows; exactly `n_tokens` targets are >= 0 (-1: ignored).

    positions: yield (x, y, pos) instead, pos[b, t] the index in `tokens` of target y[b, t].

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
        if positions:
            yield x, y, idx[:, None] + 1 + np.arange(T)[None, :]
        else:
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


def document_ids(tokens: np.ndarray, positions: np.ndarray, eot_id: int) -> np.ndarray:
    """The document each token position belongs to (a document's closing EOT counts as its own)."""
    eots = np.flatnonzero(np.asarray(tokens) == eot_id)
    return np.searchsorted(eots, positions, side="left")


def document_losses(
    model,
    tokens: np.ndarray,
    n_tokens: int,
    eot_id: int,
    batch_size: int = 8,
    seed: int = 1337,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """(loss sums, token counts) per document over the same `n_tokens` targets `mean_loss` scores.

    sums.sum() / counts.sum() is the mean loss; the documents are the units a
    bootstrap resamples. Only documents with at least one scored target appear.
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses, where = [], []
    done = 0
    try:
        with torch.no_grad():
            for x, y, pos in window_batches(tokens, n_tokens, model.config.block_size, batch_size, seed, True):
                h = model.hidden(torch.from_numpy(x).to(device))
                yb = torch.from_numpy(y).to(device)
                for b in range(h.shape[0]):  # one row of logits at a time: (T, vocab) fits, (B, T, vocab) may not
                    keep = yb[b] >= 0
                    if not bool(keep.any()):
                        continue
                    logits = model.logits_from_hidden(h[b][keep]).float()
                    losses.append(F.cross_entropy(logits, yb[b][keep], reduction="none").cpu().numpy())
                    where.append(pos[b][keep.cpu().numpy()])
                    done += int(keep.sum())
                if progress:
                    progress(done, n_tokens)
    finally:
        model.train(was_training)
    loss = np.concatenate(losses).astype(np.float64)
    docs = document_ids(tokens, np.concatenate(where), eot_id)
    _, inverse = np.unique(docs, return_inverse=True)
    return np.bincount(inverse, weights=loss), np.bincount(inverse).astype(np.float64)


def gap_evidence(val: tuple[np.ndarray, np.ndarray], train: tuple[np.ndarray, np.ndarray],
                 resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """The val - train gap with its bootstrap interval over documents (val and train resampled apart)."""
    dv = bootstrap_ratio(*val, resamples=resamples, seed=seed)
    dt = bootstrap_ratio(*train, resamples=resamples, seed=seed + 1)
    lo, hi = interval(dv - dt)
    return {
        "level": LEVEL,
        "resamples": resamples,
        "val_documents": int(len(val[0])),
        "train_documents": int(len(train[0])),
        "val_interval": list(interval(dv)),
        "train_interval": list(interval(dt)),
        "gap_interval": [lo, hi],
    }


def loss_verdict(
    val_loss: float,
    train_loss: float,
    tokens: int,
    margin: float = DEFAULT_GAP_MARGIN,
    evidence: dict | None = None,
) -> dict:
    """Figures and verdict: OVERFITTING when the whole 95% interval of val - train is above `margin`.

    evidence: `gap_evidence` of the two splits. Without it (or with a gap
    that is not finite) the verdict is "not enough evidence" when the gap
    exceeds the margin: one number says nothing about chance.
    """
    gap = val_loss - train_loss
    lo, hi = (evidence or {}).get("gap_interval", [None, None])
    # graded_verdict gives "not enough evidence" for a gap that is not finite, and never fires without lo.
    verdict = graded_verdict(gap, lo, [("OVERFITTING", margin)])
    overfitting = verdict == "OVERFITTING"
    if evidence:
        basis = (f"95% interval {fmt_interval(lo, hi, '+.3f')} over {evidence['val_documents']} val and "
                 f"{evidence['train_documents']} train documents")
    else:
        basis = "no interval"
    if verdict == "OVERFITTING":
        tail = f"gap {gap:+.3f}, {basis}: all above margin {margin:g}"
    elif verdict == NOT_ENOUGH:
        tail = f"gap {gap:+.3f} > margin {margin:g}, but {basis} reaches below it; more val text would decide"
    else:
        tail = f"gap {gap:+.3f} <= margin {margin:g}; {basis}"
    line = f"loss: {verdict} — val {val_loss:.3f} vs train {train_loss:.3f} nats ({tail})"
    out = {
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
    if evidence:
        out["evidence"] = evidence
    return out
