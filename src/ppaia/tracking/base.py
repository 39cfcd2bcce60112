"""Experiment loggers: a finished run, recorded into TensorBoard, MLflow or Weights & Biases.

A logger is a registered component (``--log tensorboard``, ``--log "mlflow(experiment='dp')"``) whose
backend is an optional extra, imported only when the logger records: ``ppaia`` itself needs none of
them. It records a run from its written output folder (:class:`TrackedRun`) — the per-round metrics of
``metrics.csv``, the resolved ``config.toml``, ``summary.json`` with its provenance, and every output file
as artifacts — so that what the tracker shows is exactly what the folder holds, for ``ppaia run`` and for
each run of a sweep alike. The progress bar shows a run live; the tracker gets it once it is written.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import tomllib
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ppaia.registry import Component, Registry

__all__ = ["LOGGERS", "RunLogger", "TrackedRun", "TrackingError", "flatten", "open_loggers", "record_run"]


class TrackingError(ValueError):
    """A logger that cannot be used (its package is not installed) or that failed to record a run."""


def flatten(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``("rule.steps", 2)`` pairs of a nested table (a list is one value)."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@dataclass(frozen=True)
class TrackedRun:
    """A written run folder, as a logger records it."""

    out: Path  # absolute
    name: str  # the tracker's name for the run
    config: dict[str, Any]  # config.toml
    history: list[dict[str, float]]  # metrics.csv: one row per evaluated round, "round" included
    summary: dict[str, Any]  # summary.json

    @classmethod
    def read(cls, out: str | Path, name: str | None = None) -> TrackedRun:
        """The run in folder `out`, named `name` (default: the folder's name; a sweep names its runs
        ``<sweep>/<cell>/seed-<k>``, whose folders are all ``seed-<k>``)."""
        out = Path(out).absolute()
        with open(out / "metrics.csv", newline="") as handle:
            history = [
                {key: float(value) for key, value in row.items() if value not in ("", None)}
                for row in csv.DictReader(handle)
            ]
        return cls(
            out,
            name or out.name,
            tomllib.loads((out / "config.toml").read_text()),
            history,
            json.loads((out / "summary.json").read_text()),
        )

    @property
    def diverged(self) -> bool:
        return self.summary.get("diverged") is not None

    def params(self) -> dict[str, str]:
        """The config as flat ``name -> text`` parameters (lists in JSON)."""
        return {
            key: value if isinstance(value, str) else json.dumps(value) for key, value in flatten(self.config)
        }

    def files(self) -> list[Path]:
        """The run's output files (top level: what ``ppaia run`` wrote, not a logger's own folder)."""
        return sorted(path for path in self.out.iterdir() if path.is_file())

    def scalars(self) -> dict[str, float]:
        """The numbers of summary.json (final metrics, set-up time, sizes), without lists and tables."""
        return {
            key: float(value)
            for key, value in self.summary.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }


class RunLogger(Component):
    """Records a written run in an experiment tracker; each backend is an optional extra."""

    packages: ClassVar[tuple[str, ...]]  # the modules it imports
    extra: ClassVar[str]  # the pip extra that installs them: pip install 'ppaia[<extra>]'

    def check(self) -> None:
        """Refuse at once, before anything runs, when the backend is not installed."""
        missing = [name for name in self.packages if importlib.util.find_spec(name) is None]
        if missing:
            raise TrackingError(
                f"--log {self.name}: needs {', '.join(missing)}, which is not installed; "
                f"pip install 'ppaia[{self.extra}]'"
            )

    @abstractmethod
    def record(self, run: TrackedRun) -> str:
        """Write `run` to the tracker; returns where it went, for the console."""


LOGGERS: Registry[RunLogger] = Registry("logger")


def open_loggers(specs: Iterable[str]) -> list[RunLogger]:
    """The loggers ``--log`` names, each checked to be installed (a SpecError or ValidationError names a
    wrong one, a TrackingError a missing package)."""
    loggers = [LOGGERS.create(spec) for spec in specs]
    for logger in loggers:
        logger.check()
    return loggers


def record_run(loggers: Iterable[RunLogger], out: str | Path, name: str | None = None) -> list[str]:
    """Record the run written in `out` (as `name`, see :meth:`TrackedRun.read`) with every logger; where
    each put it. Every logger is tried; a failure (a tracker's own exception: an unreachable server, a
    locked store) is one TrackingError naming the loggers that failed, raised after the others have
    recorded."""
    loggers = list(loggers)
    if not loggers:
        return []
    run = TrackedRun.read(out, name)
    done, failed = [], []
    for logger in loggers:
        try:
            done.append(logger.record(run))
        except Exception as err:  # a third-party tracker's failure, whatever its type, is reported as ours
            failed.append(f"--log {logger.label()}: {type(err).__name__}: {err}")
    if failed:
        raise TrackingError(f"{'; '.join(failed)} (the run's outputs are in {run.out})")
    return done
