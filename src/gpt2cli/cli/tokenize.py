"""`gpt2 tokenize`: not landed yet (issue #3)."""

from __future__ import annotations

import typer

from gpt2cli.cli.common import not_landed


def tokenize_cmd(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """Not implemented yet (issue #3)."""
    not_landed("tokenize", 3)


def register(app: typer.Typer) -> None:
    app.command("tokenize", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(tokenize_cmd)
