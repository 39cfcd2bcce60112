"""`ppaia report`: one self-contained HTML file of finished runs — a run's config, summary, curves,
per-peer table and learned trust; for several runs or a sweep, their curves per cell with 95% bands and
the results table in Markdown and LaTeX. It opens offline: nothing is fetched when it is viewed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ppaia.report.collect import collect
from ppaia.report.errors import ReportError
from ppaia.report.page import render, write

__all__ = ["REPORT_FILE", "ReportError", "collect", "default_report_path", "render", "write_report"]

REPORT_FILE = "report.html"


def default_report_path(paths: Sequence[Path]) -> Path:
    """Where a report goes unless told: inside the one folder reported, else in the working directory."""
    return Path(paths[0]) / REPORT_FILE if len(paths) == 1 else Path(REPORT_FILE)


def write_report(paths: Sequence[Path], out: Path | None = None) -> Path:
    """Report the run or sweep folders `paths` into `out` (default: :func:`default_report_path`)."""
    return write(collect(paths), out or default_report_path(paths))
