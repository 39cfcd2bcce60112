"""Several runs compared per cell, with the sweep's own statistics and tables (no second implementation):
curves are :meth:`ppaia.simulation.sweep.SweepResult.curves` (mean over a cell's completed seeds ± the
95% Student-t interval), the table is :mod:`ppaia.simulation.tables`' (the same rows as ``results.md``
and ``results.tex``).

A sweep folder brings its cells: its grid keys (``sweep.toml``), each run's cell and status
(``runs.csv``) and each cell's statistics (``sweep.csv``), so its report's tables equal its
``results.md`` and ``results.tex``. Run folders given one by one are grouped by the config fields in
which they differ (their seeds aside), and their cells summarised as a sweep summarises its own.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ppaia.config import ConfigError
from ppaia.report.document import Comparison, Curve, RunRef, Table
from ppaia.report.errors import ReportError
from ppaia.report.folders import RunFolder, read_run_folder, spec_label
from ppaia.simulation.sweep import (
    CURVES,
    DEFAULT_METRICS,
    SPEC_FILE,
    Status,
    SweepResult,
    SweepSpec,
    cell_label,
    outcome,
    summarise,
)
from ppaia.simulation.tables import latex_table, markdown_table, table_rows

__all__ = ["compare_runs", "is_sweep", "read_sweep"]

NOT_COMPARED = {"seed", "plugins"}  # config fields that do not make runs different cells


def is_sweep(folder: Path) -> bool:
    return (folder / SPEC_FILE).is_file()


def read_sweep(folder: Path) -> tuple[list[RunFolder], Comparison]:
    """A finished sweep folder: its runs (in ``runs.csv``'s order) and their comparison."""
    try:
        spec = SweepSpec.load(folder)
    except ConfigError as err:
        raise ReportError(str(err)) from None
    keys = list(spec.grid)
    finals = _table(folder / "runs.csv", "`ppaia sweep --resume DIR` finishes the sweep and writes it")
    cells = _table(folder / "sweep.csv", "`ppaia sweep --resume DIR` writes it")
    root = folder.resolve()
    runs = []
    for line, final in enumerate(finals, start=2):
        where = f"{folder / 'runs.csv'}, line {line}"
        try:
            path = (folder / final["folder"]).resolve()
            final["status"] = Status(final["status"])
        except (KeyError, TypeError, ValueError) as err:
            raise ReportError(f"{where}: no folder or status ({err})") from None
        if not path.is_relative_to(root):
            raise ReportError(f"{where}: folder {final['folder']!r} is outside the sweep folder")
        runs.append(read_run_folder(path, str(folder / final["folder"])))
    return runs, _comparison(keys, spec.metrics, spec.metric, runs, finals, cells, folder / "sweep.csv")


def compare_runs(runs: Sequence[RunFolder]) -> Comparison:
    """Runs given one by one, grouped into cells by the config fields they differ in."""
    configs = [run.config for run in runs]
    fields = dict.fromkeys(key for config in configs for key in config if key not in NOT_COMPARED)
    keys = [key for key in fields if any(config.get(key) != configs[0].get(key) for config in configs)]
    metrics = list(DEFAULT_METRICS)
    finals = [
        {
            **{key: "none" if run.config.get(key) is None else spec_label(run.config[key]) for key in keys},
            "seed": run.config.get("seed", ""),
            "folder": run.document.name,
            **outcome(run.summary, tuple(metrics)),
        }
        for run in runs
    ]
    cells = summarise(keys, finals, tuple(metrics))
    return _comparison(keys, metrics, "acc_mean", runs, finals, cells, None)


def _comparison(
    keys: list[str],
    metrics: list[str],
    metric: str,
    runs: Sequence[RunFolder],
    finals: list[dict[str, Any]],
    cells: Sequence[Mapping[str, Any]],
    cells_file: Path | None,
) -> Comparison:
    result = SweepResult(keys, tuple(metrics), finals, list(cells), [run.history for run in runs])
    columns = dict.fromkeys(column for history in result.histories for row in history for column in row)
    shown = [*CURVES, "consensus_distance", "bytes_cumulative", metric]  # first in the page, in this order
    ordered = dict.fromkeys([*shown, *columns])
    curves = {}
    for column in ordered:
        if column == "round" or column not in columns:
            continue
        bands = result.curves(column)
        if bands:
            curves[column] = [
                Curve(cell=label, x=list(band.x), mean=list(band.mean), half=list(band.half))
                for label, band in bands.items()
            ]
    try:
        header, rows = table_rows(keys, metrics, cells)
        markdown, latex = markdown_table(keys, metrics, cells), latex_table(keys, metrics, cells)
    except (KeyError, ValueError) as err:
        raise ReportError(f"{cells_file}: not a sweep's cells ({err!r})") from None
    entries = [[entry if isinstance(entry, str) else " ± ".join(entry) for entry in row] for row in rows]
    return Comparison(
        keys=keys,
        metric=metric,
        cells=list(dict.fromkeys(cell_label(keys, cell) for cell in cells)),
        curves=curves,
        table=Table(columns=header, rows=entries),
        markdown=markdown,
        latex=latex,
        runs=[
            RunRef(
                cell=cell_label(keys, final),
                seed=str(final.get("seed", "")),
                status=str(final["status"]),
                run=index,
            )
            for index, final in enumerate(finals)
        ],
    )


def _table(file: Path, hint: str) -> list[dict[str, Any]]:
    try:
        with open(file, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        raise ReportError(f"{file}: missing; {hint}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ReportError(f"{file}: cannot be read ({err})") from None
