"""``ppaia report``: finished run and sweep folders as one self-contained HTML file (:mod:`ppaia.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ppaia.cli.main import app, console, fail
from ppaia.report import ReportError, write_report

__all__ = ["report"]


@app.command()
def report(
    folders: Annotated[list[Path], typer.Argument(help="run folders or sweep folders", show_default=False)],
    out: Annotated[
        Path | None,
        typer.Option(
            help="the HTML file; default FOLDER/report.html for one folder, ./report.html for several"
        ),
    ] = None,
) -> None:
    """Write run or sweep folders as one self-contained HTML file, which opens offline.

    It holds each run's config, summary, curves (accuracy, loss, consensus distance, bytes, ε), sortable
    per-peer table and learned-trust heat-map (with a round slider). For a sweep folder, or several
    folders, it compares them: one curve per grid cell (mean over its seeds, 95% confidence band) and the
    results table, copyable as Markdown and LaTeX (the sweep's results.md and results.tex). Run folders
    given one by one are grouped into cells by the config fields in which they differ.

    `ppaia run` and `ppaia sweep` write their folder's report.html themselves; this re-writes it, or
    reports several folders together. Exits with 2 if a folder is not a run's or a sweep's.
    """
    try:
        path = write_report(folders, out)
    except (ReportError, OSError) as err:
        raise fail(err) from None
    console.print(f"report: {path}", highlight=False, soft_wrap=True)
