"""`gpt2 report`: a run directory turned into one self-contained HTML page of pictures.

load.py reads the run's files into one `RunData` (tolerating a run that is
still training), history.py derives the per-eval generation figures and the
loops in the samples, panels.py draws the figures, html.py assembles the
page and build.py writes it with its PNGs beside it.
"""

from gpt2cli.report.build import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]
