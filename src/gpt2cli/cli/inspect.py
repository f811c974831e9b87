"""`gpt2 inspect model|heads|attention`: look inside a checkpoint or a preset."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from gpt2cli.cli.common import (
    err_console,
    note,
    out_console,
    require_writable_file,
    wrote,
)
from gpt2cli.errors import UserError
from gpt2cli.preset_files import preset_names

inspect_app = typer.Typer(help="Look inside a model: its shape, its attention heads.", no_args_is_help=True)


@inspect_app.command("model")
def model_cmd(
    ckpt: Path = typer.Argument(None, help="A checkpoint to describe."),
    preset: str = typer.Option(None, "--preset", help=f"Describe a preset ({', '.join(preset_names())} or a FILE.toml) instead."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON only."),
) -> None:
    """The config and parameter counts (total, and without embeddings).

    Examples: gpt2 inspect model --preset small ; gpt2 inspect model runs/tiny/ckpt.safetensors
    """
    import json

    from gpt2cli.model.summary import describe_checkpoint, describe_preset

    if (ckpt is None) == (preset is None):
        raise UserError("inspect model: give either a CKPT or --preset NAME")
    info = describe_preset(preset) if preset is not None else describe_checkpoint(ckpt)
    if json_out:
        print(json.dumps(info, indent=2, allow_nan=False))
        return
    from rich.table import Table

    table = Table(title=info["source"], show_header=False)
    for key, value in info["config"].items():
        table.add_row(key, str(value))
    table.add_row("parameters", f"{info['parameters']:,}")
    table.add_row("parameters (non-embedding)", f"{info['non_embedding_parameters']:,}")
    for key in ("step", "tokens_seen"):
        if key in info:
            table.add_row(key, f"{info[key]:,}")
    out_console.print(table)


@inspect_app.command("heads")
def heads_cmd(
    ckpt: Path = typer.Argument(
        None, help="Checkpoint to inspect (default: the newest under ./runs)."
    ),
    data: Path = typer.Option(None, "--data", help="Tokenized data dir; its val split is read."),
    text: Path = typer.Option(
        None, "--text", help="A UTF-8 text file to inspect on, instead of --data."
    ),
    tokens: int = typer.Option(
        16384, "--tokens", help="Tokens of text for the attention statistics."
    ),
    seq_len: int = typer.Option(
        None, "--seq-len", help="Sequence length (default: the model's block_size)."
    ),
    ablation_tokens: int = typer.Option(
        1024,
        "--ablation-tokens",
        help="Of those, tokens (whole sequences, evenly spaced) for the ablation losses: "
        "2 forward passes per head each.",
    ),
    induction_seqs: int = typer.Option(
        16, "--induction-seqs", help="Random repeated sequences for induction."
    ),
    seed: int = typer.Option(1337, "--seed", help="Seed of the random induction sequences."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|mps."),
    json_out: str = typer.Option(
        None, "--json", help="Write every figure as JSON to PATH ('-': stdout only)."
    ),
    png: Path = typer.Option(
        None, "--png", help="Write heat maps per statistic and a Lorenz curve to PATH."
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing --json/--png files."),
) -> None:
    """Per-head statistics, ablation importance and inequality.

    For every layer x head: attention entropy, mean distance, sink (position 0)
    and previous-token mass, induction score (random tokens repeated twice), the
    norm of what the head writes, and the loss increase when it is zero- or
    mean-ablated; then the Gini of importance, the top 10%/25% shares and the
    idle heads (removal changes loss < 0.1%).

    Example: gpt2 inspect heads runs/tiny/ckpt.safetensors --text stories.txt --png heads.png --json heads.json
    """
    import math

    from gpt2cli.analysis.heads import HeadReport, iter_inspect_heads, load_tokens, token_windows
    from gpt2cli.analysis.inequality import summarize
    from gpt2cli.checkpoint import load_checkpoint
    from gpt2cli.defaults import default_data_dir, newest_checkpoint
    from gpt2cli.device import resolve_device

    # --tokens, --seq-len, --ablation-tokens, --induction-seqs: checked as parsed (gpt2cli.bounds).
    if data is not None and text is not None:
        raise UserError("give either --data DATA_DIR or --text FILE, not both")
    for flag, out in (("--json", None if json_out == "-" else json_out), ("--png", png)):
        if out is not None:
            require_writable_file(flag, out)
    if ckpt is None:
        try:
            ckpt, how = newest_checkpoint()
        except UserError:
            raise UserError("no CKPT given and no checkpoint under ./runs (train one with `gpt2 train`)") from None
        note(how)
    if data is None and text is None:
        data, how = default_data_dir()
        note(how)
    from gpt2cli.analysis.evaluate import run_dir_of
    from gpt2cli.outputs import Output, check_outputs, files_in

    run_dir = run_dir_of(ckpt)  # where heads.json is also kept, below
    check_outputs(
        [Output(flag, Path(p)) for flag, p in (("--json", json_out), ("--png", png)) if p not in (None, "-")],
        [ckpt, *([text] if text else []), *files_in(data)],
        force=force,
        owned=[Output("--json", run_dir / "heads.json")] if run_dir is not None else [],
    )
    model = load_checkpoint(ckpt, resolve_device(device))
    cfg = model.config
    seq_len = seq_len or cfg.block_size
    if seq_len > cfg.block_size:
        raise UserError(f"--seq-len {seq_len}: longer than the model's context of {cfg.block_size}")
    ids, source = load_tokens(data, text, cfg.vocab_size, limit=max(tokens, seq_len) + 1)
    windows = token_windows(ids, seq_len, tokens)
    got_len = windows.shape[1] - 1
    if windows.shape[0] * got_len < tokens:
        err_console.print(
            f"[yellow]note:[/yellow] {escape(str(source))} gives {windows.shape[0] * got_len:,} of the "
            f"{tokens:,} tokens asked for ({windows.shape[0]} sequence{'s' if windows.shape[0] != 1 else ''} "
            f"of {got_len})",
            soft_wrap=True,
        )
    n_abl = min(windows.shape[0], math.ceil(ablation_tokens / got_len))
    if n_abl < windows.shape[0]:
        note(
            f"ablation on {n_abl * got_len:,} of {windows.shape[0] * got_len:,} tokens "
            f"({n_abl} of {windows.shape[0]} sequences, evenly spaced; --ablation-tokens)"
        )

    report = None
    with _progress() as bar:
        tasks: dict[str, int] = {}
        for event in iter_inspect_heads(
            model, windows, ablation_sequences=n_abl, induction_sequences=induction_seqs, seed=seed
        ):
            if isinstance(event, HeadReport):
                report = event
                continue
            if event.stage not in tasks:
                tasks[event.stage] = bar.add_task(event.stage, total=event.total)
            bar.update(tasks[event.stage], completed=event.done)
    labels = report.labels()
    summary = summarize(report.zero_importance.ravel(), report.zero_relative.ravel(), labels)
    mean_summary = summarize(
        report.mean_importance.ravel(),
        (report.mean_importance / report.baseline_loss).ravel(),
        labels,
    )
    import json

    from gpt2cli.analysis.evaluate import json_safe
    from gpt2cli.atomic import write_text_atomic

    doc = {
        "checkpoint": str(ckpt),
        "source": source,
        **report.to_json(),
        "inequality": summary.to_json(),
        "inequality_mean_ablation": mean_summary.to_json(),
    }
    text_out = json.dumps(json_safe(doc), indent=2, allow_nan=False)  # NaN statistics become null
    if json_out == "-":
        print(text_out)
    elif json_out is not None:
        write_text_atomic(json_out, text_out + "\n")
        wrote(json_out)
    if run_dir is not None and (json_out in (None, "-") or Path(json_out).resolve() != run_dir / "heads.json"):
        # Beside a run's metrics.jsonl the result is also kept for `gpt2 report`.
        write_text_atomic(run_dir / "heads.json", text_out + "\n")
        if json_out != "-":
            wrote(run_dir / "heads.json")
    if png is not None:
        from gpt2cli.analysis.head_plots import plot_heads

        plot_heads(report, summary, png)
        wrote(png)
    if json_out != "-":
        _render_heads(report, summary, source)


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def _shade(value: float, lo: float, hi: float, fmt: str):
    """A cell whose background runs from dark (column minimum) to bright blue (maximum)."""
    from rich.color import Color
    from rich.style import Style
    from rich.text import Text

    if value != value:  # NaN
        return Text("-")
    t = 0.0 if hi <= lo else (value - lo) / (hi - lo)
    rgb = tuple(round(a + (b - a) * t) for a, b in zip((24, 24, 32), (40, 120, 220), strict=True))
    return Text(format(value, fmt), style=Style(bgcolor=Color.from_rgb(*rgb), color="white"))


def _render_heads(report, summary, source: str) -> None:
    from rich import box
    from rich.table import Table

    from gpt2cli.analysis.heads import STATISTICS

    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        title=f"heads on {report.tokens:,} tokens of {source}",
        caption=(
            f"baseline loss {report.baseline_loss:.4f} on {report.ablation_sequences * report.seq_len:,} tokens; "
            "Δ = loss increase with the head zeroed / replaced by its mean; cells shaded per column"
        ),
    )
    table.add_column("head")
    columns = [(report.grid(key), short, fmt) for key, _, short, fmt in STATISTICS]
    columns.append((100 * report.zero_relative, "Δzero%", "+.2f"))
    for _, short, _ in columns:
        table.add_column(short, justify="right", no_wrap=True)
    bounds = [(float(g.min()), float(g.max())) for g, _, _ in columns]
    for i in range(report.n_layer):
        for j in range(report.n_head):
            cells = [_shade(float(g[i, j]), lo, hi, fmt) for (g, _, fmt), (lo, hi) in zip(columns, bounds, strict=True)]
            table.add_row(f"L{i}H{j}", *cells)
    out_console.print(table)
    for line in summary.verdicts:
        out_console.print(f"• {line}", markup=False, soft_wrap=True)


@inspect_app.command("attention")
def attention_cmd(
    ckpt: Path = typer.Argument(..., help="Checkpoint."),
    text: str = typer.Argument(..., help="The text to run through the model (GPT-2 BPE tokens)."),
    layer: int = typer.Option(..., "--layer", help="Layer, from 0."),
    head: int = typer.Option(..., "--head", help="Head, from 0."),
    png: Path = typer.Option(None, "--png", help="Draw the pattern with token labels to PATH."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|mps."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --png file."),
) -> None:
    """One head's attention pattern with token labels.

    Without --png, lists for each token the three tokens it attends to most.

    Example: gpt2 inspect attention runs/tiny/ckpt.safetensors "The cat sat. The cat" --layer 1 --head 2 --png attn.png
    """
    from gpt2cli.analysis.head_plots import plot_attention, token_labels
    from gpt2cli.analysis.heads import attention_pattern
    from gpt2cli.checkpoint import load_checkpoint
    from gpt2cli.device import resolve_device
    from gpt2cli.tokenizer import get_tokenizer

    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("TEXT: not valid UTF-8") from None
    if png is not None:
        from gpt2cli.outputs import Output, check_outputs

        check_outputs([Output("--png", png)], [ckpt], force=force)
    model = load_checkpoint(ckpt, resolve_device(device))
    ids = get_tokenizer().encode_ordinary(text)
    weights = attention_pattern(model, ids, layer, head)
    labels = token_labels(ids)
    if png is not None:
        from gpt2cli.errors import shown_path

        plot_attention(weights, labels, f"{shown_path(ckpt.name)}: layer {layer}, head {head}", png)
        wrote(png)
        return
    from rich.table import Table

    table = Table(title=f"layer {layer}, head {head}: top keys per query")
    table.add_column("pos", justify="right")
    table.add_column("query")
    table.add_column("attends to (weight)")
    for i, row in enumerate(weights):
        top = row[: i + 1].argsort()[::-1][:3]
        table.add_row(str(i), labels[i], "  ".join(f"{labels[k]}@{k} ({row[k]:.2f})" for k in top))
    out_console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(inspect_app, name="inspect")
