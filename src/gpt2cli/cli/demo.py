"""`gpt2 demo`: built-in stories -> tokenize -> train tiny on the CPU -> samples, eval, heads."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from gpt2cli.cli.common import err_console, out_console


def follow_ups(ckpt: Path, data: Path, out: Path) -> list[tuple[str, list[str]]]:
    """The other commands the demo runs on its checkpoint, as a user would type them.

    Budgets are small so the whole demo stays within a few minutes on 2 cores.
    """
    return [
        (
            "eval",
            [
                "eval", str(ckpt), "--data", str(data),
                "--eval-tokens", "16384", "--num-samples", "8", "--max-new-tokens", "96",
                "--extract-windows", "16", "--json", str(out / "eval.json"),
            ],
        ),
        (
            "inspect heads",
            [
                "inspect", "heads", str(ckpt), "--data", str(data),
                "--tokens", "2048", "--seq-len", "128", "--ablation-tokens", "512", "--induction-seqs", "4",
                "--png", str(out / "heads.png"), "--json", str(out / "heads.json"),
            ],
        ),
    ]


def _run_command(title: str, args: list[str]) -> bool:
    """Run `gpt2 ARGS` in this process; a failure is reported and the demo goes on."""
    from typer._click.exceptions import ClickException

    from gpt2cli.cli.app import command
    from gpt2cli.errors import UserError

    err_console.rule(f"gpt2 {title}", style="dim")
    err_console.print(f"$ gpt2 {' '.join(args)}", markup=False, soft_wrap=True)
    try:
        code = command().main(args=args, prog_name="gpt2", standalone_mode=False)
    except (UserError, ClickException) as err:
        message = err.format_message() if isinstance(err, ClickException) else str(err)
        err_console.print(f"skipped gpt2 {title}: {message}", markup=False, soft_wrap=True)
        return False
    return not code


def _samples_table(before, after):
    from rich.table import Table
    from rich.text import Text

    table = Table(title="samples from the fixed prompts (top-k 40)", show_lines=True, expand=True)
    table.add_column("prompt", ratio=1)
    table.add_column(f"step {before.step} (val loss {before.val_loss:.2f})", ratio=1)
    table.add_column(f"step {after.step} (val loss {after.val_loss:.2f})", ratio=3)
    for b, a in zip(before.samples, after.samples, strict=True):
        # The untrained model draws near-uniformly from all 50257 GPT-2 tokens:
        # a glimpse of that noise is enough.
        noise = " ".join(b.text.split())
        # Text, not str: model output such as "[/quote]" is words, not a style tag for rich.
        cells = (b.prompt, noise[:30] + ("…" if len(noise) > 30 else ""), " ".join(a.text.split()))
        table.add_row(*(Text(cell) for cell in cells))
    return table


def demo_cmd(
    out: Path = typer.Option(Path("demo-run"), "--out", help="Where the data, run, eval and plots go."),
    corpus_size: str = typer.Option("10MB", "--corpus-size", help="Size of the built-in story corpus."),
    steps: int = typer.Option(None, "--steps", help="Training steps (default: 100, 205K tokens)."),
    minutes: float = typer.Option(4.0, "--minutes", help="Stop training after this many minutes even if steps remain."),
) -> None:
    """The whole pipeline on the built-in story corpus, sized for a 2-core CPU: a few minutes.

    Writes ~10 MB of built-in children's stories, tokenizes them into OUT/data,
    trains the tiny preset (4 layers, 4 heads, 256 wide) on the CPU into
    OUT/run, prints samples from before and after training, then runs
    `gpt2 eval` and `gpt2 inspect heads` on the checkpoint. The training stops
    after --minutes (default 4) even if steps remain, then evaluates and saves.

    Examples:
      gpt2 demo
      gpt2 demo --out /tmp/demo --steps 60 --corpus-size 2MB
    """
    from gpt2cli.data.sizes import parse_size
    from gpt2cli.train.demo import DEFAULT_STEPS

    started = time.monotonic()  # --steps, --minutes: ranges checked as parsed (gpt2cli.bounds)
    corpus_bytes = parse_size(corpus_size, "--corpus-size")
    steps = steps or DEFAULT_STEPS
    from gpt2cli.errors import UserError
    from gpt2cli.outputs import check_output_dir, missing_dirs, remove_empty_dirs

    check_output_dir("--out", out, writer="gpt2 demo")  # its data and run go into subdirectories
    created = missing_dirs(out)
    try:  # refuse an unusable --out before any stage starts
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out}: cannot create the directory ({err.strerror})") from None
    try:
        _run_demo(out, corpus_bytes, steps, minutes, started)
    except BaseException:
        # A demo that failed before its data was written leaves no empty --out behind.
        remove_empty_dirs(created)
        raise


def _run_demo(out: Path, corpus_bytes: int, steps: int, minutes: float, started: float) -> None:
    from gpt2cli.cli.train import render_training
    from gpt2cli.data.shards import TokenizeProgress
    from gpt2cli.train.demo import DataReady, Stage, run_demo
    from gpt2cli.train.events import Evaluated, Finished

    evals: list[Evaluated] = []

    def tap(stream):
        for event in stream:
            if isinstance(event, Evaluated):
                evals.append(event)
            yield event

    stream = tap(run_demo(out, corpus_bytes, steps, minutes))
    finished = None
    for event in stream:
        if isinstance(event, Stage):
            err_console.rule(f"[{event.index}/{event.total}] {event.title}", style="cyan")
            if event.index == 2:
                finished = render_training(stream, show_samples=False)
                break
        elif isinstance(event, TokenizeProgress) and event.stage == "generating" and event.done_bytes:
            err_console.print(f"wrote {event.done_bytes / 1e6:.1f} MB of stories", markup=False, soft_wrap=True)
        elif isinstance(event, DataReady):
            what = "reusing" if event.reused else "tokenized"
            took = f" in {event.seconds:.1f}s" if not event.reused else ""
            err_console.print(
                f"{what} {event.data_dir}: {event.tokens.get('train', 0):,} train + "
                f"{event.tokens.get('val', 0):,} val tokens{took}",
                markup=False,
                soft_wrap=True,
            )
    if not isinstance(finished, Finished):
        return
    run_dir = finished.path.parent
    if evals:
        out_console.print(_samples_table(evals[0], evals[-1]))

    # -- Follow-ups: eval and inspect heads on the demo's checkpoint. ----------
    # Each runs through the CLI app as the user would type it (see
    # `follow_ups` for the exact commands); one that fails is reported and skipped.
    if finished.reason != "interrupted":
        for title, args in follow_ups(finished.path, out / "data", run_dir):
            _run_command(title, args)

    total = time.monotonic() - started
    first = f" (from {evals[0].val_loss:.2f} untrained)" if evals else ""
    val = f"val loss {finished.val_loss:.3f}{first}, " if finished.val_loss is not None else ""
    stopped = {"time": f" (stopped by --minutes {minutes:g})", "interrupted": " (interrupted)"}.get(finished.reason, "")
    out_console.print(
        f"demo done in {total / 60:.1f} min: {val}step {finished.step}{stopped}; checkpoint {finished.path}",
        markup=False,
        soft_wrap=True,
    )
    out_console.print(
        f'next: gpt2 generate "Once upon a time" --ckpt {finished.path} --top-k 40',
        markup=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
