"""`gpt2 generate`: not landed yet (issue #5)."""

from __future__ import annotations

import typer

from gpt2cli.cli.common import not_landed


def generate_cmd(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """Not implemented yet (issue #5)."""
    not_landed("generate", 5)


def register(app: typer.Typer) -> None:
    app.command("generate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(generate_cmd)
