"""How unequally the heads share the work: Gini, top shares, Lorenz curve, idle heads.

Importance is the loss increase when a head is removed. A head whose removal
lowers the loss carries no share of the useful work, so shares and Gini are
taken over max(importance, 0); such heads are listed separately as harmful.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# A head is idle when removing it moves the loss by less than this fraction (0.1%).
IDLE_RELATIVE_CHANGE = 1e-3
TOP_FRACTIONS = (0.10, 0.25)


def lorenz_curve(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (x, y) of the Lorenz curve: the poorest fraction x of heads holds fraction y.

    x = 0, 1/n, ..., 1 and y = cumulative share of the ascending sorted values.
    With all values zero every head holds an equal (nil) share: the diagonal.
    """
    v = np.sort(np.clip(np.asarray(values, dtype=np.float64).ravel(), 0.0, None))
    n = v.size
    x = np.arange(n + 1) / n
    total = v.sum()
    if total <= 0:
        return x, x.copy()
    return x, np.concatenate([[0.0], np.cumsum(v) / total])


def gini(values: np.ndarray) -> float:
    """Gini coefficient of max(values, 0): 0 when all equal, (n-1)/n when one holds all.

    G = sum_i sum_j |x_i - x_j| / (2 n^2 mean), computed from the ascending sort
    as 2 * sum_i i * x_(i) / (n * sum x) - (n + 1) / n with i = 1..n.
    """
    v = np.sort(np.clip(np.asarray(values, dtype=np.float64).ravel(), 0.0, None))
    n = v.size
    total = v.sum()
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(2.0 * np.sum(ranks * v) / (n * total) - (n + 1) / n)


def top_share(values: np.ndarray, fraction: float) -> float:
    """Share of the total held by the top `fraction` of heads, read off the Lorenz curve.

    Where fraction * n is not a whole number of heads the curve is linear
    between heads, i.e. the boundary head counts for the part that falls inside.
    """
    x, y = lorenz_curve(values)
    return float(1.0 - np.interp(1.0 - fraction, x, y))


@dataclass
class InequalitySummary:
    gini: float
    top_shares: dict[float, float]
    idle: list[str]
    harmful: list[str]
    n_heads: int
    positive_total: float  # sum of max(importance, 0): 0 means no head's removal raises the loss
    lorenz_x: np.ndarray = field(repr=False)
    lorenz_y: np.ndarray = field(repr=False)
    verdicts: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "gini": self.gini,
            "top_shares": {f"top_{round(f * 100)}pct": s for f, s in self.top_shares.items()},
            "idle": self.idle,
            "idle_threshold_relative": IDLE_RELATIVE_CHANGE,
            "harmful": self.harmful,
            "positive_total": self.positive_total,
            "lorenz": {"x": self.lorenz_x.tolist(), "y": self.lorenz_y.tolist()},
            "verdicts": self.verdicts,
        }


def gini_verdict(g: float) -> str:
    # Descriptive cut-offs (the usual reading of income Gini), not a test.
    if g < 0.25:
        how = "importance is spread evenly across heads"
    elif g < 0.5:
        how = "importance is moderately unequal across heads"
    else:
        how = "a few heads carry most of the importance"
    return f"Gini {g:.2f}: {how}"


def share_verdict(fraction: float, share: float, n: int) -> str:
    heads = fraction * n
    count = f"{heads:.0f}" if abs(heads - round(heads)) < 1e-9 else f"{heads:.1f}"
    ratio = share / fraction
    if ratio >= 2:
        how = "concentrated"
    elif ratio >= 1.3:
        how = "somewhat concentrated"
    else:
        how = "close to an equal split"
    return (
        f"top {fraction:.0%} of heads ({count} of {n}) carry {share:.0%} of the importance "
        f"({ratio:.1f}x their equal share: {how})"
    )


def summarize(
    importance: np.ndarray, relative_change: np.ndarray, labels: list[str]
) -> InequalitySummary:
    """Inequality of `importance` (one value per head, in `labels` order) and idle heads.

    relative_change: (ablated loss - baseline) / baseline per head, for the idle test.
    """
    imp = np.asarray(importance, dtype=np.float64).ravel()
    rel = np.asarray(relative_change, dtype=np.float64).ravel()
    n = imp.size
    g = gini(imp)
    shares = {f: top_share(imp, f) for f in TOP_FRACTIONS}
    idle = [lab for lab, r in zip(labels, rel, strict=True) if abs(r) < IDLE_RELATIVE_CHANGE]
    harmful = [lab for lab, r in zip(labels, rel, strict=True) if r <= -IDLE_RELATIVE_CHANGE]
    x, y = lorenz_curve(imp)
    verdicts = []
    positive_total = float(np.clip(imp, 0, None).sum())
    if positive_total <= 0:
        verdicts.append("no head's removal raises the loss: importance is nil everywhere")
    elif len(idle) == n:  # changes under 0.1% each: how they split among heads is noise, not structure
        verdicts.append(f"Gini {g:.2f} over changes this small (every head idle) measures noise, not which heads work")
    else:
        verdicts.append(gini_verdict(g))
        verdicts.extend(share_verdict(f, s, n) for f, s in shares.items())
    if idle:
        verdicts.append(
            f"{len(idle)} of {n} heads are idle (removal changes loss by < 0.1%): {', '.join(idle)}"
        )
    else:
        verdicts.append(f"no idle heads: removing any of the {n} heads changes loss by >= 0.1%")
    if harmful:
        heads = "1 head lowers" if len(harmful) == 1 else f"{len(harmful)} heads lower"
        verdicts.append(f"{heads} the loss by >= 0.1% when removed: {', '.join(harmful)}")
    return InequalitySummary(g, shares, idle, harmful, n, positive_total, x, y, verdicts)
