"""`gpt2`: the Typer application. Each command module registers itself here."""

from __future__ import annotations

import sys

import typer

from gpt2cli.cli import convert, demo, eval_cmd, generate, inspect, report, tokenize, train
from gpt2cli.errors import UserError, environment_message

app = typer.Typer(
    name="gpt2",
    help=(
        "A mechanically faithful GPT-2 that makes small-model failure modes visible: "
        "tokenize a corpus, train, generate, eval (overfitting, repetition, entropy collapse, "
        "memorization) and inspect attention heads."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

for module in (tokenize, train, generate, eval_cmd, inspect, report, convert, demo):
    module.register(app)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv)
    except UserError as err:
        # One line, no traceback: the user's mistake, not ours (STYLE.md §8).
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        # The machine said no (disk full, read-only, no memory...): one line with what to do.
        message = environment_message(err)
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        # A bug: the traceback goes to a crash report, the user gets one line naming it.
        from gpt2cli.cli.crash import internal_error_line, write_crash_report

        print(internal_error_line(err, write_crash_report(err, argv)), file=sys.stderr)
        sys.exit(1)
