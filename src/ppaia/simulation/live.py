"""A run's rounds as they happen: ``rounds.jsonl``, one JSON record per line, appended after each round.

``ppaia run --dashboard`` writes it into the run's folder (while the run is written it is the hidden
staging folder beside ``--out``); the dashboard (:mod:`ppaia.dashboard`) follows it, live or after the
run. The simulator knows nothing about who reads it: :class:`RoundRecorder` is a plain observer of
:meth:`Simulation.run` and only writes what the round computed anyway — each peer's accuracy and loss
in an evaluated round, the peers that did not train, the rule's state and the ε spent, and which links
carried models — bounded so that a line stays small at 10,000 peers: a peer × partner matrix (learned
trust) is written as the means of at most :data:`MAX_BLOCKS` × :data:`MAX_BLOCKS` blocks of peers
(exact up to that many peers), with its entries only when there are at most :data:`MAX_PAIRS`; the
links that carried models only when at most :data:`MAX_PAIRS` pairs did.

The records are pydantic models, read back by :func:`read_record`: a line that is not one (a file
written by something else, or cut off) is a :class:`RecordFileError` the reader counts and skips.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO, Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ppaia.attacks import choose_attackers
from ppaia.config import ExperimentConfig
from ppaia.simulation.engine import RoundView, Simulation
from ppaia.simulation.report import describe

__all__ = [
    "MAX_BLOCKS",
    "MAX_PAIRS",
    "RECORD_FILE",
    "Matrix",
    "Record",
    "RecordFileError",
    "RoundRecord",
    "RoundRecorder",
    "RunEnd",
    "RunStart",
    "attackers_of",
    "block_means",
    "finite",
    "read_record",
]

RECORD_FILE = "rounds.jsonl"
MAX_BLOCKS = 200  # a peer × partner matrix is kept as at most 200 × 200 block means
MAX_PAIRS = 20_000  # entries (links, matrix entries) listed one by one at most; beyond, only aggregates
MAX_EDGES = 200_000  # topology links listed in the start record at most (a complete graph of 10,000: none)
MAX_LINE = 64 << 20  # bytes of one record a reader accepts

Value = float | None  # None: not finite (NaN, ±inf) or not known


class RecordFileError(ValueError):
    """A line of a record file that is not a record."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Matrix(_Record):
    """A `size` × `size` peer × partner matrix: `values` are the row-major means of `blocks` × `blocks`
    blocks of peers (one peer per block up to :data:`MAX_BLOCKS` peers; None where no entry is known);
    `pairs` every known entry (peer, partner, value), when there are at most :data:`MAX_PAIRS`."""

    size: int = Field(ge=1)
    blocks: int = Field(ge=1, le=MAX_BLOCKS)
    values: list[Value]
    pairs: list[tuple[int, int, float]] | None = None


class RunStart(_Record):
    """The run: its peers and rounds, what was run (`title`, `config` as TOML), attackers, each peer's
    training samples, and the topology's links (None when there are more than :data:`MAX_EDGES`)."""

    kind: Literal["start"] = "start"
    peers: int = Field(ge=1)
    rounds: int = Field(ge=0)
    title: str
    config: str
    attackers: list[int] = Field(default_factory=list)
    samples: list[int] = Field(default_factory=list)
    edges: list[tuple[int, int]] | None = None
    edges_total: int = 0


class RoundRecord(_Record):
    """Round `round`. `metrics` (the row of metrics.csv), `accuracy` and `loss` (per peer) only in an
    evaluated round; `idle` the peers that did not train (None: every peer trained); `values` per-peer
    state (the ε spent, FLoBC's scores), `matrices` peer × partner state (learned trust); `traffic` the
    (sender, receiver, models) pairs since the previous record, None when too many to list."""

    kind: Literal["round"] = "round"
    round: int = Field(ge=0)
    metrics: dict[str, Value] | None = None
    accuracy: list[Value] | None = None
    loss: list[Value] | None = None
    idle: list[int] | None = None
    values: dict[str, list[Value]] = Field(default_factory=dict)
    matrices: dict[str, Matrix] = Field(default_factory=dict)
    traffic: list[tuple[int, int, int]] | None = None


class RunEnd(_Record):
    """The run ended: `diverged` says where, if it stopped early; `out` is its output folder."""

    kind: Literal["end"] = "end"
    diverged: str | None = None
    out: str | None = None


Record = Annotated[RunStart | RoundRecord | RunEnd, Field(discriminator="kind")]
_RECORD: TypeAdapter[Record] = TypeAdapter(Record)


def attackers_of(config: ExperimentConfig) -> list[int]:
    """The peers that `config` makes attackers (none without an attack)."""
    if config.attack is None:
        return []
    return choose_attackers(config.peers, config.attackers, config.seed).nonzero().flatten().tolist()


def read_record(line: bytes | str) -> RunStart | RoundRecord | RunEnd:
    """The record on one line; RecordFileError if it is not one."""
    if len(line) > MAX_LINE:
        raise RecordFileError(f"a record of {len(line)} bytes (at most {MAX_LINE})")
    try:
        return _RECORD.validate_json(line)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])[:80]
        raise RecordFileError(f"not a record ({where}: {first['msg'][:120]})") from None


def finite(values: torch.Tensor | np.ndarray | list[float]) -> list[Value]:
    """Values as a JSON-ready list with 6 significant digits (a line stays short; a consensus distance
    of 1e-9 stays 1e-9), None for a value that is not finite. (A round's per-peer values may be on the
    run's device: they come to the host here.)"""
    if isinstance(values, torch.Tensor):
        values = values.cpu()
    return [float(f"{v:.6g}") if math.isfinite(v) else None for v in np.asarray(values, dtype=float).tolist()]


def block_means(rows: np.ndarray, columns: np.ndarray, values: np.ndarray, size: int) -> Matrix:
    """The :class:`Matrix` of the entries (`rows[k]`, `columns[k]`) = `values[k]` of a `size` × `size`
    matrix (entries that are not finite are left out)."""
    keep = np.isfinite(values)
    rows, columns, values = rows[keep], columns[keep], values[keep]
    blocks = min(size, MAX_BLOCKS)
    cell = (rows * blocks // size) * blocks + columns * blocks // size
    sums = np.bincount(cell, weights=values, minlength=blocks * blocks)
    counts = np.bincount(cell, minlength=blocks * blocks)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts  # NaN where a block holds no entry
    pairs = None
    if len(values) <= MAX_PAIRS:
        pairs = [(i, j, v) for i, j, v in zip(rows.tolist(), columns.tolist(), finite(values), strict=True)]
    return Matrix(size=size, blocks=blocks, values=finite(means), pairs=pairs)


def _matrix(matrix: torch.Tensor) -> Matrix:
    """A sparse or dense square state tensor as a :class:`Matrix`."""
    if matrix.is_sparse:
        matrix = matrix.coalesce()
        (rows, columns), values = matrix.indices().numpy(), matrix.values().double().numpy()
    else:
        rows, columns = np.indices(matrix.shape).reshape(2, -1)
        values = matrix.double().numpy().reshape(-1)
    return block_means(rows, columns, values, matrix.shape[0])


class RoundRecorder:
    """Appends `simulation`'s records to `path` (created): its start now, a round after each round
    (:meth:`record`, the observer :meth:`Simulation.run` takes), the end at :meth:`close`. Each record
    is one line, written and flushed whole, so a reader never sees half a record unless it reads while
    the line is being written (it then waits for the newline)."""

    def __init__(self, path: Path, simulation: Simulation) -> None:
        setup, config = simulation.setup, simulation.config
        self.n = simulation.n_peers
        self._handle: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._pending: list[
            torch.Tensor
        ] = []  # sender * n + receiver of every transfer since the last record
        edges = setup.graph.edges
        self._write(
            RunStart(
                peers=self.n,
                rounds=config.rounds,
                title=describe(config, self.n),
                config=config.to_toml(),
                attackers=attackers_of(config),
                samples=setup.train_counts.tolist(),
                edges=edges.T.tolist() if edges.shape[1] <= MAX_EDGES else None,
                edges_total=int(edges.shape[1]),
            )
        )

    def _write(self, record: RunStart | RoundRecord | RunEnd) -> None:
        self._handle.write(record.model_dump_json() + "\n")
        self._handle.flush()

    def record(self, view: RoundView) -> None:
        """Write round `view.round` (an observer for :meth:`Simulation.run`)."""
        for step in view.plan.steps:
            senders, receivers = step.sender_peers(), step.receiver_ids()[step.rows]
            moved = (senders != receivers) & (receivers >= 0)
            self._pending.append(senders[moved] * self.n + receivers[moved])
        idle = torch.zeros(0) if view.trainers is None else (~view.trainers).nonzero().flatten()
        state = view.state
        self._write(
            RoundRecord(
                round=view.round,
                metrics=None
                if view.row is None
                else dict(zip(view.row, finite(list(view.row.values())), strict=True)),
                accuracy=None if view.accuracy is None else finite(view.accuracy),
                loss=None if view.loss is None else finite(view.loss),
                idle=idle.tolist() if idle.numel() else None,
                values={name: finite(value) for name, value in state.items() if value.dim() == 1},
                matrices={name: _matrix(value) for name, value in state.items() if value.dim() == 2},
                traffic=self._traffic(),
            )
        )

    def _traffic(self) -> list[tuple[int, int, int]] | None:
        """(sender, receiver, models) since the last record; None when more than MAX_PAIRS pairs."""
        if not self._pending:
            return []
        keys, counts = torch.cat(self._pending).unique(return_counts=True)
        self._pending = []
        if keys.numel() > MAX_PAIRS:
            return None
        return [(k // self.n, k % self.n, c) for k, c in zip(keys.tolist(), counts.tolist(), strict=True)]

    def close(self, diverged: str | None = None, out: Path | None = None) -> None:
        """Write the end record and close the file."""
        self._write(RunEnd(diverged=diverged, out=None if out is None else str(out)))
        self._handle.close()
