"""`gpt2 report RUN_DIR`: a run's failure modes in pictures, as one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import typer

from gpt2cli.cli.common import err_console, note, out_console


def report_cmd(
    run_dir: Path = typer.Argument(
        None, metavar="RUN_DIR", help="The run directory (default: the one holding the newest checkpoint under ./runs)."
    ),
    output: Path = typer.Option(
        None, "-o", "--output", help="HTML file to write (default: RUN_DIR/report.html); PNGs go beside it."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing -o file and the PNGs beside it."),
) -> None:
    """Turn a run directory into one HTML page of pictures (images embedded, no network needed).

    Panels: train/val loss against step and tokens with the learning rate;
    generation quality per eval (seq-rep-4, loop share, mean entropy) with the
    loss–generation mismatch alarm marked; the val–train gap and the extraction
    rate of train vs val windows (from RUN_DIR/eval.json, written by `gpt2 eval`);
    head importance as a heat map and a Lorenz curve (from RUN_DIR/heads.json,
    `gpt2 inspect heads --json`); and the samples of each eval with loops
    highlighted. Each picture is also written beside the page (report-loss.png,
    report-generation.png, ...). Works on a run still training: what is missing is said.

    Examples:

      gpt2 report runs/stories-tiny-standard

      gpt2 report runs/t1 -o t1.html
    """
    from rich.text import Text

    from gpt2cli.defaults import newest_checkpoint
    from gpt2cli.errors import UserError
    from gpt2cli.report import build_report

    if run_dir is None:
        try:
            ckpt, _ = newest_checkpoint()
        except UserError:
            raise UserError("no RUN_DIR given and no run under ./runs (train one with `gpt2 train`)") from None
        run_dir = ckpt.parent
        note(f"run dir: {run_dir} (holds the newest checkpoint under ./runs)")
    result = build_report(run_dir, output, force=force)
    if result.default_output:
        note(f"output: {result.html} (-o to choose)")
    for line in result.missing:
        err_console.print(Text.assemble(("missing: ", "yellow"), line), soft_wrap=True)
    for line in result.run.problems:
        err_console.print(Text.assemble(("could not read: ", "yellow"), line), soft_wrap=True)
    out_console.print(
        f"wrote {result.html} and {len(result.pngs)} PNGs beside it ({result.run.status()})",
        markup=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
