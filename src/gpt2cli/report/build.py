"""Build a run's report: read the run, draw the panels, write the page and its PNGs.

The page is `output`; each panel's picture is also written beside it as
`<stem>-<panel id>.png` (report-loss.png, report-generation.png, ...), all
atomically. A panel that has no picture this time (its data is missing) has
its old PNG of that name removed, so the files beside the page always match it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpt2cli.atomic import atomic_path, write_text_atomic
from gpt2cli.errors import UserError
from gpt2cli.outputs import Output, check_outputs, same_entry
from gpt2cli.report.history import generation_history, sample_views
from gpt2cli.report.html import render_html
from gpt2cli.report.load import RunData, load_run, read_files
from gpt2cli.report.panels import (
    Panel,
    generation_panel,
    heads_panel,
    loss_panel,
    overfitting_panel,
    samples_panel,
)

DEFAULT_NAME = "report.html"
PANEL_IDS = ("loss", "generation", "overfitting", "heads", "samples")


@dataclass
class ReportResult:
    html: Path
    pngs: list[Path]
    panels: list[Panel]
    run: RunData
    default_output: bool  # no output was given: the page went to RUN_DIR/report.html

    @property
    def missing(self) -> list[str]:
        """'Panel title: what is missing' for every gap in the report."""
        return [f"{p.title}: {m}" for p in self.panels for m in p.missing]


def make_panels(run: RunData):
    """(panels in page order, sample views)."""
    views = sample_views(run)
    history = generation_history(run, views)
    panels = [
        loss_panel(run),
        generation_panel(run, history),
        overfitting_panel(run),
        heads_panel(run),
        samples_panel(run, views),
    ]
    return panels, views


def png_path(output: Path, panel_id: str) -> Path:
    return output.with_name(f"{output.stem}-{panel_id}.png")


def build_report(run_dir: str | Path, output: str | Path | None = None, force: bool = False) -> ReportResult:
    """Write the report of the run in `run_dir` to `output` (HTML; default
    RUN_DIR/report.html) and its PNGs beside it.

    The default page and its PNGs are the report's own and always replaced;
    an existing `output` (or a PNG beside it) only with `force` (outputs.py)."""
    run = load_run(run_dir)  # first: a missing run dir is the likelier mistake
    default_output = output is None
    default = Path(run_dir) / DEFAULT_NAME
    output = default if output is None else Path(output)
    if output.is_dir():
        raise UserError(f"-o {output}: is a directory; give the HTML file to write, e.g. {output / 'report.html'}")
    if not output.parent.is_dir():
        raise UserError(f"-o {output}: the directory {output.parent} does not exist")
    # The default page and its PNGs are replaced freely, but only in their own role:
    # `-o RUN_DIR/report-loss.png` is another file, refused when it exists.
    mine = [default, *(png_path(default, i) for i in PANEL_IDS)] if same_entry(output, default) else []
    check_outputs(
        [Output("-o", output), *(Output("-o", png_path(output, i)) for i in PANEL_IDS)],
        read_files(run_dir),
        force=force,
        owned=[Output("-o", p) for p in mine],
    )
    panels, views = make_panels(run)
    pngs = []
    for panel in panels:
        path = png_path(output, panel.id)
        if panel.png is None:
            path.unlink(missing_ok=True)
            continue
        with atomic_path(path) as tmp:
            tmp.write_bytes(panel.png)
        pngs.append(path)
    write_text_atomic(output, render_html(run, panels, views))
    return ReportResult(output, pngs, panels, run, default_output)
