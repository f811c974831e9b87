"""`gpt2 tokenize`: text corpora (or the built-in stories) -> token shards for `gpt2 train`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from gpt2cli.cli.common import err_console, note, out_console
from gpt2cli.errors import UserError


def _default_out_dir(inputs: list[Path], builtin: bool) -> Path:
    if builtin:
        return Path("data") / "stories"
    first = inputs[0]
    name = first.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    stem = Path(name).stem if Path(name).suffix.lower() in (".txt", ".jsonl") else name
    return Path("data") / (stem or "corpus")


def tokenize_cmd(
    inputs: list[Path] = typer.Argument(
        None,
        metavar="INPUT...",
        help="Text (.txt), JSON lines (.jsonl), either gzipped (.gz), or directories of them.",
        show_default=False,
    ),
    out_dir: Path = typer.Option(
        None, "-o", "--out", help="Output DATA_DIR. \\[default: data/<name of the first INPUT>]", show_default=False
    ),
    val_fraction: float = typer.Option(0.005, "--val-fraction", help="Share of documents held out for val (0 < F < 1)."),
    workers: int = typer.Option(None, "--workers", help="Tokenizer processes. \\[default: the number of cores]", show_default=False),
    shard_tokens: int = typer.Option(100_000_000, "--shard-tokens", help="Tokens per shard file."),
    field: str = typer.Option("text", "--field", help="The .jsonl field holding each document's text."),
    doc_separator: str = typer.Option(
        "eot-line",
        "--doc-separator",
        help="What ends a document in text files: a line that is exactly <|endoftext|> (eot-line) or empty lines (blank-line).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the train/val split (and the built-in stories)."),
    strict: bool = typer.Option(False, "--strict", help="Refuse bytes that are not UTF-8 instead of replacing them."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace the data in an output dir that already holds files (the new data is built beside it "
        "and swapped in when complete; other files in it are kept).",
    ),
    builtin_stories: str = typer.Option(
        None, "--builtin-stories", metavar="SIZE", help="Generate SIZE (e.g. 20MB) of built-in stories and tokenize them."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON only."),
) -> None:
    """Tokenize a corpus into uint16 shards (train_*.bin, val_*.bin) and meta.json.

    Documents end at a line that is exactly <|endoftext|> (TinyStories' layout), at empty lines with --doc-separator blank-line, or one per .jsonl record; each is followed by the EOT token. The output is the same for any --workers.

    Examples:

      gpt2 tokenize stories.txt                      # -> data/stories/

      gpt2 tokenize corpus/ -o data/corpus --workers 4

      gpt2 tokenize TinyStoriesV2-GPT4-train.txt.gz --val-fraction 0.01

      gpt2 tokenize --builtin-stories 20MB -o data/stories
    """
    from gpt2cli.data.shards import TokenizeOptions, default_workers, tokenize_corpus
    from gpt2cli.data.sizes import parse_size

    inputs = list(inputs or [])
    n_bytes = parse_size(builtin_stories, "--builtin-stories") if builtin_stories is not None else None
    if n_bytes is None and not inputs:
        raise UserError("tokenize: give at least one INPUT file or directory (or --builtin-stories SIZE)")
    if n_bytes is not None and inputs:
        raise UserError("tokenize: give INPUT files or --builtin-stories, not both")
    # --val-fraction, --workers, --shard-tokens: checked as parsed (gpt2cli.bounds).
    if doc_separator not in ("eot-line", "blank-line"):
        raise UserError(f"--doc-separator {doc_separator}: choose eot-line or blank-line")
    if out_dir is None:
        out_dir = _default_out_dir(inputs, n_bytes is not None)
        what = "built-in stories" if n_bytes is not None else inputs[0]
        note(f"output dir {out_dir} (named after {what}; set -o DATA_DIR)")
    if workers is None:
        workers = default_workers()
        note(f"{workers} worker{'s' if workers > 1 else ''} (the number of cores; set --workers N)")
    opts = TokenizeOptions(
        inputs=inputs,
        out_dir=out_dir,
        val_fraction=val_fraction,
        workers=workers,
        shard_tokens=shard_tokens,
        field=field,
        doc_separator=doc_separator,
        seed=seed,
        strict=strict,
        force=force,
        builtin_stories=n_bytes,
    )
    try:
        summary = _run_with_progress(tokenize_corpus(opts))
    except KeyboardInterrupt as stop:
        from gpt2cli.interrupt import Terminated

        # The job has cleaned up by now (its temporaries are gone, earlier data untouched).
        by = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
        err_console.print(f"interrupted by {by}: {out_dir} is as it was before", markup=False, soft_wrap=True)
        raise typer.Exit(143 if by == "SIGTERM" else 130) from None
    if json_out:
        import json

        print(json.dumps(summary.to_json(), indent=2, allow_nan=False))
        return
    _render_summary(summary)


def _run_with_progress(events):
    """Drive the job, drawing a progress bar on stderr; returns the summary."""
    import contextlib

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    # No auto-refresh thread: the job forks its workers, and forking a threaded process is unsafe.
    # Off a terminal (a log file) rich would print only the last frame, cut at 80 columns: the
    # summary on stdout says the same in one line.
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        DownloadColumn(binary_units=False),
        TransferSpeedColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=err_console,
        auto_refresh=False,
        transient=False,
        disable=not err_console.is_terminal,
    )
    with contextlib.closing(events):  # stopped early: the job cleans up now, not at garbage collection
        return _drive(progress, events)


def _drive(progress, events):
    import itertools
    import time

    from gpt2cli.data.shards import TokenizeProgress

    tasks: dict[str, int] = {}
    last_draw = 0.0
    summary = None
    first = next(events)  # bad input fails here, before any bar is drawn
    progress.start()
    try:
        for event in itertools.chain([first], events):
            if not isinstance(event, TokenizeProgress):
                summary = event
                continue
            if event.stage not in tasks:
                tasks[event.stage] = progress.add_task(event.stage, total=event.total_bytes, info="")
            info = f"{event.tokens:,} tokens" if event.stage == "tokenizing" else ""
            progress.update(tasks[event.stage], completed=event.done_bytes, info=info)
            now = time.monotonic()
            if now - last_draw > 0.1:
                progress.refresh()
                last_draw = now
        for task in tasks.values():
            progress.update(task, completed=progress.tasks[task].total)
        progress.refresh()
    except BaseException:
        # A failed run ends with its one error line: no half-full bar above it (and not even
        # the empty line Progress.stop adds off a terminal).
        progress.live.transient = True
        progress.live.stop()
        raise
    progress.stop()
    return summary


def _render_summary(summary) -> None:
    from rich.table import Table

    from gpt2cli.data.sizes import format_size

    table = Table(title=f"tokenized -> {summary.out_dir}", show_header=True)
    table.add_column("")
    table.add_column("train", justify="right")
    table.add_column("val", justify="right")
    table.add_column("total", justify="right")
    docs, toks = summary.documents, summary.tokens
    table.add_row("documents", f"{docs['train']:,}", f"{docs['val']:,}", f"{sum(docs.values()):,}")
    table.add_row("tokens", f"{toks['train']:,}", f"{toks['val']:,}", f"{sum(toks.values()):,}")
    out_console.print(table)
    out_console.print(
        f"{summary.shards} shard{'s' if summary.shards != 1 else ''} from {summary.sources} "
        f"source{'s' if summary.sources != 1 else ''}: {format_size(summary.bytes_in)} read"
        + (f" ({format_size(summary.text_bytes)} of text)" if summary.text_bytes != summary.bytes_in else "")
        + f" in {summary.seconds:.1f} s, "
        f"{summary.mb_per_s:.1f} MB/s, {summary.tokens_per_s:,.0f} tokens/s with {summary.workers} "
        f"worker{'s' if summary.workers != 1 else ''}",
        markup=False,
        soft_wrap=True,
    )
    if summary.replaced_utf8_errors:
        out_console.print(
            f"[yellow]replaced {summary.replaced_utf8_errors:,} invalid UTF-8 sequence(s) with U+FFFD "
            "(--strict refuses them)[/yellow]",
            soft_wrap=True,
        )
    if summary.skipped_empty_documents:
        out_console.print(f"skipped {summary.skipped_empty_documents:,} empty document(s)", soft_wrap=True)
    for line in summary.notes:
        out_console.print(f"[yellow]note: {escape(line)}[/yellow]", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("tokenize")(tokenize_cmd)
