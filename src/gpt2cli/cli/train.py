"""`gpt2 train`: train a preset on a tokenized data dir, with a live display."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from gpt2cli.cli.common import err_console, out_console
from gpt2cli.cli.common import note as _note
from gpt2cli.errors import UserError
from gpt2cli.preset_files import preset_names

DTYPES = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
ATTENTIONS = ("standard", "linear", "gated")
LOSSES = ("auto", "chunked", "full")


def note(text: str) -> None:
    """Name a default on stderr; under torchrun only rank 0 does, so the lines are not repeated."""
    if os.environ.get("RANK", "0") == "0":
        _note(text)


def _choice(flag: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise UserError(f"{flag} {value}: expected one of {', '.join(choices)}")


def flag_overrides(**flags) -> list[str]:
    """Command-line flags as `section.key=value` overrides (None = not given)."""
    keys = {
        "steps": "train.steps",
        "batch_size": "train.batch_size",
        "block_size": "train.block_size",
        "grad_accum": "train.grad_accum",
        "lr": "train.lr",
        "dtype": "train.dtype",
        "device": "train.device",
        "eval_every": "train.eval_every",
        "save_every": "train.save_every",
        "seed": "train.seed",
        "skip_nonfinite": "train.skip_nonfinite",
        "peak_tflops": "train.peak_tflops",
        "attention": "model.attention",
        "compile": "train.compile",
        "loss": "train.loss",
        "dropout": "model.dropout",
        "activation_checkpointing": "train.activation_checkpointing",
    }
    out = []
    for name, value in flags.items():
        if value is None or (name in ("compile", "activation_checkpointing") and value is False):
            continue
        text = json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else repr(value)
        out.append(f"{keys[name]}={text}")
    return out


def _format_seconds(s: float) -> str:
    s = max(0, int(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def _stats(logged, val: tuple[int, float] | None) -> str:
    parts = [f"loss {logged.loss:.4f}"]
    if val is not None:  # the latest eval's, which may be many steps old: say which step it was
        parts.append(f"val {val[1]:.4f} @{val[0]}")
    parts += [f"lr {logged.lr:.2e}", f"{logged.tokens_per_sec:,.0f} tok/s"]
    if logged.mfu is not None:
        parts.append(f"MFU {100 * logged.mfu:.1f}%")
    parts.append(f"ETA {_format_seconds(logged.eta)}")
    if logged.skipped:
        parts.append(f"skipped {logged.skipped} non-finite")
    return " | ".join(parts)


def _one_line(text: str, limit: int = 240) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class _LiveView:
    """On a terminal: a progress bar and, under it, the latest numbers (two lines, any width)."""

    def __init__(self, console, start: int, total: int):
        from rich.console import Group
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text

        self.progress = Progress(
            TextColumn("step"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(), console=console
        )
        self.task = self.progress.add_task("train", total=total, completed=start)
        self.stats = Text("")
        self.live = Live(Group(self.progress, self.stats), console=console, refresh_per_second=4)
        self.live.start()
        self.console = self.live.console

    def update(self, step: int, stats: str) -> None:
        self.progress.update(self.task, completed=step)
        self.stats.plain = stats

    def stop(self) -> None:
        self.live.stop()


def render_training(events, console=err_console, show_samples: bool = True):
    """Show the loop's events (a live view on a terminal, plain lines otherwise).

    Returns the last event (`Finished`).
    """
    from gpt2cli.train.events import Evaluated, Finished, Logged, Saved, Started

    view = None
    val = None
    finished = None

    def say(text: str) -> None:
        (view.console if view is not None else console).print(text, markup=False, soft_wrap=True)

    try:
        for event in events:
            if isinstance(event, Started):
                for line in event.notes:
                    say(line)
                what = "resuming" if event.resumed else "training"
                say(
                    f"{what} {event.run_dir}: {event.parameters:,} parameters on {event.device} "
                    f"({event.dtype}), {event.tokens_per_step:,} tokens/step, "
                    f"steps {event.start_step}->{event.total_steps}"
                )
                if event.loss:
                    say(event.loss)
                if console.is_terminal:
                    view = _LiveView(console, event.start_step, event.total_steps)
            elif isinstance(event, Logged):
                if view is not None:
                    view.update(event.step, _stats(event, val))
                else:
                    say(f"step {event.step} | {_stats(event, val)}")
            elif isinstance(event, Evaluated):
                val = (event.step, event.val_loss)
                say(
                    f"step {event.step}: val loss {event.val_loss:.4f} | train loss {event.train_loss:.4f} "
                    f"(eval {event.seconds:.1f}s)"
                )
                gen = event.generation
                if gen.get("seq_rep_4") is not None:
                    say(
                        f"  samples: seq-rep-4 {gen['seq_rep_4']:.2f} | loops in {gen['loop_share']:.0%} "
                        f"| entropy {gen.get('mean_entropy') or float('nan'):.2f} nats"
                    )
                if event.mismatch:
                    say(f"  warning: {event.mismatch}")  # the alarm's line begins with its name
                elif event.mismatch_note:
                    say(f"  {event.mismatch_note}")
                if show_samples:
                    shown = set()
                    for s in event.samples:  # one per prompt: the rest are evidence for the figures
                        if s.prompt not in shown:
                            shown.add(s.prompt)
                            say(f"  [{s.prompt}] {_one_line(s.text)}")
            elif isinstance(event, Saved):
                say(f"step {event.step}: saved {event.path}")
            elif isinstance(event, Finished):
                finished = event
    finally:
        if view is not None:
            view.stop()
    return finished


def train_cmd(
    preset: str = typer.Option(
        None, "--preset", help=f"{', '.join(preset_names())} or a FILE.toml (default: tiny; finetune with --init-from)."
    ),
    attention: str = typer.Option(None, "--attention", help="standard|linear|gated (default: the preset's)."),
    data: Path = typer.Option(None, "--data", help="Tokenized data dir (default: the only/newest under ./data)."),
    out: Path = typer.Option(None, "--out", help="Run dir (default: runs/DATA-PRESET-ATTENTION)."),
    steps: int = typer.Option(None, "--steps", help="Optimizer steps in all."),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Sequences per micro-batch on each rank (global batch: x ranks x --grad-accum)."
    ),
    block_size: int = typer.Option(None, "--block-size", help="Training context (tokens per sequence)."),
    grad_accum: int = typer.Option(None, "--grad-accum", help="Micro-batches per step."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
    dtype: str = typer.Option(None, "--dtype", help="auto|fp32|bf16|fp16 (auto: bf16 autocast where supported)."),
    device: str = typer.Option(None, "--device", help="auto|cpu|cuda|mps."),
    eval_every: int = typer.Option(None, "--eval-every", help="Steps between evals (losses + samples)."),
    save_every: int = typer.Option(None, "--save-every", help="Steps between checkpoints."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    seed: int = typer.Option(None, "--seed", help="Fixes initialisation, data order and dropout."),
    set_: list[str] = typer.Option(None, "--set", help="Override any preset field: model.KEY=VALUE or train.KEY=VALUE."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model's loss."),
    loss: str = typer.Option(
        None, "--loss",
        help="auto|chunked|full: the training loss (auto: full logits on CUDA with --compile when they fit, "
        "else chunked).",
    ),
    skip_nonfinite: int = typer.Option(None, "--skip-nonfinite", help="Skip up to N steps with a non-finite loss/gradient."),
    peak_tflops: float = typer.Option(None, "--peak-tflops", help="The device's peak TFLOP/s, to show MFU."),
    nproc: int = typer.Option(None, "--nproc", help="Data-parallel ranks on this machine (launches torchrun)."),
    fsdp: bool = typer.Option(False, "--fsdp", help="Shard weights, grads and AdamW state over the ranks (FSDP2)."),
    init_from: str = typer.Option(
        None, "--init-from",
        help="Start from pretrained weights: a gpt2cli checkpoint, a Hugging Face GPT-2 dir or model.safetensors, "
        "or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, owner/name). Default preset then: finetune.",
    ),
    dropout: float = typer.Option(None, "--dropout", help="Dropout probability (e.g. 0.1 when fine-tuning)."),
    log: list[str] = typer.Option(
        None, "--log", "--log-to",
        help="Also log to wandb or tensorboard (repeatable; needs pip install 'gpt2cli\\[wandb]' etc.). "
        "Under torchrun spell it --log-to: torchrun's parser takes --log for its own --log-dir.",
    ),
    activation_checkpointing: bool = typer.Option(
        False, "--activation-checkpointing", help="Recompute each block in backward: less memory, ~1/3 more compute."
    ),
) -> None:
    """Train GPT-2 on a tokenized data dir; checkpoints, metrics and samples go to the run dir.

    Writes RUN_DIR/ckpt.safetensors (+ ckpt.optim.safetensors to resume),
    metrics.jsonl, samples.jsonl and config.json. Ctrl-C saves and exits.

    Several GPUs: --nproc N runs N data-parallel ranks here (torchrun);
    --batch-size is per rank, so a step sees batch-size x N x grad-accum
    sequences. Several machines: run `torchrun ... -m gpt2cli train ...`.

    Examples:
      gpt2 train --preset tiny --attention linear
      gpt2 train --data data/stories --out runs/t1 --steps 500 --set model.dropout=0.1
      gpt2 train --out runs/t1 --resume --steps 1000
      gpt2 train --preset medium --nproc 4 --batch-size 8 --fsdp
      gpt2 train --init-from gpt2 --data data/mytext --log tensorboard
      gpt2 train --preset large --batch-size 8 --block-size 1024 --activation-checkpointing
    """
    from gpt2cli.defaults import default_data_dir
    from gpt2cli.train import default_run_dir, plan_run, train
    from gpt2cli.train.loggers import check_backends
    from gpt2cli.train.plan import default_preset

    # Every number's range is checked as it is parsed (gpt2cli.bounds).
    _choice("--dtype", dtype, DTYPES)
    _choice("--device", device, DEVICES)
    _choice("--attention", attention, ATTENTIONS)
    _choice("--loss", loss, LOSSES)
    check_backends(log or [])
    if nproc is not None:
        if os.environ.get("WORLD_SIZE") is not None:
            raise UserError("--nproc: already running under torchrun (drop --nproc, torchrun sets the ranks)")

    if data is None and resume and out is not None:
        data = _run_data_dir(out)
    if data is None:
        data, how = default_data_dir()
        note(how)
    if not resume and preset is None:
        why = "the default with --init-from" if init_from else "the default"
        note(f"preset: {default_preset(init_from)} ({why}; --preset to choose)")
    if out is None:
        out = default_run_dir(data, preset or default_preset(init_from), attention)
        note(f"run dir: {out} (--out to choose)")
    if nproc is not None:  # the ranks get the defaults resolved here, so they all agree
        raise typer.Exit(launch_torchrun(nproc, _relaunch_args(locals())))

    overrides = list(set_ or []) + flag_overrides(
        steps=steps,
        batch_size=batch_size,
        block_size=block_size,
        grad_accum=grad_accum,
        lr=lr,
        dtype=dtype,
        device=device,
        eval_every=eval_every,
        save_every=save_every,
        seed=seed,
        skip_nonfinite=skip_nonfinite,
        peak_tflops=peak_tflops,
        attention=attention,
        compile=compile_,
        loss=loss,
        dropout=dropout,
        activation_checkpointing=activation_checkpointing,
    )
    setup = plan_run(preset, overrides, data, out, resume=resume, init_from=init_from, fsdp=fsdp)
    setup.log = list(log or [])
    finished = render_training(train(setup))
    if finished is None:
        return
    if finished.reason == "interrupted":
        out_console.print(
            f"interrupted by {finished.signal or 'a stop request'} after step {finished.step}: "
            f"checkpoint saved to {finished.path} (continue with: gpt2 train --out {setup.run_dir.root} --resume)",
            markup=False,
            soft_wrap=True,
        )
        return
    val = f", val loss {finished.val_loss:.4f}" if finished.val_loss is not None else ""
    out_console.print(
        f"trained to step {finished.step} in {_format_seconds(finished.elapsed)}{val}; checkpoint: {finished.path}",
        markup=False,
        soft_wrap=True,
    )


# The command's options in the order of its signature, with their flags; for --nproc's relaunch.
_FLAGS = {
    "preset": "--preset", "attention": "--attention", "data": "--data", "out": "--out", "steps": "--steps",
    "batch_size": "--batch-size", "block_size": "--block-size", "grad_accum": "--grad-accum", "lr": "--lr",
    "dtype": "--dtype", "device": "--device", "eval_every": "--eval-every", "save_every": "--save-every",
    "resume": "--resume", "seed": "--seed", "set_": "--set", "compile_": "--compile", "loss": "--loss",
    "skip_nonfinite": "--skip-nonfinite", "peak_tflops": "--peak-tflops", "fsdp": "--fsdp",
    "init_from": "--init-from", "dropout": "--dropout", "log": "--log-to",  # torchrun reads --log as its --log-dir
    "activation_checkpointing": "--activation-checkpointing",
}


def _relaunch_args(values: dict) -> list[str]:
    """`gpt2 train` arguments that repeat this invocation's options, minus --nproc."""
    args: list[str] = []
    for name, flag in _FLAGS.items():
        value = values.get(name)
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


def launch_torchrun(nproc: int, args: list[str]) -> int:
    """Run `gpt2 train ARGS` as nproc ranks on this machine under torchrun; its exit code."""
    import subprocess
    import sys

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "gpt2cli", "train", *args,
    ]
    # Each rank would otherwise start one math thread per core: nproc x cores threads fighting.
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(cmd, env=env).returncode


def _run_data_dir(out: Path) -> Path | None:
    """The data dir a run was trained on (its config.json), for --resume without --data."""
    config = Path(out) / "config.json"
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("data")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    if isinstance(value, str) and Path(value).is_dir():
        note(f"data: {value} (the run's data dir, from {config})")
        return Path(value)
    return None


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
