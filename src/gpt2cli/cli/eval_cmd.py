"""`gpt2 eval`: not landed yet (issue #7)."""

from __future__ import annotations

import typer

from gpt2cli.cli.common import not_landed


def eval_cmd(args: list[str] = typer.Argument(None, hidden=True)) -> None:
    """Not implemented yet (issue #7)."""
    not_landed("eval", 7)


def register(app: typer.Typer) -> None:
    app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(eval_cmd)
