"""`gpt2 demo`: the whole pipeline on the built-in stories, sized for a laptop CPU.

Stages, yielded as events for the CLI to render: make and tokenize the
corpus (reused when OUT/data already holds the same one), then train the tiny
preset on the CPU. With the settings below the val loss on the built-in
stories falls below 3.0 after about 125K tokens (60 steps) and reaches about
2.3 after the default 100 steps (205K tokens, a tenth of an epoch of 10 MB).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gpt2cli.errors import UserError
from gpt2cli.train.loop import TrainSetup, train
from gpt2cli.train.plan import plan_run

DEFAULT_CORPUS_BYTES = 10_000_000
DEFAULT_STEPS = 100
VAL_FRACTION = 0.01  # ~25K val tokens from 10 MB: enough for stable val batches
CORPUS_SEED = 0

# The tiny preset (4 layers, 4 heads, 256 wide) with settings for a short CPU run:
# 16 x 128 tokens per step, a high peak lr with a short warm-up (small models
# tolerate it, and the cosine decay to 1e-4 settles the loss at the end).
DEMO_SETTINGS = [
    "train.batch_size=16",
    "train.block_size=128",
    "train.lr=3e-3",
    "train.min_lr=1e-4",
    "train.warmup_steps=15",
    "train.eval_every=50",
    "train.eval_batches=3",
    "train.save_every=1000000",  # at the end only (and on Ctrl-C)
    "train.log_every=5",
    "train.sample_tokens=40",
    'train.device="cpu"',
]


@dataclass
class Stage:
    """A new stage of the demo begins."""

    index: int
    total: int
    title: str


@dataclass
class DataReady:
    data_dir: Path
    reused: bool
    tokens: dict[str, int]
    seconds: float


def demo_overrides(steps: int, extra: list[str] | None = None) -> list[str]:
    return [*DEMO_SETTINGS, f"train.steps={steps}", *(extra or [])]


def _matching_corpus(data_dir: Path, corpus_bytes: int):
    """The data dir's meta when it already holds this corpus, else None."""
    from gpt2cli.data.meta import read_meta

    if not (data_dir / "meta.json").is_file():
        return None
    try:
        meta = read_meta(data_dir)
    except UserError:
        return None
    made = meta.builtin_stories or {}
    # write_corpus stops at the first whole story past the size asked for.
    if made.get("seed") == CORPUS_SEED and corpus_bytes <= made.get("bytes", -1) < corpus_bytes + 10_000:
        return meta
    return None


def fresh_run_dir(root: Path) -> Path:
    """OUT/run, or OUT/run-2, run-3 ... when an earlier demo's run is there (kept)."""
    candidate, n = root / "run", 1
    while (candidate / "ckpt.safetensors").exists() or (candidate / "ckpt.optim.safetensors").exists():
        n += 1
        candidate = root / f"run-{n}"
    return candidate


def prepare_data(out: Path, corpus_bytes: int) -> Iterator:
    """Yield tokenize progress, then DataReady (OUT/data reused when it matches)."""
    from gpt2cli.data.shards import TokenizeOptions, TokenizeSummary, tokenize_corpus

    data_dir = out / "data"
    meta = _matching_corpus(data_dir, corpus_bytes)
    if meta is not None:
        yield DataReady(data_dir, True, dict(meta.tokens), 0.0)
        return
    opts = TokenizeOptions(
        out_dir=data_dir,
        builtin_stories=corpus_bytes,
        val_fraction=VAL_FRACTION,
        seed=CORPUS_SEED,
        force=data_dir.exists(),
    )
    for event in tokenize_corpus(opts):
        if isinstance(event, TokenizeSummary):
            yield DataReady(data_dir, False, dict(event.tokens), event.seconds)
        else:
            yield event


def demo_setup(data_dir: Path, run_dir: Path, steps: int, extra: list[str] | None = None) -> TrainSetup:
    return plan_run("tiny", demo_overrides(steps, extra), data_dir, run_dir)


def run_demo(
    out: Path,
    corpus_bytes: int = DEFAULT_CORPUS_BYTES,
    steps: int = DEFAULT_STEPS,
    minutes: float | None = None,
    extra_settings: list[str] | None = None,
) -> Iterator:
    """The demo's data and training stages as one stream of events.

    minutes: a cap on training time; the run then stops early (eval, save).
    extra_settings: more `section.key=value` overrides (tests shrink the model).
    """
    if corpus_bytes < 200_000:
        raise UserError(f"--corpus-size {corpus_bytes} bytes: too small for the demo (at least 200KB)")
    out = Path(out)
    total = 2
    yield Stage(1, total, f"built-in stories ({corpus_bytes / 1e6:.1f} MB), tokenized into {out / 'data'}")
    data_dir = None
    for event in prepare_data(out, corpus_bytes):
        if isinstance(event, DataReady):
            data_dir = event.data_dir
        yield event
    run_dir = fresh_run_dir(out)
    setup = demo_setup(data_dir, run_dir, steps, extra_settings)
    yield Stage(2, total, f"training the tiny preset on the CPU for {steps} steps into {run_dir}")
    yield from train(setup, time_budget=minutes * 60 if minutes else None)
