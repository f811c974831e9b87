"""`gpt2`: the Typer application. Each command module registers itself here."""

from __future__ import annotations

import sys

import typer

from gpt2cli.cli import convert, demo, eval_cmd, generate, inspect, report, tokenize, train
from gpt2cli.errors import UserError, environment_message, shown_path

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


def _print_version(value: bool) -> None:
    if not value:
        return
    import platform
    from importlib import metadata

    from gpt2cli import __version__

    try:
        torch_version = metadata.version("torch")  # without importing torch: seconds saved
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    print(f"gpt2cli {__version__} (torch {torch_version}, python {platform.python_version()})")
    raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


def _check_numbers(command, path: str = "") -> None:
    """Every numeric option of every command checked against gpt2cli.bounds as it is parsed."""
    from gpt2cli.bounds import check

    for name, sub in getattr(command, "commands", {}).items():
        _check_numbers(sub, f"{path} {name}".strip())
    for param in command.params:
        if param.type_descriptor.annotation not in (int, float) or param.callback is not None:
            continue
        flag = max(param.opts, key=len) if param.opts[0].startswith("-") else param.name.upper()

        def callback(ctx, param, value, flag=flag):
            check(flag, value, path)
            return value

        param.callback = callback


def command():
    """The `gpt2` click command, numeric bounds installed."""
    cmd = typer.main.get_command(app)
    _check_numbers(cmd)
    return cmd


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    from gpt2cli.cli.pipes import quiet_closed_pipes

    # `gpt2 ... | head`: a closed stdout drops the printing, never the work (cli/pipes.py).
    with quiet_closed_pipes():
        _main(argv)


def _main(argv: list[str] | None) -> None:
    from typer._click import exceptions as click_errors

    from gpt2cli.cli.common import note
    from gpt2cli.threads import start_watch

    # Before torch loads: how busy the CPUs are from here on decides the math threads (threads.py).
    start_watch(note)
    try:
        code = command().main(args=argv, prog_name="gpt2", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as err:
        # `gpt2` or `gpt2 inspect` alone asks for nothing: the help is the answer.
        print(err.ctx.get_help())
        code = 0
    except click_errors.ClickException as err:
        # A flag the parser refused (unknown, missing, not a number): one line too.
        where = f"{err.ctx.command_path}: " if getattr(err, "ctx", None) is not None else ""
        hint = f" (see {err.ctx.command_path} -h)" if isinstance(err, click_errors.UsageError) and err.ctx else ""
        print(f"error: {where}{shown_path(_one_line(err.format_message()))}{hint}", file=sys.stderr)
        sys.exit(err.exit_code)
    except typer.Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except UserError as err:
        # One line, no traceback: the user's mistake, not ours (STYLE.md §8).
        # shown_path: a file name's undecodable bytes as \xNN, a newline in it as \n: one line still.
        print(f"error: {shown_path(str(err))}", file=sys.stderr)
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
    sys.exit(code if isinstance(code, int) else 0)
