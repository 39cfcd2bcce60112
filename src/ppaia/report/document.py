"""The data an HTML report's page draws from, as one JSON document (a typed contract between the Python
that reads run folders and the page's JavaScript, ``ppaia/dashboard/static/js/report.js``).

Series are columnar (one list per column, ``null`` where a round has no value), which is what the chart
library takes as is. Non-finite floats become ``null`` in the JSON (JSON has no NaN); a summary's own
NaN or infinity is kept as text (see :func:`displayable`) so that the page shows it rather than a blank.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from ppaia.dashboard.views import Heat, PeerRows

__all__ = ["Comparison", "Curve", "HeatMap", "Report", "Run", "RunRef", "Table", "displayable"]

Cell = float | str | None  # a table entry: a number, text (shown as text, never as markup), or nothing


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="null")


class Table(_Document):
    """Rows of entries under a header (every row as long as the header)."""

    columns: list[str]
    rows: list[list[Cell]]


class HeatMap(_Document):
    """A peer × partner matrix a rule learned (e.g. learned trust) at some of its `recorded` rounds, each
    as the live dashboard draws it (block means, one byte per cell; see :class:`Heat`). Fewer rounds are
    kept than were recorded when they would not fit the report's budget (the page says so)."""

    name: str
    recorded: int
    heats: list[Heat]


class Run(_Document):
    """One run folder: its files as the page shows them."""

    name: str  # the folder, as given (or relative to its sweep folder)
    described: str  # what was run: dataset, partition, rule, peers, attack
    config_toml: str
    summary: dict[str, Any]
    metrics: dict[str, list[float | None]]  # metrics.csv by column, one value per evaluated round
    peers: PeerRows  # the dashboard's per-peer table: peers.csv, who attacked, each peer's last ε
    heat_maps: list[HeatMap]


class Curve(_Document):
    """One cell's per-round metric: the mean over its completed seeds ± the 95% CI half-width."""

    cell: str
    x: list[float]
    mean: list[float | None]
    half: list[float | None]  # null where there is no interval (one seed)


class RunRef(_Document):
    """Where a compared run sits: its cell, its seed, how it ended, and its index in ``Report.runs``."""

    cell: str
    seed: str
    status: str
    run: int


class Comparison(_Document):
    """Several runs compared per cell: a sweep's grid cells, or the config fields the runs differ in."""

    keys: list[str]  # what varies between cells (a sweep's grid keys)
    metric: str  # the headline metric (a sweep's --metric)
    cells: list[str]  # cell labels, as the curves name them
    curves: dict[str, list[Curve]]  # per-round metric → one curve per cell
    table: Table  # the results table (the rows of the Markdown and LaTeX versions)
    markdown: str
    latex: str
    runs: list[RunRef]


class Report(_Document):
    """Everything one report shows."""

    title: str
    sources: list[str]  # the folders given
    version: str  # ppaia's version that wrote the report
    runs: list[Run]
    comparison: Comparison | None  # several runs or a sweep


def displayable(value: Any) -> Any:
    """`value` (parsed JSON) with non-finite floats as text: ``NaN``, ``inf``, ``-inf``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: displayable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [displayable(item) for item in value]
    return value
