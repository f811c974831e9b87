"""What the training loop yields, for the CLI (or a notebook) to render.

The loop never prints; each event is a plain record of what just happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Started:
    run_dir: Path
    start_step: int  # 0 for a fresh run, the checkpoint's step on --resume
    total_steps: int
    parameters: int
    device: str
    dtype: str  # "fp32", "bf16 autocast", "fp16 autocast + grad scaler"
    tokens_per_step: int
    resumed: bool
    notes: list[str] = field(default_factory=list)
    loss: str = ""  # which training loss runs and why, e.g. "loss: chunked cross-entropy (--loss chunked)"


@dataclass
class Logged:
    """A log interval: the numbers of its last step, rates over the interval."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_sec: float
    tokens_seen: int
    elapsed: float
    eta: float  # seconds left at the interval's rate
    mfu: float | None
    skipped: int  # non-finite steps skipped so far


@dataclass
class Sample:
    prompt: str
    text: str
    mean_entropy: float
    stop_reason: str
    tokens: list[int] = field(default_factory=list)  # the new tokens, EOT dropped
    entropies: list[float] = field(default_factory=list)


@dataclass
class Evaluated:
    step: int
    train_loss: float
    val_loss: float
    samples: list[Sample]
    seconds: float
    generation: dict = field(default_factory=dict)  # text_metrics.generation_metrics of the samples
    mismatch: str | None = None  # the loss–generation mismatch alarm, when it fires
    mismatch_note: str | None = None  # the alarm's "not enough evidence" line, when a figure rose by chance


@dataclass
class Saved:
    step: int
    path: Path


@dataclass
class Finished:
    """The loop's last event. reason: "done", "interrupted" (a signal) or "time" (budget)."""

    step: int
    reason: str
    path: Path
    val_loss: float | None
    elapsed: float
    signal: str | None = None  # "SIGINT"/"SIGTERM" when interrupted by one
