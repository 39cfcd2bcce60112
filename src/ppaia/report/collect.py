"""What `ppaia report` reports: one run folder, one sweep folder, or several of either, as one
:class:`~ppaia.report.document.Report`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ppaia import __version__
from ppaia.report.compare import compare_runs, is_sweep, read_sweep
from ppaia.report.document import Comparison, Report
from ppaia.report.errors import ReportError
from ppaia.report.folders import RunFolder, read_run_folder

__all__ = ["collect"]


def collect(paths: Sequence[Path]) -> Report:
    """One run folder: that run. One sweep folder: its runs, compared per grid cell as the sweep's own
    tables compare them. Several folders (runs, or sweeps whose runs join in): every run, compared per
    cell of the config fields they differ in."""
    paths = list(dict.fromkeys(Path(path) for path in paths))
    if not paths:
        raise ReportError("no folder to report")
    comparison: Comparison | None
    if len(paths) == 1 and is_sweep(paths[0]):
        runs, comparison = read_sweep(paths[0])
        title = f"sweep {paths[0].resolve().name}"
    else:
        runs: list[RunFolder] = []
        for path in paths:
            runs += read_sweep(path)[0] if is_sweep(path) else [read_run_folder(path, str(path))]
        comparison = compare_runs(runs) if len(runs) > 1 else None
        title = f"{len(runs)} runs" if len(runs) > 1 else f"run {paths[0].resolve().name}"
    return Report(
        title=title,
        sources=[str(path) for path in paths],
        version=__version__,
        runs=[run.document for run in runs],
        comparison=comparison,
    )
