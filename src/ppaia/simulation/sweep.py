"""Sweeps: a grid of config values × several seeds, summarised as mean ± std per grid cell.

A run that diverges (see :class:`ppaia.simulation.engine.Divergence`) is kept in ``runs.csv`` with status
``diverged`` and the round it diverged in, but without metrics; its cell counts it under ``diverged`` and
averages only the seeds that completed, so one NaN never turns a whole cell into NaN unnoticed.
"""

from __future__ import annotations

import csv
import enum
import itertools
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ppaia.config import ConfigError, ExperimentConfig, parse_value, set_field
from ppaia.simulation.engine import RunResult, Simulation

__all__ = [
    "Status",
    "SweepResult",
    "SweepRun",
    "parse_grid_option",
    "sweep",
    "sweep_runs",
    "sweep_with_progress",
]

DEFAULT_METRICS = ("acc_mean", "acc_min", "honest_acc_mean", "consensus_distance", "bytes_cumulative")


class Status(enum.StrEnum):
    """How a run ended; a cell is DIVERGED when any of its seeds did."""

    COMPLETED = "completed"
    DIVERGED = "diverged"


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets, parentheses or quotes."""
    items, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    items.append("".join(current).strip())
    return [item for item in items if item]


def parse_grid_option(option: str) -> tuple[str, list[Any]]:
    """``key=v1,v2`` or ``key=[v1, v2]`` (TOML list) → (key, values)."""
    key, sep, text = option.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--grid {option!r}: expected key=value1,value2,...")
    value = parse_value(text.strip())
    values = value if isinstance(value, list) else [parse_value(item) for item in _split_top_level(text)]
    if not values:
        raise ConfigError(f"--grid {option!r}: no values")
    return key.strip(), values


@dataclass
class SweepResult:
    """Per-run final metrics and the mean ± std of each metric per grid cell."""

    keys: list[str]
    metrics: tuple[str, ...]
    runs: list[dict[str, Any]]
    cells: list[dict[str, Any]]

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for name, rows in (("runs.csv", self.runs), ("sweep.csv", self.cells)):
            with open(out / name, "w", newline="") as handle:
                columns = list(dict.fromkeys(column for row in rows for column in row))
                writer = csv.DictWriter(handle, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(rows)


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its grid cell, its seed and its validated config."""

    cell: dict[str, Any]
    seed: int
    config: ExperimentConfig


def sweep_runs(base: Mapping[str, Any], grid: Mapping[str, list[Any]], seeds: list[int]) -> list[SweepRun]:
    """Every (grid cell, seed) as a validated config, so a bad value fails before anything runs."""
    runs = []
    for values in itertools.product(*grid.values()):
        cell = dict(zip(grid, values, strict=True))
        table = dict(base)
        for key, value in sorted(
            cell.items(), key=lambda item: "." in item[0]
        ):  # fields before their options
            table = set_field(table, key, value)
        runs += [
            SweepRun(cell, seed, ExperimentConfig.model_validate(table | {"seed": seed})) for seed in seeds
        ]
    return runs


def sweep(
    runs: list[SweepRun],
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    on_round: Callable[[], None] | None = None,
    on_run: Callable[[SweepRun, RunResult], None] | None = None,
) -> SweepResult:
    """Run every sweep run; summarise each metric's mean ± std over the seeds of each grid cell."""
    keys = list(dict.fromkeys(key for run in runs for key in run.cell))
    finals, groups = [], defaultdict(list)
    for run in runs:
        result = Simulation(run.config).run(None if on_round is None else lambda _r, _row: on_round())
        if on_run is not None:
            on_run(run, result)
        labels = _labels(run.cell)
        final = {**labels, "seed": run.seed, **_outcome(result, metrics)}
        finals.append(final)
        groups[tuple(labels.items())].append(final)
    cells = []
    for labels, mine in groups.items():
        diverged = sum(final["status"] is Status.DIVERGED for final in mine)
        row: dict[str, Any] = {
            **dict(labels),
            "seeds": len(mine),
            "status": Status.DIVERGED if diverged else Status.COMPLETED,
            "diverged": diverged,
        }
        for metric in metrics:
            values = [final[metric] for final in mine if metric in final]
            if values:
                row[f"{metric}_mean"] = statistics.fmean(values)
                row[f"{metric}_std"] = statistics.pstdev(values)
        cells.append(row)
    return SweepResult(keys, metrics, finals, cells)


def sweep_with_progress(
    runs: list[SweepRun],
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    on_run: Callable[[SweepRun, RunResult], None] | None = None,
    console: Console | None = None,
) -> SweepResult:
    """:func:`sweep` with one rich progress bar over every round of every run."""
    columns = (
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sweep", total=sum(run.config.rounds for run in runs))
        return sweep(runs, metrics, on_round=lambda: progress.advance(task), on_run=on_run)


def _labels(cell: dict[str, Any]) -> dict[str, str]:
    return {key: _label(value) for key, value in cell.items()}


def _outcome(result: RunResult, metrics: tuple[str, ...]) -> dict[str, Any]:
    """A run's status and final metrics, or where it diverged (its last metrics are not comparable)."""
    if result.divergence is not None:
        return {"status": Status.DIVERGED, "diverged_round": result.divergence.round}
    return {
        "status": Status.COMPLETED,
        **{metric: result.final[metric] for metric in metrics if metric in result.final},
    }


def _label(value: Any) -> str:
    return value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
