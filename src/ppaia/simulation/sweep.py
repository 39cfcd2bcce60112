"""Sweeps: a grid of config values × several seeds, summarised per grid cell as mean, sample standard
deviation and 95% confidence interval over the seeds.

Given a folder, a sweep keeps every run there as ``ppaia run`` writes it, as soon as it ends, with the
sweep's spec (``sweep.toml``) written before the first run: an interrupted sweep is finished by running the
same spec into the same folder (complete runs are read back, not run again), and the folder alone is
enough to run the whole sweep again. A run read back from its folder (``summary.json``, ``metrics.csv``)
gives the same numbers as when it ran (JSON and CSV keep floats exactly), so a resumed sweep's tables and
plots equal an uninterrupted one's.

A run that diverges (see :class:`ppaia.simulation.engine.Divergence`) is kept in ``runs.csv`` with status
``diverged`` and the round it diverged in, but without metrics; its cell counts it under ``diverged`` and
averages only the seeds that completed, so one NaN never turns a whole cell into NaN unnoticed.
"""

from __future__ import annotations

import csv
import enum
import functools
import itertools
import re
import shutil
import tomllib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ppaia import strict_json
from ppaia.config import ConfigError, ExperimentConfig, format_validation_error, parse_value, set_field
from ppaia.registry import SpecError, split_arguments
from ppaia.simulation.engine import RunResult
from ppaia.simulation.executors import Executor, LocalExecutor, RunFailure
from ppaia.simulation.plots import Band, band_plot
from ppaia.simulation.report import describe, write_outputs
from ppaia.simulation.stats import estimate
from ppaia.simulation.tables import latex_table, markdown_table

__all__ = [
    "CURVES",
    "SPEC_FILE",
    "Status",
    "SweepFailed",
    "SweepResult",
    "SweepRun",
    "SweepSpec",
    "cell_label",
    "outcome",
    "parse_grid_option",
    "pending",
    "read_run",
    "run_folders",
    "summarise",
    "sweep",
    "sweep_runs",
    "sweep_with_progress",
]

DEFAULT_METRICS = (
    "acc_mean",
    "acc_min",
    "honest_acc_mean",
    "honest_loss_mean",
    "consensus_distance",
    "bytes_cumulative",
)
CURVES = ("honest_acc_mean", "honest_loss_mean")  # compared against rounds, one curve per cell


class Status(enum.StrEnum):
    """How a run ended; a cell is DIVERGED when any of its seeds did."""

    COMPLETED = "completed"
    DIVERGED = "diverged"


def parse_grid_option(option: str) -> tuple[str, list[Any]]:
    """``key=v1,v2`` or ``key=[v1, v2]`` (TOML list) → (key, values)."""
    key, sep, text = option.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--grid {option!r}: expected key=value1,value2,...")
    value = parse_value(text.strip())
    try:
        values = (
            value
            if isinstance(value, list)
            else [parse_value(item) for item in split_arguments(text, option)]
        )
    except SpecError as err:
        raise ConfigError(f"--grid {err}") from None
    if not values:
        raise ConfigError(f"--grid {option!r}: no values")
    return key.strip(), values


class SweepSpec(BaseModel):
    """Everything a sweep runs from, kept as ``sweep.toml`` in its folder: ``ppaia sweep --resume DIR``
    finishes the sweep from it, ``ppaia sweep --from DIR`` runs it again elsewhere.

    `base` is the config file's resolved table with the ``--set`` overrides applied on top (kept as given,
    not validated alone: a base may be completed by the grid, e.g. ``attackers`` with a grid over
    ``attack``); each run's fully resolved config is its folder's ``config.toml``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # a file: nothing is coerced

    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    metrics: Annotated[list[str], Field(min_length=1)]
    metric: str  # the one the command prints

    @model_validator(mode="after")
    def _shown_is_kept(self) -> SweepSpec:
        if self.metric not in self.metrics:
            raise ValueError(f"metric {self.metric!r} is not among metrics")
        return self

    def runs(self) -> list[SweepRun]:
        return sweep_runs(self.base, self.grid, self.seeds)

    def save(self, folder: Path) -> None:
        """Write ``sweep.toml`` into `folder` (created)."""
        folder.mkdir(parents=True, exist_ok=True)
        text = tomli_w.dumps(self.model_dump())
        (folder / SPEC_FILE).write_text(SPEC_HEADER + text)

    @classmethod
    def load(cls, path: Path) -> SweepSpec:
        """From a sweep folder or its ``sweep.toml``; a missing or bad file is a :class:`ConfigError`."""
        file = path / SPEC_FILE if path.is_dir() else path
        try:
            return cls.model_validate(tomllib.loads(file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ConfigError(f"{path}: not a sweep folder (no {SPEC_FILE})") from None
        except OSError as err:
            raise ConfigError(f"{file}: cannot be read ({err.strerror})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{file}: not valid TOML ({err})") from None
        except ValidationError as err:
            raise ConfigError(f"{file}: {format_validation_error(err, '; ')}") from None


SPEC_FILE = "sweep.toml"
SPEC_HEADER = (
    "# The spec of a `ppaia sweep`: `ppaia sweep --resume DIR` finishes it in its folder DIR,\n"
    "# `ppaia sweep --from DIR --out NEW` runs it again into NEW.\n"
)


@dataclass
class SweepResult:
    """Per-run final metrics, each grid cell's mean, sample std and 95% CI per metric, and (for curves)
    each run's per-round history; `described` names what every run shares (for plot titles)."""

    keys: list[str]
    metrics: tuple[str, ...]
    runs: list[dict[str, Any]]
    cells: list[dict[str, Any]]
    histories: list[list[dict[str, float]]] = field(default_factory=list)
    described: str = ""

    def write(self, out: Path, curves: Sequence[str] = CURVES) -> None:
        """``runs.csv``, ``sweep.csv``, ``results.md``, ``results.tex`` and, with histories, a comparison
        plot (``<metric>.png`` and ``.pdf``) of each per-round metric in `curves`."""
        out.mkdir(parents=True, exist_ok=True)
        for name, rows in (("runs.csv", self.runs), ("sweep.csv", self.cells)):
            with open(out / name, "w", newline="") as handle:
                columns = list(dict.fromkeys(column for row in rows for column in row))
                writer = csv.DictWriter(handle, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(rows)
        (out / "results.md").write_text(markdown_table(self.keys, self.metrics, self.cells))
        (out / "results.tex").write_text(latex_table(self.keys, self.metrics, self.cells))
        for metric in dict.fromkeys(curves) if self.histories else ():
            bands = self.curves(metric)
            if bands:
                band_plot(
                    bands,
                    [out / f"{metric}.png", out / f"{metric}.pdf"],
                    xlabel="round",
                    ylabel=metric,
                    title=f"{metric}: mean over seeds, 95% CI band · {self.described}",
                    ylim=(0, 1) if "acc" in metric else None,
                    log=metric == "consensus_distance" and min(min(band.mean) for band in bands.values()) > 0,
                )

    def curves(self, metric: str) -> dict[str, Band]:
        """Per cell: `metric` at each round, mean ± 95% CI over the cell's completed seeds."""
        groups: dict[str, list[list[dict[str, float]]]] = defaultdict(list)
        for run, history in zip(self.runs, self.histories, strict=True):
            if run["status"] is Status.COMPLETED and all(metric in row for row in history):
                groups[cell_label(self.keys, run)].append(history)
        curves = {}
        for label, histories in groups.items():
            by_round: dict[float, list[float]] = defaultdict(list)
            for history in histories:
                for row in history:
                    by_round[row["round"]].append(row[metric])
            rounds = [round_ for round_, values in by_round.items() if len(values) == len(histories)]
            estimates = [estimate(by_round[round_]) for round_ in rounds]
            curves[label] = Band(rounds, [e.mean for e in estimates], [e.ci95 for e in estimates])
        return curves


def cell_label(keys: Sequence[str], run: Mapping[str, Any]) -> str:
    """A run's grid cell as a legend names it: ``key=value, ...`` (``base`` for a sweep without a grid)."""
    return ", ".join(f"{key}={run[key]}" for key in keys if key in run) or "base"


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


def run_folders(runs: list[SweepRun]) -> list[str]:
    """Where each run's outputs go inside a sweep folder: ``runs/<cell>/seed-<seed>``, the cell named by
    its position (unique) and its values (readable; characters unsafe in file names become ``_``)."""
    cells: dict[tuple[tuple[str, str], ...], int] = {}
    folders = []
    for run in runs:
        labels = _labels(run.cell)
        index = cells.setdefault(tuple(labels.items()), len(cells))
        slug = _UNSAFE.sub("_", ",".join(f"{key}={value}" for key, value in labels.items()))[:80]
        folders.append(f"runs/{index:03d}{'-' if slug else ''}{slug}/seed-{run.seed}")
    return folders


_UNSAFE = re.compile(r"[^A-Za-z0-9.,=+-]+")


def pending(runs: list[SweepRun], out: Path | None) -> list[bool]:
    """Which runs still have to run: all without `out`, else those whose folder is not complete."""
    return [out is None or read_run(out / folder) is None for folder in run_folders(runs)]


class SweepFailed(Exception):
    """Runs of a sweep that raised; the sweep ran all its others (and, given a folder, kept them)."""

    def __init__(self, failures: list[tuple[SweepRun, RunFailure]], total: int) -> None:
        self.failures = failures
        super().__init__(f"{len(failures)} of {total} runs failed")


def sweep(
    runs: list[SweepRun],
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    on_round: Callable[[], None] | None = None,
    on_run: Callable[[SweepRun, RunResult], None] | None = None,
    out: Path | None = None,
    spec: SweepSpec | None = None,
    plots: bool = True,
    executor: Executor | None = None,
) -> SweepResult:
    """Run every sweep run; summarise each metric's mean, sample std and 95% CI over each cell's seeds.

    With `out`, each run's outputs are written to its :func:`run_folders` folder inside `out` as soon as
    it ends, exactly as ``ppaia run`` writes them; a run whose folder is already complete (an earlier,
    interrupted sweep) is read back instead of run again, and a partial one is run again. `spec` (the
    spec of `runs`) is saved into `out` just before the first run's folder is written: a sweep whose runs
    all fail (a config error only their set-up finds) leaves nothing behind, and one that has kept a run
    can always be resumed. Without `plots`, run folders hold every file but the images.

    The runs still to run go to `executor` (default: one after another in this process; see
    :mod:`ppaia.simulation.executors`), which may end them in any order; the tables keep the order of
    `runs`. A run that raises does not stop the others: once they have ended, :class:`SweepFailed` names
    every failed run (no folder is written for it, so resuming runs it again).
    """
    keys = list(dict.fromkeys(key for run in runs for key in run.cell))
    folders = run_folders(runs)
    done = {}
    for index, folder in enumerate(folders if out is not None else ()):
        kept = read_run(out / folder)
        if kept is not None:
            done[index] = kept
    todo = [index for index in range(len(runs)) if index not in done]
    failures = []
    with executor or LocalExecutor() as running:
        for position, ended in running.execute([runs[index] for index in todo], on_round):
            index = todo[position]
            if isinstance(ended, RunFailure):
                failures.append((index, ended))
                continue
            if out is not None:
                if spec is not None:
                    spec.save(out)
                    spec = None
                _clear(out / folders[index])
                write_outputs(ended, out / folders[index], plots=plots)
            if on_run is not None:
                on_run(runs[index], ended)
            done[index] = ended.summary(), ended.history
    if failures:
        raise SweepFailed([(runs[index], failure) for index, failure in sorted(failures)], len(runs))
    finals, histories = [], []
    for index, (run, folder) in enumerate(zip(runs, folders, strict=True)):
        summary, history = done[index]
        place = {} if out is None else {"folder": folder}
        finals.append({**_labels(run.cell), "seed": run.seed, **place, **outcome(summary, metrics)})
        histories.append(history)
    varied = {key.partition(".")[0] for key in keys}
    described = describe(runs[0].config, runs[0].config.peers, varied) if runs else ""
    return SweepResult(keys, metrics, finals, summarise(keys, finals, metrics), histories, described)


def summarise(
    keys: list[str], finals: list[dict[str, Any]], metrics: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One row per grid cell: its seeds, status and diverged count, and per metric the mean, the sample
    standard deviation (``_std``) and the 95% CI half-width (``_ci95``) over its completed seeds (NaN for
    both with one seed)."""
    groups: dict[tuple[tuple[str, Any], ...], list[dict[str, Any]]] = defaultdict(list)
    for final in finals:
        groups[tuple((key, final[key]) for key in keys if key in final)].append(final)
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
                spread = estimate(values)
                row |= {
                    f"{metric}_mean": spread.mean,
                    f"{metric}_std": spread.sd,
                    f"{metric}_ci95": spread.ci95,
                }
        cells.append(row)
    return cells


def sweep_with_progress(
    runs: list[SweepRun],
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    on_run: Callable[[SweepRun, RunResult], None] | None = None,
    console: Console | None = None,
    out: Path | None = None,
    spec: SweepSpec | None = None,
    plots: bool = True,
    executor: Executor | None = None,
) -> SweepResult:
    """:func:`sweep` with one rich progress bar over every round of every run still to run."""
    columns = (
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    todo = pending(runs, out)
    with Progress(*columns, console=console) as progress:
        total = sum(run.config.rounds for run, due in zip(runs, todo, strict=True) if due)
        task = progress.add_task("sweep", total=total)
        advance = functools.partial(progress.advance, task)
        return sweep(runs, metrics, advance, on_run, out=out, spec=spec, plots=plots, executor=executor)


SUMMARY_DEPTH = 32  # a summary.json nests a few levels (provenance); deeper is not one ppaia wrote


def read_run(folder: Path) -> tuple[dict[str, Any], list[dict[str, float]]] | None:
    """A complete run folder's summary and per-round history (its numeric values), or None if the folder
    is missing, partial, or holds files that do not parse as a run's (then the run is run again)."""
    try:
        summary = strict_json.loads(
            (folder / "summary.json").read_text(encoding="utf-8"), SUMMARY_DEPTH, constants=True
        )
        with open(folder / "metrics.csv", newline="", encoding="utf-8") as handle:
            history = [_numbers(row) for row in csv.DictReader(handle)]
    except (OSError, ValueError, RecursionError, csv.Error):
        return None
    diverged = summary.get("diverged") if isinstance(summary, dict) else None
    well_formed = (
        isinstance(summary, dict)
        and (diverged is None or (isinstance(diverged, dict) and _is_number(diverged.get("round"))))
        and bool(history)
        and all("round" in row for row in history)
    )
    return (summary, history) if well_formed else None


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    """A metrics.csv row's numeric values (a rule may also write text, which no table or plot uses)."""
    values = {}
    for key, text in row.items():
        with suppress(TypeError, ValueError):
            values[key] = float(text)
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _clear(folder: Path) -> None:
    """Remove what an interrupted run left: a partial folder, and staging folders (see write_outputs)."""
    for leftover in [folder, *folder.parent.glob(f".{folder.name}.*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover)


def _labels(cell: dict[str, Any]) -> dict[str, str]:
    return {key: _label(value) for key, value in cell.items()}


def outcome(summary: Mapping[str, Any], metrics: tuple[str, ...]) -> dict[str, Any]:
    """A run's status and final metrics from its summary (``summary.json``), or where it diverged (its
    last metrics are not comparable)."""
    if summary.get("diverged") is not None:
        return {"status": Status.DIVERGED, "diverged_round": summary["diverged"]["round"]}
    return {
        "status": Status.COMPLETED,
        **{metric: summary[metric] for metric in metrics if _is_number(summary.get(metric))},
    }


def _label(value: Any) -> str:
    return value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
