"""What every command shares: stderr console, notes about defaults, positive-number checks."""

from __future__ import annotations

from rich.console import Console

from gpt2cli.errors import UserError

# stdout stays clean for --json; everything for humans goes to stderr.
err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


def note(message: str) -> None:
    """One line on stderr naming a default that was used."""
    err_console.print(f"[dim]using {message}[/dim]")


def require_positive(flag: str, value: float | int | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{flag} {value}: must be positive")


def not_landed(command: str, issue: int) -> None:
    raise UserError(f"`gpt2 {command}` is not implemented yet (issue #{issue})")
