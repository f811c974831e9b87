"""`gpt2 train`: not landed yet (issue #4)."""

from __future__ import annotations

import typer

from gpt2cli.cli.common import not_landed


def train_cmd(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """Not implemented yet (issue #4)."""
    not_landed("train", 4)


def register(app: typer.Typer) -> None:
    app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train_cmd)
