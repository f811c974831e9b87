"""`gpt2 inspect model|heads|attention`: look inside a checkpoint or a preset."""

from __future__ import annotations

from pathlib import Path

import typer

from gpt2cli.cli.common import not_landed, out_console
from gpt2cli.errors import UserError

inspect_app = typer.Typer(help="Look inside a model: its shape, its attention heads.", no_args_is_help=True)


@inspect_app.command("model")
def model_cmd(
    ckpt: Path = typer.Argument(None, help="A checkpoint to describe."),
    preset: str = typer.Option(None, "--preset", help="Describe a preset (tiny|small|medium|large|FILE.toml) instead."),
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
        print(json.dumps(info, indent=2))
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
def heads_cmd(ckpt: Path = typer.Argument(..., help="Checkpoint.")) -> None:
    """Per-head statistics, ablation importance and inequality."""
    not_landed("inspect heads", 8)


@inspect_app.command("attention")
def attention_cmd(ckpt: Path = typer.Argument(..., help="Checkpoint.")) -> None:
    """One head's attention pattern with token labels."""
    not_landed("inspect attention", 8)


def register(app: typer.Typer) -> None:
    app.add_typer(inspect_app, name="inspect")
