"""The report's panels: one matplotlib figure each (Agg, no pyplot state) as PNG bytes,
with the figures worth reading as text and a note for everything that is missing.

Every panel is always returned, with or without its picture, so the page has
the same sections for a finished run, a run still training and a run never
evaluated; what is missing says which command would fill it in.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpt2cli.report.history import GenerationHistory, SampleView
from gpt2cli.report.load import CHECKPOINT, RunData

FIG_WIDTH = 11.0  # inches; at DPI this fills a 1100-pixel column
DPI = 100
VAL_COLOR, TRAIN_COLOR, LR_COLOR, ALARM_COLOR = "tab:red", "tab:blue", "0.45", "tab:orange"
# Alarm k of gpt2cli.analysis.alarms.mismatch_alarm: it compares the last 3 evals.
ALARM_EVALS = 3
# Overfitting line when an eval.json does not say otherwise (gpt2 eval --gap-margin default).
DEFAULT_GAP_MARGIN = 0.1


@dataclass
class Panel:
    id: str  # the HTML section id is "panel-<id>"; the PNG beside the page is "<stem>-<id>.png"
    title: str
    what: str  # one sentence: what the picture shows
    png: bytes | None = None
    alt: str = ""
    facts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _figure(rows: int, cols: int, height: float, sharex: bool = False):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIG_WIDTH, height), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=sharex, squeeze=False)
    return fig, axes


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _series(records: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    pairs = [(r[x], r[y]) for r in records if _finite(r.get(x)) and _finite(r.get(y))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def step_range(run: RunData) -> tuple[float, float] | None:
    """The step axis shared by the loss and generation panels, so their x positions line up."""
    steps = [r["step"] for r in run.train_log + run.evals]
    if not steps:
        return None
    lo, hi = min(steps), max(steps)
    pad = max(0.5, 0.03 * (hi - lo))
    return lo - pad, hi + pad


def _ckpt_cmd(run: RunData) -> str:
    return str(run.root / CHECKPOINT)


# -- loss -----------------------------------------------------------------------------


def loss_panel(run: RunData) -> Panel:
    panel = Panel(
        "loss",
        "Loss and learning rate",
        "Training loss at each logged step and val/train loss at each eval, against optimizer steps "
        "(left) and tokens seen (right), with the learning rate on the right-hand axis.",
    )
    if not run.train_log and not run.evals:
        panel.missing.append("no loss logged yet: metrics.jsonl has no step or eval records")
        return panel
    if not run.train_log:
        panel.missing.append("no training step logged yet (one is logged every train.log_every steps)")
    if not run.evals:
        panel.missing.append("no eval yet: val loss appears at the first eval (--eval-every)")

    fig, axes = _figure(1, 2, 4.2)
    for ax, key, label in ((axes[0, 0], "step", "step"), (axes[0, 1], "tokens_seen", "tokens seen")):
        handles = []
        x, y = _series(run.train_log, key, "loss")
        if x:
            handles += ax.plot(x, y, color=TRAIN_COLOR, lw=1.0, alpha=0.6, label="train loss (logged steps)")
        x, y = _series(run.evals, key, "train_loss")
        if x:
            handles += ax.plot(x, y, "s--", color=TRAIN_COLOR, ms=4, lw=1.2, label="train loss (eval batches)")
        x, y = _series(run.evals, key, "val_loss")
        if x:
            handles += ax.plot(x, y, "o-", color=VAL_COLOR, ms=4, lw=1.5, label="val loss")
        ax.set_xlabel(label)
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        x, y = _series(run.train_log, key, "lr")
        if x:
            twin = ax.twinx()
            handles += twin.plot(x, y, color=LR_COLOR, lw=1.0, ls=":", label="learning rate")
            twin.set_ylabel("learning rate", color=LR_COLOR)
            twin.tick_params(axis="y", colors=LR_COLOR)
            twin.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if key == "step" and (rng := step_range(run)):
            ax.set_xlim(*rng)
        ax.legend(handles=handles, fontsize=8, loc="upper right")
    axes[0, 0].set_title("against optimizer steps", fontsize=10)
    axes[0, 1].set_title("against tokens seen", fontsize=10)
    panel.png = _png(fig)
    panel.alt = "train and val loss against step and tokens, with the learning rate"

    if run.train_log:
        last = run.train_log[-1]
        panel.facts.append(f"last logged step {last['step']}: train loss {last['loss']:.4f}")
    vals = [r for r in run.evals if _finite(r.get("val_loss"))]
    if vals:
        best = min(vals, key=lambda r: r["val_loss"])
        panel.facts.append(
            f"val loss {vals[-1]['val_loss']:.4f} at step {vals[-1]['step']} "
            f"(lowest {best['val_loss']:.4f} at step {best['step']})"
        )
    return panel


# -- generation quality -------------------------------------------------------------------


def generation_panel(run: RunData, history: GenerationHistory) -> Panel:
    panel = Panel(
        "generation",
        "Generation quality",
        "At each eval, on the training-time samples: seq-rep-4 (share of repeated 4-grams per "
        "sample, Welleck et al. 2019), the share of samples holding a back-to-back loop, and the "
        "mean next-token entropy; on the same step axis as the loss. Vertical lines mark evals "
        "where the loss–generation mismatch alarm fired (val loss falling while repetition rises).",
    )
    points = history.points
    if not points:
        if not run.evals:
            panel.missing.append("no eval yet: generation figures appear at the first eval (--eval-every)")
        elif not run.samples:
            panel.missing.append(
                "no generation figures: the eval records have none and samples.jsonl holds no samples "
                "(train.sample_prompts empty?)"
            )
        else:
            panel.missing.append("no generation figures: no eval record matches a step in samples.jsonl")
        return panel
    if history.source == "samples":
        panel.facts.append(
            "the eval records of metrics.jsonl carry no generation figures: these are computed from "
            "samples.jsonl with the same functions, and the alarm recomputed over the evals so far"
        )

    fig, axes = _figure(3, 1, 7.0, sharex=True)
    steps = [p.step for p in points]
    rows = (
        ("seq_rep_4", "seq-rep-4", "tab:purple", (0.0, 1.0)),
        ("loop_share", "samples with a loop", "tab:brown", (0.0, 1.0)),
        ("mean_entropy", "mean entropy (nats)", "tab:green", None),
    )
    alarms = [p for p in points if p.mismatch]
    for ax, (key, label, color, limits) in zip(axes[:, 0], rows, strict=True):
        xs = [p.step for p in points if getattr(p, key) is not None]
        ys = [getattr(p, key) for p in points if getattr(p, key) is not None]
        if xs:
            ax.plot(xs, ys, "o-", color=color, ms=4, lw=1.5)
        else:
            ax.text(0.5, 0.5, f"{label}: not recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
        if limits:
            ax.set_ylim(limits[0] - 0.03, limits[1] + 0.03)
        ax.set_ylabel(label)
        ax.ticklabel_format(axis="y", useOffset=False)  # entropies near 10.8 nats: no "1e-5 + 10.8"
        ax.grid(alpha=0.3)
        for i, p in enumerate(alarms):
            ax.axvline(p.step, color=ALARM_COLOR, lw=2, ls="--", alpha=0.8,
                       label="mismatch alarm" if i == 0 else None)
    top = axes[0, 0]
    vx = [p.step for p in points if p.val_loss is not None]
    vy = [p.val_loss for p in points if p.val_loss is not None]
    if vx:
        twin = top.twinx()
        twin.plot(vx, vy, color=VAL_COLOR, lw=1, alpha=0.5, label="val loss")
        twin.set_ylabel("val loss", color=VAL_COLOR)
        twin.tick_params(axis="y", colors=VAL_COLOR)
    handles, labels = top.get_legend_handles_labels()
    if vx:
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        top.legend(handles, labels, fontsize=8, loc="upper left")
    axes[-1, 0].set_xlabel("step")
    if rng := step_range(run):
        axes[-1, 0].set_xlim(*rng)
    if len(steps) == 1:
        fig.suptitle("one eval so far: the trend appears with the next", fontsize=9, color="grey")
    panel.png = _png(fig)
    panel.alt = "seq-rep-4, loop share and mean entropy against step, with mismatch alarms"

    for p in alarms:
        panel.facts.append(f"step {p.step}: {p.mismatch}")
    if not alarms:
        if len(points) < ALARM_EVALS:
            panel.facts.append(
                f"mismatch alarm: needs {ALARM_EVALS} evals with generation figures, {len(points)} so far"
            )
        else:
            panel.facts.append(f"mismatch alarm: did not fire at any of {len(points)} evals")
    return panel


# -- overfitting and memorization -------------------------------------------------------


def _eval_step(doc) -> int | None:
    """The checkpoint step an eval.json was made at."""
    step = _dict(doc.data.get("checkpoint")).get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def overfitting_panel(run: RunData) -> Panel:
    panel = Panel(
        "overfitting",
        "Overfitting and memorization",
        "Left: val loss minus train loss at each eval (above the margin = overfitting). Right: the "
        "share of train and of val windows whose suffix greedy decoding reproduces verbatim "
        "(extraction, from `gpt2 eval`): train far above val means memorized training text.",
    )
    gaps = [
        (r["step"], r["val_loss"] - r["train_loss"])
        for r in run.evals
        if _finite(r.get("val_loss")) and _finite(r.get("train_loss"))
    ]
    evals = [d for d in run.eval_results if isinstance(_dict(d.data.get("memorization")).get("extraction"), dict)]
    if not gaps:
        panel.missing.append("no eval with both val and train loss yet: the gap appears at the first eval")
    if not run.eval_results:
        panel.missing.append(
            f"no eval.json: run `gpt2 eval {_ckpt_cmd(run)}` (it saves RUN_DIR/eval.json) for extraction rates"
        )
    if not gaps and not evals:
        return panel

    margin = DEFAULT_GAP_MARGIN
    for d in run.eval_results:
        m = _dict(d.data.get("loss")).get("gap_margin")
        if _finite(m):
            margin = m
    fig, axes = _figure(1, 2 if evals else 1, 4.0)
    ax = axes[0, 0]
    if gaps:
        ax.plot([g[0] for g in gaps], [g[1] for g in gaps], "o-", color="tab:purple", ms=4, label="val − train (training evals)")
    eval_gaps = [
        (_eval_step(d), d.data["loss"]["gap"])
        for d in run.eval_results
        if _finite(_dict(d.data.get("loss")).get("gap")) and _eval_step(d) is not None
    ]
    if eval_gaps:
        ax.plot([g[0] for g in eval_gaps], [g[1] for g in eval_gaps], "*", color="black", ms=11, label="val − train (gpt2 eval)")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.axhline(margin, color=VAL_COLOR, lw=1, ls="--", label=f"overfitting margin {margin:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("val loss − train loss (nats)")
    ax.set_title("generalisation gap", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if rng := step_range(run):
        ax.set_xlim(*rng)

    if evals:
        ax = axes[0, 1]
        x = np.arange(len(evals))
        width = 0.38
        for k, (split, color) in enumerate((("train", TRAIN_COLOR), ("val", VAL_COLOR))):
            shares, labels = [], []
            for d in evals:
                ex = _dict(d.data["memorization"]["extraction"].get(split))
                share = ex.get("share")
                shares.append(share if _finite(share) else 0.0)
                labels.append(f"{ex.get('extracted', '?')}/{ex.get('windows', '?')}")
            bars = ax.bar(x + (k - 0.5) * width, shares, width, color=color, label=f"{split} windows")
            for bar, text in zip(bars, labels, strict=True):
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(x, [f"step {_eval_step(d)}\n{d.path.name}" for d in evals], fontsize=8)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("share of windows extracted")
        ex0 = evals[-1].data["memorization"]["extraction"]
        ax.set_title(
            f"extraction: {ex0.get('prompt_tokens', '?')}-token prompt, "
            f"{ex0.get('suffix_tokens', '?')}-token greedy suffix", fontsize=10
        )
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="upper right")
    panel.png = _png(fig)
    panel.alt = "val-train gap against step, and extraction rate of train vs val windows"

    if gaps:
        panel.facts.append(f"gap at step {gaps[-1][0]}: {gaps[-1][1]:+.4f} nats (margin {margin:g})")
    for d in run.eval_results:
        verdicts = d.data.get("verdicts")
        for line in verdicts if isinstance(verdicts, list) else []:
            if isinstance(line, str) and line.startswith(("loss", "memorization")):
                panel.facts.append(f"{d.path.name} (step {_eval_step(d)}): {line}")
    if run.eval_results and run.checkpoint and run.checkpoint.step is not None:
        newest = _eval_step(run.eval_results[-1])
        if isinstance(newest, int) and newest < run.checkpoint.step:
            panel.facts.append(
                f"the newest eval is of step {newest}; the checkpoint is now at step {run.checkpoint.step} "
                f"(re-run `gpt2 eval {_ckpt_cmd(run)}`)"
            )
    return panel


# -- attention heads ------------------------------------------------------------------------


def _dict(value: Any) -> dict:
    """`value` if it is a JSON object, else {} (a hand-edited or foreign file must not crash the report)."""
    return value if isinstance(value, dict) else {}


def _grid(data: dict, key: str) -> np.ndarray | None:
    rows = _dict(data.get("grids")).get(key)
    try:
        grid = np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=float)
    except (TypeError, ValueError):
        return None
    return grid if grid.ndim == 2 and grid.size else None


def heads_panel(run: RunData) -> Panel:
    panel = Panel(
        "heads",
        "Attention-head inequality",
        "Left: how much the loss rises when each head is zeroed (layer × head; red = the model "
        "needs it, blue = removing it helps). Right: the Lorenz curve of that importance — the "
        "further below the diagonal, the fewer heads carry the model (Gini coefficient).",
    )
    if run.heads is None:
        panel.missing.append(
            f"no heads.json: run `gpt2 inspect heads {_ckpt_cmd(run)} --json {run.root / 'heads.json'}`"
        )
        return panel
    data = run.heads.data
    grid = _grid(data, "zero_importance")
    ineq = _dict(data.get("inequality"))
    lorenz = _dict(ineq.get("lorenz"))
    lx, ly = lorenz.get("x"), lorenz.get("y")
    if grid is None or not isinstance(lx, list) or not isinstance(ly, list) or not lx or len(lx) != len(ly):
        panel.missing.append(f"{run.heads.path.name}: has no zero-ablation grid or Lorenz curve")
        return panel

    fig, axes = _figure(1, 2, 4.2)
    ax = axes[0, 0]
    L, H = grid.shape
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    lim = lim or 1e-12
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    fig.colorbar(im, ax=ax, label="Δ loss when zeroed (nats)")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("importance: zero-ablation Δloss", fontsize=10)
    if L * H <= 64:  # the numbers themselves, where they fit
        for i in range(L):
            for j in range(H):
                if np.isfinite(grid[i, j]):
                    dark = abs(grid[i, j]) > 0.6 * lim
                    ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
    ax = axes[0, 1]
    ax.plot(lx, ly, marker="o", ms=3, color="tab:blue", label="heads")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="equal split")
    ax.fill_between(lx, ly, lx, color="tab:blue", alpha=0.1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("fraction of heads (least important first)")
    ax.set_ylabel("fraction of importance")
    gini = ineq.get("gini")
    ax.set_title(f"Lorenz curve, Gini {gini:.2f}" if _finite(gini) else "Lorenz curve", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    panel.png = _png(fig)
    panel.alt = "heat map of head importance and its Lorenz curve"

    panel.facts.append(
        f"{run.heads.path.name}: {L} layers × {H} heads of {data.get('checkpoint', '?')}, "
        f"{data.get('tokens', '?')} tokens of {data.get('source', '?')}"
    )
    verdicts = ineq.get("verdicts")
    panel.facts += [v for v in verdicts if isinstance(v, str)] if isinstance(verdicts, list) else []
    if run.checkpoint and run.heads.mtime < run.checkpoint.mtime:
        panel.facts.append(
            f"{run.heads.path.name} is older than the checkpoint (now at step {run.checkpoint.step}): "
            f"re-run `gpt2 inspect heads` to update it"
        )
    return panel


# -- samples --------------------------------------------------------------------------------


def samples_panel(run: RunData, views: list[SampleView]) -> Panel:
    """Text, not a figure: html.py lays out the samples with their loops marked."""
    panel = Panel(
        "samples",
        "Samples at each eval",
        "The fixed prompts completed at each eval (top-k 40, fixed seed, so evals are comparable). "
        "Highlighted: every span of 1–32 tokens repeated back to back at least 3 times.",
    )
    if not views:
        panel.missing.append(
            "no samples yet: samples.jsonl is written at each eval (none if train.sample_prompts is empty)"
        )
        return panel
    steps = sorted({v.step for v in views})
    looping = sum(bool(v.loops) for v in views)
    panel.facts.append(
        f"{len(views)} samples at {len(steps)} evals; {looping} hold a loop "
        f"(loops found on {views[0].tokens_from})"
    )
    return panel
