"""Pictures of heads: a layer x head heat map per statistic with a Lorenz curve, and one
head's attention pattern with token labels.

Drawn on a bare matplotlib `Figure` (Agg canvas, no pyplot state), written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt2cli.analysis.heads import STATISTICS, HeadReport
from gpt2cli.analysis.inequality import InequalitySummary
from gpt2cli.atomic import atomic_path


def _save(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)  # callers lay out (tight_layout); "tight" bbox would draw twice


# Shares of attention mass and normalised entropy live in [0, 1]: a fixed scale keeps maps comparable.
UNIT_RANGE = {"entropy", "sink", "previous_token", "induction"}
SIGNED = {"zero_importance", "mean_importance"}


def _heat_map(fig, ax, grid: np.ndarray, key: str, title: str) -> None:
    L, H = grid.shape
    shown = np.where(np.isfinite(grid), grid, np.nan)
    top = float(np.nanmax(np.abs(shown))) if np.isfinite(shown).any() else 1.0
    if key in SIGNED:  # loss changes: diverging map centred on zero (red: removal hurts)
        lim = top or 1e-12
        cmap, lo, hi = "RdBu_r", -lim, lim
    elif key in UNIT_RANGE:
        cmap, lo, hi = "viridis", 0.0, 1.0
    else:
        cmap, lo, hi = "viridis", 0.0, top or 1.0
    im = ax.imshow(shown, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.formatter.set_useOffset(False)
    bar.update_ticks()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    if L * H <= 64:  # the figures themselves, where they fit
        for i in range(L):
            for j in range(H):
                v = shown[i, j]
                if not np.isfinite(v):
                    continue
                if key in SIGNED:
                    dark = abs(v) > 0.6 * hi
                else:
                    dark = (v - lo) / (hi - lo) < 0.6
                color = "white" if dark else "black"
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7, color=color)


def plot_heads(report: HeadReport, summary: InequalitySummary, path: Path) -> Path:
    """One PNG: a heat map per statistic of `report` and the Lorenz curve of importance."""
    from matplotlib.figure import Figure

    panels = len(STATISTICS) + 1
    cols = 3
    rows = -(-panels // cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols).ravel()
    for ax, (key, title, *_) in zip(axes, STATISTICS, strict=False):
        _heat_map(fig, ax, report.grid(key), key, title)
    ax = axes[len(STATISTICS)]
    ax.plot(summary.lorenz_x, summary.lorenz_y, marker="o", markersize=3, label="heads")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="equal split")
    ax.set_xlabel("fraction of heads (least important first)")
    ax.set_ylabel("fraction of importance")
    shares = ", ".join(f"top {f:.0%}: {s:.0%}" for f, s in summary.top_shares.items())
    ax.set_title(f"Lorenz curve, Gini {summary.gini:.2f}\n{shares}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    if summary.positive_total <= 0:
        ax.text(
            0.5, 0.3, "no head's removal raises the loss", ha="center", fontsize=9, color="grey"
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    for extra in axes[panels:]:
        extra.set_visible(False)
    fig.suptitle(
        f"{report.n_layer} layers x {report.n_head} heads ({report.attention} attention), "
        f"{report.tokens:,} tokens, baseline loss {report.baseline_loss:.3f}"
    )
    fig.tight_layout()
    _save(fig, path)
    return path


def token_labels(ids: list[int]) -> list[str]:
    """Each token as readable text: spaces as '·', newlines and tabs escaped, broken UTF-8 as '?'."""
    from gpt2cli.tokenizer import get_tokenizer

    enc = get_tokenizer()
    out = []
    for i in ids:
        text = (
            enc.decode_single_token_bytes(i)
            .decode("utf-8", errors="replace")
            .replace("\ufffd", "?")
        )
        out.append(text.replace(" ", "·").replace("\n", "\\n").replace("\t", "\\t") or "∅")
    return out


def plot_attention(weights: np.ndarray, labels: list[str], title: str, path: Path) -> Path:
    """The (T, T) attention pattern: queries down, keys across, tokens on both axes."""
    from matplotlib.figure import Figure

    T = weights.shape[0]
    size = min(22.0, max(5.0, 0.28 * T + 2.5))
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.subplots()
    masked = np.ma.masked_where(np.triu(np.ones((T, T), dtype=bool), k=1), weights)
    im = ax.imshow(masked, cmap="magma", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    font = max(4.0, min(10.0, 260.0 / max(T, 1)))
    ax.set_xticks(range(T), labels=labels, rotation=90, fontsize=font)
    ax.set_yticks(range(T), labels=[f"{lab} {i}" for i, lab in enumerate(labels)], fontsize=font)
    ax.set_xlabel("key (attended-to token)")
    ax.set_ylabel("query token, position")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    return path
