"""Where a dashboard's data comes from: a simulated run's folder, or real peers' signed statuses.

- :class:`RunSource` follows a run folder: the ``rounds.jsonl`` that ``ppaia run --dashboard`` appends
  to after every round (:mod:`ppaia.simulation.live`), while the run writes it (then the file lies in
  the hidden staging folder beside the folder named) or after; a finished run folder without one is
  read from its CSV files (metrics per round, each peer's final accuracy, the ε, trust and score series).
  Every round is kept, so any earlier round can be shown (the page's slider).
- :class:`SwarmSource` asks each peer for its status (:func:`ppaia.network.transfer.fetch_status`:
  signed, validated as a :class:`PeerStatus`, else refused), twice a second. A peer that does not answer
  for longer than the timing policy's deadline (:class:`ppaia.network.timing.Timing`, fed with the round
  times seen here) is *dropped*, as its neighbours would leave it out. With `discover`, it also joins
  the peers' DHT (as a node that publishes nothing) through the peers it follows, and follows every swarm
  index the DHT names a peer for (:class:`ppaia.network.addressbook.AddressBook`, as peers find each
  other), up to the number of peers the shared config names. It fills the view's fields as a simulation
  does: the bytes curve from the model bytes each peer reports it fetched, the trust heat-map and links
  from the trust rows the peers report (else links by the bytes fetched over them), and the consensus
  distance from the peers' models after each round, which it fetches and verifies itself
  (:class:`Consensus`).

Both keep only what they were sent, as data: nothing a file or a peer holds is run, imported or
interpreted (a config's topology is rebuilt only for a registered one, :func:`views.topology_edges`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import csv
import ipaddress
import json
import math
import time
import tomllib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ppaia import codec, strict_json
from ppaia.config import ExperimentConfig
from ppaia.dashboard.views import (
    Curves,
    GraphView,
    Layout,
    LedgerEvent,
    PeerRows,
    SourceKind,
    State,
    View,
    heat_of,
    layout,
    topology_edges,
)
from ppaia.learning.layout import ParamLayout
from ppaia.network.addressbook import AddressBook
from ppaia.network.dht import PeerDHT
from ppaia.network.errors import NetworkError, ProtocolError, Reason
from ppaia.network.identity import Identity
from ppaia.network.status import MAX_LISTED, PeerStatus, Phase
from ppaia.network.timing import Timing
from ppaia.network.transfer import NotReady, fetch_model, fetch_status
from ppaia.simulation.live import (
    MAX_LINE,
    RECORD_FILE,
    Matrix,
    RecordFileError,
    RoundRecord,
    RunEnd,
    RunStart,
    attackers_of,
    block_means,
    finite,
    read_record,
)
from ppaia.simulation.sweep import SUMMARY_DEPTH

__all__ = [
    "CURVE_KEYS",
    "Consensus",
    "ModelSpec",
    "RunSource",
    "Source",
    "SwarmSource",
    "Timeline",
    "is_loopback",
    "model_spec",
    "records_of_folder",
]

CURVE_KEYS = (
    "acc_mean",
    "acc_min",
    "acc_max",
    "honest_acc_mean",
    "consensus_distance",
    "bytes_cumulative",
    "epsilon_mean",
    "epsilon_max",
)
LEDGER_SHOWN = 200  # ledger events listed at most (the newest)
COMMITTEE = ("accepted", "approvals", "score")  # FLoBC's per-peer record of a release
LISTED_VOTES = 12  # candidates whose votes a ledger event lists at most
MAX_PROBLEMS = 20  # problems listed at most
POLL_S = 0.5  # how often a swarm's statuses are asked, and a run's record file is read
STATUS_TIMEOUT_S = 1.0
MAX_HISTORY = 10_000  # rounds of accuracy kept per peer of a swarm
MAX_FOLLOWED = 1_000  # peers of a swarm followed at most (found through the DHT)
DISCOVER_EVERY_S = 5.0  # how often the DHT is asked for the indices not followed yet
MAX_DISTANCE_PEERS = 64  # the consensus distance of a swarm is computed up to this many peers
DISTANCE_PARALLEL = 4  # models fetched at once for it (and so held in memory at once, at most)
DISTANCE_TIMEOUT_S = 20.0  # all the fetches for one round's distance together
MODEL_TIMEOUT_S = 10.0  # one fetch


class Source(ABC):
    """Something that changes (:attr:`version` counts the changes) and can be shown as a :class:`View`."""

    kind: SourceKind

    def __init__(self) -> None:
        self.version = 0
        self._changed: asyncio.Event | None = None

    def changed(self) -> None:
        """A change: wake everyone waiting in :meth:`wait`."""
        self.version += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait(self, seen: int, timeout: float) -> None:
        """Return once :attr:`version` differs from `seen`, or after `timeout` seconds."""
        if self.version != seen:
            return
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    @abstractmethod
    async def follow(self) -> None:
        """Keep the data up to date (runs until cancelled, or returns when nothing can change)."""

    @abstractmethod
    def view(self, round_: int | None = None) -> View:
        """The view at round `round_` (None: the newest)."""


# ---------------------------------------------------------------------------------------------------
# a simulated run


def _at(rounds: list[int], round_: int) -> int | None:
    """The last of the sorted `rounds` at or before `round_` (None: none)."""
    k = bisect.bisect_right(rounds, round_)
    return rounds[k - 1] if k else None


@dataclass
class _Series:
    """Values known at some rounds (sorted): the newest at or before a round."""

    rounds: list[int] = field(default_factory=list)
    values: dict[int, Any] = field(default_factory=dict)

    def add(self, round_: int, value: Any) -> None:
        if round_ not in self.values:
            bisect.insort(self.rounds, round_)
        self.values[round_] = value

    def at(self, round_: int) -> tuple[int, Any] | None:
        known = _at(self.rounds, round_)
        return None if known is None else (known, self.values[known])


class Timeline:
    """A simulated run's records, kept by round, and its :class:`View` at any round."""

    def __init__(self) -> None:
        self.start: RunStart | None = None
        self.end: RunEnd | None = None
        self.layout: Layout | None = None
        self.rounds: list[int] = []
        self.idle: dict[int, frozenset[int]] = {}
        self.metrics = _Series()
        self.accuracy = _Series()  # round -> (accuracy, loss) arrays
        self.values: dict[str, _Series] = {}
        self.matrices: dict[str, _Series] = {}
        self.traffic = _Series()  # round -> {drawn pair: models}, cumulative
        self.traffic_complete = True
        self.problems: list[str] = []
        self.notes: list[str] = []  # about where the records came from

    def add(self, record: RunStart | RoundRecord | RunEnd) -> None:
        if isinstance(record, RunStart):
            self.start = record
            self.layout = layout(record.peers, record.edges, record.edges_total)
        elif isinstance(record, RunEnd):
            self.end = record
        elif self.start is None:
            self.problem("a round before the run's start record: left out")
        else:
            self._add_round(record)

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def _add_round(self, record: RoundRecord) -> None:
        n, r = self.start.peers, record.round
        if (record.accuracy is not None and len(record.accuracy) != n) or (
            record.loss is not None and len(record.loss) != n
        ):
            self.problem(f"round {r}: per-peer values for another number of peers: left out")
            return
        if r not in self.idle:
            bisect.insort(self.rounds, r)
        self.idle[r] = frozenset(record.idle or ())
        if record.metrics is not None:
            self.metrics.add(r, record.metrics)
        if record.accuracy is not None:
            loss = record.loss or [None] * n
            self.accuracy.add(r, (_array(record.accuracy), _array(loss)))
        for name, values in record.values.items():
            if len(values) == n:
                self.values.setdefault(name, _Series()).add(r, _array(values))
        for name, matrix in record.matrices.items():
            if matrix.size == n:
                self.matrices.setdefault(name, _Series()).add(r, matrix)
        self._add_traffic(r, record.traffic)

    def _add_traffic(self, round_: int, traffic: list[tuple[int, int, int]] | None) -> None:
        """Add the models sent over drawn links to the cumulative count."""
        if traffic is None:
            self.traffic_complete = False
            return
        before = self.traffic.at(round_)
        place = self.layout.place
        moved = [(min(s, r), max(s, r), c) for s, r, c in traffic if s in place and r in place]
        if not moved and before is not None:
            self.traffic.add(round_, before[1])
            return
        counts = dict(before[1]) if before is not None else {}
        for u, v, c in moved:
            counts[(u, v)] = counts.get((u, v), 0) + c
        self.traffic.add(round_, counts)

    @property
    def latest(self) -> int:
        return self.rounds[-1] if self.rounds else 0

    def view(self, round_: int | None) -> View:
        """The run at round `round_` (None: the newest; clamped to the rounds known): each peer's values
        as of that round, every round's curves (the page marks the round shown)."""
        start = self.start
        if start is None:
            return _empty_view(SourceKind.SIMULATION, "waiting for the run to start", self.problems)
        r = (
            self.latest
            if round_ is None
            else min(max(round_, self.rounds[0] if self.rounds else 0), self.latest)
        )
        n = start.peers
        attackers = frozenset(start.attackers)
        idle = self.idle.get(r, frozenset())
        evaluated = self.accuracy.at(r)
        accuracy, loss = evaluated[1] if evaluated else (np.full(n, np.nan), np.full(n, np.nan))
        epsilon = self.values["epsilon"].at(r) if "epsilon" in self.values else None
        states = [
            State.ATTACKER if p in attackers else (State.WAITING if p in idle else State.TRAINING)
            for p in range(n)
        ]
        peers = PeerRows(
            id=list(range(n)),
            label=[str(p) for p in range(n)],
            state=states,
            round=[r] * n,
            accuracy=finite(accuracy),
            loss=finite(loss),
            epsilon=finite(epsilon[1]) if epsilon else [None] * n,
            samples=list(start.samples) if len(start.samples) == n else [None] * n,
            rejections=[None] * n,
            bans=[None] * n,
            note=["attacker" if p in attackers else "" for p in range(n)],
            extra={
                name: finite(known[1])
                for name, series in self.values.items()
                if name != "epsilon" and (known := series.at(r)) is not None
            },
        )
        notes = [*self.layout.notes(), *self._notes(n, r, evaluated)]
        heat = None
        for name, series in self.matrices.items():
            if (known := series.at(r)) is not None:
                heat = heat_of(name, known[0], known[1])
                if heat.blocks < n:
                    notes.append(
                        f"{name} heat-map: {heat.blocks} × {heat.blocks} cells, each the mean over a block "
                        f"of about {n / heat.blocks:.0f} × {n / heat.blocks:.0f} peers"
                    )
                break
        return View(
            kind=SourceKind.SIMULATION,
            title=start.title,
            status=self._status(r),
            live=self.end is None,
            replay=True,
            round=r,
            first=self.rounds[0] if self.rounds else 0,
            latest=self.latest,
            rounds=start.rounds,
            peers_total=n,
            notes=notes,
            problems=list(self.problems),
            peers=peers,
            curves=self._curves(),
            graph=self._graph(r),
            heat=heat,
            ledger=self._ledger(r),
            config=start.config,
        )

    def _status(self, r: int) -> str:
        end = self.end
        if end is None:
            return f"running · round {self.latest} of {self.start.rounds}"
        if end.diverged:
            return f"stopped: {end.diverged}"
        return "finished" + (f" · outputs in {end.out}" if end.out else "")

    def _notes(self, n: int, r: int, evaluated: tuple[int, Any] | None) -> list[str]:
        notes = []
        if evaluated is not None and evaluated[0] != r:
            notes.append(f"accuracy and loss: as evaluated in round {evaluated[0]} (eval_every)")
        if evaluated is None:
            notes.append("per-peer accuracy and loss: not recorded for this round")
        if not self.traffic_complete:
            notes.append("links by traffic: too many pairs to record in some rounds; those are not counted")
        return [*self.notes, *notes]

    def _curves(self) -> Curves:
        rounds = self.metrics.rounds
        rows = [self.metrics.values[r] for r in rounds]
        present = [key for key in CURVE_KEYS if any(row.get(key) is not None for row in rows)]
        if self.start is not None and not self.start.attackers and "honest_acc_mean" in present:
            present.remove("honest_acc_mean")  # equal to acc_mean without attackers
        return Curves(round=rounds, series={key: [row.get(key) for row in rows] for key in present})

    def _graph(self, r: int) -> GraphView:
        """The drawn topology at round `r`: links weighted by trust (learned trust, when its entries
        were recorded), else by the models sent over them so far, else plain."""
        trust = self.matrices.get("trust")
        known = trust.at(r) if trust is not None else None
        if known is not None and known[1].pairs is not None:
            return self.layout.view(_trust_links(known[1].pairs, self.layout.place), "trust")
        traffic = self.traffic.at(r)
        if traffic is not None and traffic[1]:
            return self.layout.view({**dict.fromkeys(self.layout.links, 0), **traffic[1]}, "traffic")
        return self.layout.view(None, "topology")

    def _ledger(self, r: int) -> list[LedgerEvent]:
        """FLoBC's releases (a rule on a simulated clock reports its release time, contributors and
        staleness per version), each with its committee's votes and the scores after it."""
        events = []
        for round_ in self.metrics.rounds:
            row = self.metrics.values[round_]
            if round_ > r or row.get("sim_time") is None:
                continue
            parts = [f"version {round_} released at t = {row['sim_time']:.2f} s (simulated)"]
            if row.get("contributors") is not None:
                parts.append(f"{row['contributors']:.0f} contributors")
            if row.get("staleness_mean") is not None:
                parts.append(f"mean staleness {row['staleness_mean']:.2f}")
            parts += self._committee(round_)
            events.append(LedgerEvent(round=round_, text=" · ".join(parts)))
        return events[-LEDGER_SHOWN:]

    def _committee(self, round_: int) -> list[str]:
        """The validator committee's votes on release `round_` and the trainers' scores after it (FLoBC's
        `accepted`, `approvals` and `score` per peer), where the run recorded them for that round."""
        at = {name: self.values[name].values.get(round_) for name in COMMITTEE if name in self.values}
        accepted, approvals, score = (at.get(name) for name in COMMITTEE)
        parts = []
        if accepted is not None and (voted := ~np.isnan(accepted)).any():
            parts.append(f"{int(np.nansum(accepted))} of {int(voted.sum())} updates accepted")
            if approvals is not None:
                votes = [f"{peer}: {approvals[peer]:.0f}" for peer in np.flatnonzero(voted)[:LISTED_VOTES]]
                more = " …" if voted.sum() > LISTED_VOTES else ""
                parts.append(f"votes for (peer: validators) {', '.join(votes)}{more}")
        if score is not None and (known := ~np.isnan(score)).any():
            best = sorted(np.flatnonzero(known), key=lambda peer: -score[peer])[:3]
            parts.append("highest scores " + ", ".join(f"peer {peer} {score[peer]:.3f}" for peer in best))
        return parts


def _trust_links(
    pairs: Iterable[tuple[int, int, float]], place: dict[int, int]
) -> dict[tuple[int, int], float]:
    """Drawn links weighted by trust: a link's weight is the mean trust of its two ends in each other
    (of those known), from (peer, partner, trust) entries."""
    trust: dict[tuple[int, int], list[float]] = {}
    for i, j, v in pairs:
        if i != j and i in place and j in place:
            trust.setdefault((min(i, j), max(i, j)), []).append(v)
    return {pair: sum(vs) / len(vs) for pair, vs in trust.items()}


def _array(values: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def _empty_view(kind: SourceKind, status: str, problems: list[str]) -> View:
    return View(
        kind=kind,
        title="",
        status=status,
        live=True,
        replay=False,
        round=0,
        latest=0,
        rounds=0,
        peers_total=0,
        problems=list(problems),
        peers=PeerRows(),
        curves=Curves(),
    )


def _label(spec: Any) -> str:
    """A component as a config writes it (a name, or a table of name and options) in spec syntax."""
    if isinstance(spec, dict):
        options = ", ".join(f"{k}={json.dumps(v)}" for k, v in spec.items() if k != "name")
        return f"{spec.get('name', '?')}({options})" if options else str(spec.get("name", "?"))
    return str(spec)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        return list(csv.DictReader(handle))


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def records_of_folder(folder: Path) -> list[RunStart | RoundRecord | RunEnd]:
    """A finished run folder written without a record file, as records: config.toml, summary.json,
    metrics.csv (a round each; per-peer accuracy and loss only for the last round, from the summary)
    and the per-round state series (`<name>.csv`: round, peer[, partner], value). RecordFileError if
    it is not a run folder."""
    try:
        summary = strict_json.loads((folder / "summary.json").read_text(), SUMMARY_DEPTH, constants=True)
        config_text = (folder / "config.toml").read_text()
        table = tomllib.loads(config_text)
        metrics = _csv_rows(folder / "metrics.csv")
    except (OSError, ValueError) as err:  # json, toml and csv errors are ValueErrors
        raise RecordFileError(f"{folder}: not a run folder ({err})") from None
    n = summary.get("peers") if isinstance(summary, dict) else None
    if not isinstance(n, int) or n < 1:
        raise RecordFileError(f"{folder}: summary.json names no number of peers")
    rounds = [int(value) for row in metrics if (value := _number(row.get("round"))) is not None]
    title = " · ".join(
        [_label(table.get(key, "")) for key in ("dataset", "partition", "rule") if key in table]
        + [f"{n} peers"]
    )
    edges = topology_edges(table, n)
    start = RunStart(
        peers=n,
        rounds=int(table.get("rounds", max(rounds, default=0))),
        title=title,
        config=config_text,
        attackers=[a for a in summary.get("attackers", []) if isinstance(a, int)],
        samples=[int(s) for s in summary.get("peer_samples", [])],
        edges=edges,
        edges_total=len(edges or []),
    )
    series = _state_series(folder, n)
    records: list[RunStart | RoundRecord | RunEnd] = [start]
    last = rounds[-1] if rounds else None
    for row, r in zip(metrics, rounds, strict=False):
        at_end = r == last
        records.append(
            RoundRecord(
                round=r,
                metrics={key: _number(value) for key, value in row.items() if key},
                accuracy=finite(summary.get("peer_accuracy", [])) if at_end else None,
                loss=finite(summary.get("peer_loss", [])) if at_end else None,
                values={name: values[r] for name, (values, _) in series.items() if r in values},
                matrices={name: matrices[r] for name, (_, matrices) in series.items() if r in matrices},
                traffic=[],
            )
        )
    diverged = summary.get("diverged")
    text = f"diverged in round {diverged.get('round')}" if isinstance(diverged, dict) else None
    records.append(RunEnd(diverged=text, out=str(folder)))
    return records


def _state_series(folder: Path, n: int) -> dict[str, tuple[dict[int, list], dict[int, Matrix]]]:
    """name -> (round -> per-peer values, round -> Matrix) from the folder's `<name>.csv` state series."""
    found: dict[str, tuple[dict[int, list], dict[int, Matrix]]] = {}
    for path in sorted(folder.glob("*.csv")):
        name = path.stem
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            header = next(csv.reader(handle), [])
        if header == ["round", "peer", name]:
            by_round: dict[int, np.ndarray] = {}
            for row in _csv_rows(path):
                r, p, v = _number(row["round"]), _number(row["peer"]), _number(row[name])
                if r is not None and p is not None and 0 <= p < n:
                    by_round.setdefault(int(r), np.full(n, np.nan))[int(p)] = math.nan if v is None else v
            found[name] = ({r: finite(values) for r, values in by_round.items()}, {})
        elif header == ["round", "peer", "partner", name]:
            entries: dict[int, list[tuple[int, int, float]]] = {}
            for row in _csv_rows(path):
                r, i, j, v = (_number(row[key]) for key in ("round", "peer", "partner", name))
                if None not in (r, i, j, v) and 0 <= i < n and 0 <= j < n:
                    entries.setdefault(int(r), []).append((int(i), int(j), v))
            matrices = {
                r: block_means(*(np.array(column) for column in zip(*items, strict=True)), n)
                for r, items in entries.items()
            }
            found[name] = ({}, matrices)
    return found


class RunSource(Source):
    """A simulated run's folder (see the module docstring); `folder` may not exist yet while its run
    writes it."""

    kind = SourceKind.SIMULATION

    def __init__(self, folder: Path, poll: float = POLL_S / 2) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.poll = poll
        self.timeline = Timeline()
        self._handle: IO[bytes] | None = None
        self._partial = b""

    def locate(self) -> Path | None:
        """The record file to follow: the folder's, else that of the run writing it (its staging
        folder, the newest); None if there is none (yet)."""
        own = self.folder / RECORD_FILE
        if own.is_file():
            return own
        staged = self.folder.parent.glob(f".{self.folder.name}.*/{RECORD_FILE}")
        newest = max(staged, key=lambda path: path.stat().st_mtime, default=None)
        return newest

    def read(self) -> bool:
        """Read what was added since the last call; whether anything changed."""
        if self._handle is None:
            path = self.locate()
            if path is None:
                if (self.folder / "metrics.csv").is_file():  # finished, written without records
                    try:
                        records = records_of_folder(self.folder)
                    except RecordFileError as err:
                        records = [RunEnd(diverged=None, out=str(self.folder))]
                        self.timeline.problem(str(err))
                    for record in records:
                        self.timeline.add(record)
                    self.timeline.notes.append(
                        f"read from the CSV files (no {RECORD_FILE}): per-peer accuracy and loss of the last "
                        "round only, no traffic per link; `ppaia run --dashboard` records every round"
                    )
                    return True
                return False
            self._handle = open(path, "rb")  # noqa: SIM115 (kept open: the file may be renamed meanwhile)
        chunk = self._handle.read()
        if not chunk:
            return False
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            self.timeline.problem(f"a line longer than {MAX_LINE} bytes: left out")
            self._partial = b""
        for line in lines:
            if not line.strip():
                continue
            try:
                self.timeline.add(read_record(line))
            except RecordFileError as err:
                self.timeline.problem(f"{RECORD_FILE}: {err}: left out")
        return True

    @property
    def ended(self) -> bool:
        return self.timeline.end is not None

    async def follow(self) -> None:
        try:
            while not self.ended:
                if self.read():
                    self.changed()
                await asyncio.sleep(self.poll)
        finally:
            if self._handle is not None:
                self._handle.close()

    def view(self, round_: int | None = None) -> View:
        if self.timeline.start is None and self._handle is None:
            return _empty_view(SourceKind.SIMULATION, f"waiting for {self.folder} to be written", [])
        return self.timeline.view(round_)


# ---------------------------------------------------------------------------------------------------
# a swarm of real peers

Address = tuple[str, int]
Clock = Callable[[], float]
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 possibly in brackets) names this machine only."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Followed:
    """One peer followed at `address`: its last status, when it last answered (`answered`, clock
    seconds; None: never), why its last request failed (`error`), the accuracy it reported by round
    and the model bytes it had fetched by the end of each round (its last report in the round)."""

    address: Address
    position: int
    status: PeerStatus | None = None
    answered: float | None = None
    error: Reason | None = None
    accuracy: dict[int, float] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)
    seen: tuple[int, float] | None = None  # (round, when it was first seen in that round)


class Liveness:
    """When a silent peer counts as dropped: the timing policy's deadline (:class:`Timing`: WAIT_ROUNDS
    times the median round time seen, between `min_wait` and `wait`; `wait` before any round was timed),
    measured from its last answer. Round times are measured from the statuses: the seconds between a
    peer first seen in round r and first seen in round r' > r, over r' − r."""

    def __init__(self, wait: float = 60.0, min_wait: float = 2.0, clock: Clock = time.monotonic) -> None:
        self.timing = Timing(-1, wait=wait, min_wait=min_wait)
        self.clock = clock

    def bound(self) -> float:
        return self.timing.deadline()

    def saw(self, peer: Followed, status: PeerStatus) -> None:
        """`peer` answered with `status` now."""
        now = self.clock()
        peer.answered, peer.status, peer.error = now, status, None
        if peer.seen is None or status.round < peer.seen[0]:  # first seen, or restarted from older rounds
            peer.seen = (status.round, now)
        elif status.round > peer.seen[0]:
            self.timing.record((now - peer.seen[1]) / (status.round - peer.seen[0]))
            peer.seen = (status.round, now)

    def dropped(self, peer: Followed, since: float) -> bool:
        """Whether `peer` (followed since clock time `since`) has been silent longer than the bound; a
        peer that reported it finished is not dropped (it only stopped lingering)."""
        if peer.status is not None and peer.status.phase == Phase.FINISHED:
            return False
        last = peer.answered if peer.answered is not None else since
        return self.clock() - last > self.bound()


def _phase_state(phase: Phase) -> State:
    return {
        Phase.STARTING: State.STARTING,
        Phase.WAITING: State.WAITING,
        Phase.TRAINING: State.TRAINING,
        Phase.MIXING: State.MIXING,
        Phase.FINISHED: State.FINISHED,
    }[phase]


@dataclass(frozen=True)
class ModelSpec:
    """What a swarm's models must be (checked before a byte of one is used): their tensors, the most
    bytes one may take, and how they flatten."""

    layout: ParamLayout
    max_bytes: int

    @property
    def expected(self) -> codec.Expected:
        return self.layout.expected()


def model_spec(config: ExperimentConfig) -> ModelSpec:
    """The spec of the models of a swarm running `config` (the user's own config, never one a peer
    sent): its model built for its dataset's inputs and classes, as every peer builds it."""
    dataset = config.dataset.load(config.seed)
    model = config.model.build(dataset.input_shape, dataset.n_classes)
    layout = ParamLayout.of(model)
    encoded = len(codec.encode(layout.unflatten(layout.flatten(model))))
    return ModelSpec(layout, encoded + 4096)  # as a peer bounds what it fetches


class _Spread:
    """Σ‖θᵢ − θ̄‖² over models added one at a time (Welford's update, float64), so that a swarm's models
    need not all be held at once."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.squares = 0.0

    def add(self, params: torch.Tensor) -> None:
        params = params.double()
        self.count += 1
        if self.mean is None:
            self.mean = params.clone()
            return
        delta = params - self.mean
        self.mean += delta / self.count
        self.squares += float(delta @ (params - self.mean))

    @property
    def distance(self) -> float:
        """(1/N)Σ‖θᵢ − θ̄‖², as the simulator's ``consensus_distance``."""
        return self.squares / self.count


@dataclass(frozen=True)
class Measured:
    """The consensus distance after a round, over the models of `peers` of the `asked` peers."""

    distance: float
    peers: int
    asked: int


class Consensus:
    """A swarm's consensus distance (1/N)Σ‖θᵢ − θ̄‖² after each round, computed as the simulator
    computes it (over the honest peers, in float64), from the very models the peers serve: once every
    live honest peer has completed round R (its status names the version that ended it), each one's
    version is fetched, signed by it and verified against the swarm's model (:func:`fetch_model`,
    :func:`model_spec`), and folded into the distance. Once per round, for at most
    :data:`MAX_DISTANCE_PEERS` peers, :data:`DISTANCE_PARALLEL` fetches at a time within
    :data:`DISTANCE_TIMEOUT_S`; a peer whose model does not come (it moved on beyond what it keeps, it
    is gone, or it sends something else) is left out, and the count says so. `why_not` says why it is
    not computed at all: the config is needed to know what a model must be."""

    def __init__(self, config: ExperimentConfig | None, identity: Identity) -> None:
        self.config = config
        self.identity = identity
        self.spec: ModelSpec | None = None
        self.measured: dict[int, Measured] = {}
        self.tried = 0  # the last round measured, or being measured
        self.why_not: str | None = None  # why it is not computed at all
        self.missed: str | None = None  # why the last round tried was not measured
        self.task: asyncio.Task[None] | None = None
        if config is None:
            self.why_not = (
                "not computed: the swarm's config is not known, so its models cannot be checked "
                "(ppaia dashboard --peers ... --config FILE)"
            )

    def due(self, peers: Sequence[Followed]) -> tuple[int, int] | None:
        """The (round, step) of the version that ended the newest round every one of `peers` (live,
        honest, with a status) has completed, if it was not measured yet."""
        if self.why_not is not None or (self.task is not None and not self.task.done()) or not peers:
            return None
        done = [peer.status.completed for peer in peers]
        if any(version is None for version in done):
            return None
        last = min(done, key=lambda version: version.round)
        return (last.round, last.step) if last.round > self.tried else None

    def start(self, peers: Sequence[Followed], changed: Callable[[], None]) -> None:
        """Measure the round that is due for `peers`, if any, in the background; `changed` when done."""
        if len(peers) > MAX_DISTANCE_PEERS and self.why_not is None:
            self.why_not = f"not computed: more than {MAX_DISTANCE_PEERS} peers (it fetches every model)"
        version = self.due(peers)
        if version is None:
            return
        self.tried = version[0]
        self.task = asyncio.create_task(self.measure(version, list(peers)))
        self.task.add_done_callback(lambda _: changed())

    async def measure(self, version: tuple[int, int], peers: list[Followed]) -> None:
        """Fetch version `version` from each of `peers` and record the distance between them."""
        if self.spec is None:
            try:
                self.spec = await asyncio.to_thread(model_spec, self.config)
            except (ValueError, OSError, RuntimeError) as err:
                self.why_not = f"not computed: the config's model cannot be built here: {err}"[:300]
                return
        spread, gate, refusals = _Spread(), asyncio.Semaphore(DISTANCE_PARALLEL), Counter[str]()

        async def fold(peer: Followed) -> None:
            async with gate:
                try:
                    fetched = await fetch_model(
                        *peer.address,
                        identity=self.identity,
                        round=version[0],
                        step=version[1],
                        expected=self.spec.expected,
                        max_bytes=self.spec.max_bytes,
                        timeout=MODEL_TIMEOUT_S,
                        expect_sender=peer.status.peer_id,
                    )
                except NotReady:
                    refusals["not_ready"] += 1  # it moved on beyond the versions it keeps
                    return
                except ProtocolError as err:
                    refusals[err.reason] += 1
                    return
                spread.add(self.spec.layout.join(fetched.tensors))

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DISTANCE_TIMEOUT_S):
                await asyncio.gather(*(fold(peer) for peer in peers))
        if spread.count >= min(2, len(peers)):
            self.measured[version[0]] = Measured(spread.distance, spread.count, len(peers))
            self.missed = None
        else:
            why = ", ".join(f"{reason} ×{n}" for reason, n in sorted(refusals.items())) or "too slow"
            self.missed = (
                f"round {version[0]}: not computed: {spread.count} of {len(peers)} models came ({why})"
            )

    def notes(self) -> list[str]:
        formula = "consensus distance (1/N)Σ‖θᵢ−θ̄‖²"
        if self.why_not is not None:
            return [f"{formula}: {self.why_not}"]
        text = (
            f"{formula}: over the honest peers' models after a round, fetched from them and verified by "
            f"this dashboard (up to {MAX_DISTANCE_PEERS} peers; the rounds that end while one is measured "
            "are skipped)"
        )
        if self.missed is not None:
            text += f"; {self.missed}"
        elif self.measured:
            last = self.measured[max(self.measured)]
            if last.peers < last.asked:
                text += f"; round {max(self.measured)}: over {last.peers} of {last.asked} peers (the others' "
                text += "models did not come)"
        return [text]

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


class SwarmSource(Source):
    """Real peers at `addresses`, followed through their statuses (see the module docstring).
    `config`: the swarm's config when known (``ppaia launch``): its topology is drawn and its attackers
    marked; otherwise the topology is the one the peers' shared config describes, if it can be rebuilt."""

    kind = SourceKind.SWARM

    def __init__(
        self,
        addresses: Iterable[Address],
        config: ExperimentConfig | None = None,
        wait: float = 60.0,
        clock: Clock = time.monotonic,
        poll: float = POLL_S,
        discover: str | None = None,
    ) -> None:
        super().__init__()
        self.peers = [Followed(address, k) for k, address in enumerate(addresses)]
        self.config = config
        self.attackers = frozenset(attackers_of(config) if config is not None else ())
        self.liveness = Liveness(wait=wait, clock=clock)
        self.clock = clock
        self.poll = poll
        self.since = clock()
        self.identity = Identity.generate()  # signs the status requests
        self.layout: Layout | None = None
        self.shared: dict[str, Any] | None = None
        self.discover = discover  # the swarm's name (its DHT topics), to find the other peers
        self.problems: list[str] = []
        self.consensus = Consensus(config, self.identity)
        if config is not None:
            self._draw(config.to_table(), config.peers)

    def _draw(self, table: dict[str, Any], n: Any) -> None:
        """Lay out the topology of the config `table` for `n` peers (once)."""
        if isinstance(n, int) and not isinstance(n, bool):
            edges = topology_edges(table, n)
            if edges is not None:
                self.layout = layout(n, edges)

    async def ask(self, peer: Followed) -> None:
        """Ask `peer` for its status once; record the answer or the refusal."""
        try:
            status = await fetch_status(*peer.address, identity=self.identity, timeout=STATUS_TIMEOUT_S)
        except ProtocolError as err:
            peer.error = err.reason
            return
        self.liveness.saw(peer, status)
        shown = status.latest.round if status.latest is not None else status.round
        if status.accuracy is not None and (len(peer.accuracy) < MAX_HISTORY or shown in peer.accuracy):
            peer.accuracy[shown] = status.accuracy
        if len(peer.received) < MAX_HISTORY or status.round in peer.received:
            peer.received[status.round] = status.traffic.received
        if self.shared is None:
            self.shared = status.agreement.shared
            if self.layout is None:
                self._draw(self.shared, self.shared.get("peers"))

    async def follow(self) -> None:
        finding = None if self.discover is None else asyncio.create_task(self._find_others(self.discover))
        try:
            while True:
                await asyncio.gather(*(self.ask(peer) for peer in self.peers))
                self.consensus.start(self._measurable(), self.changed)
                self.changed()
                await asyncio.sleep(self.poll)
        finally:
            self.consensus.stop()
            if finding is not None:
                finding.cancel()

    def _measurable(self) -> list[Followed]:
        """The peers whose models the consensus distance is over: live, honest (as far as the config
        says), with a status."""
        return [
            peer
            for peer in self.peers
            if peer.status is not None
            and not self.liveness.dropped(peer, self.since)
            and (peer.status.index if peer.status.index is not None else peer.position) not in self.attackers
        ]

    async def _find_others(self, swarm: str) -> None:
        """Join the DHT through the followed peers (a peer's DHT port is its model port) and follow
        each index of the swarm it names a peer for, as the peers' own address book finds them."""
        seeds = [peer.address for peer in self.peers]
        host = "127.0.0.1" if all(is_loopback(host) for host, _ in seeds) else "0.0.0.0"
        dht = PeerDHT(self.identity, ttl=60.0, rpc_timeout=2.0)
        try:
            await dht.start(host, 0)
        except NetworkError as err:
            self.problems.append(f"cannot join the peers' DHT to find the others: {err}")
            return
        try:
            book = AddressBook(dht, swarm, -1, {})
            while True:
                await dht.bootstrap(seeds)
                n = self.shared.get("peers") if self.shared is not None else None
                if isinstance(n, int) and not isinstance(n, bool):
                    await self._add_found(book, min(n, MAX_FOLLOWED))
                await asyncio.sleep(DISCOVER_EVERY_S)
        finally:
            await dht.stop()

    async def _add_found(self, book: AddressBook, n: int) -> None:
        """Follow the peers the DHT names for the indices 0 … n−1 not followed yet."""
        known = {peer.status.index for peer in self.peers if peer.status is not None}
        missing = [i for i in range(n) if i not in known]
        found = await asyncio.gather(*(book.address(i, timeout=2.0) for i in missing))
        followed = {peer.address for peer in self.peers}
        for address in found:
            if address is not None and address not in followed and len(self.peers) < MAX_FOLLOWED:
                self.peers.append(Followed(address, len(self.peers)))
                followed.add(address)

    def _states(self) -> list[State]:
        banned = {key for peer in self.peers if peer.status for key in peer.status.banned}
        live = [
            peer.status.round
            for peer in self.peers
            if peer.status and not self.liveness.dropped(peer, self.since)
        ]
        front = max(live, default=0)
        states = []
        for peer in self.peers:
            status = peer.status
            index = status.index if status is not None else peer.position
            if self.liveness.dropped(peer, self.since):
                state = State.DROPPED
            elif status is None:
                state = State.UNKNOWN
            elif status.peer_id in banned:
                state = State.BANNED
            elif index in self.attackers:
                state = State.ATTACKER
            elif status.phase != Phase.FINISHED and status.round < front - 1:
                state = State.BEHIND
            else:
                state = _phase_state(status.phase)
            states.append(state)
        return states

    def _note(self, peer: Followed) -> str:
        """What else the peer reports, as text (peer-reported strings included as they came)."""
        status, parts = peer.status, [f"{peer.address[0]}:{peer.address[1]}"]
        if peer.answered is not None:
            parts.append(f"answered {self.clock() - peer.answered:.1f} s ago")
        if peer.error is not None:
            parts.append(f"last request: {peer.error}")
        if status is not None:
            if status.rejections:
                parts.append(
                    "rejects " + ", ".join(f"{k} ×{v}" for k, v in sorted(status.rejections.items()))
                )
            if status.banned:
                parts.append("bans " + ", ".join(status.banned))
            if status.refused:
                parts.append("refuses peers " + ", ".join(map(str, status.refused)) + " (another config)")
            if status.missing or status.stale:
                parts.append(f"left out {status.missing}, stale {status.stale}")
        return " · ".join(parts)

    def view(self, round_: int | None = None) -> View:
        peers, statuses = self.peers, [peer.status for peer in self.peers]
        ids = [
            s.index if s is not None and s.index is not None else p.position
            for p, s in zip(peers, statuses, strict=True)
        ]
        rows = PeerRows(
            id=ids,
            label=[
                f"{i}" + (f" · {s.peer_id[:10]}" if s is not None else "")
                for i, s in zip(ids, statuses, strict=True)
            ],
            state=self._states(),
            round=[s.round if s else None for s in statuses],
            accuracy=[s.accuracy if s else None for s in statuses],
            loss=[s.loss if s else None for s in statuses],
            epsilon=[s.epsilon if s else None for s in statuses],
            samples=[None] * len(peers),
            rejections=[sum(s.rejections.values()) if s else None for s in statuses],
            bans=[s.banned_total if s else None for s in statuses],
            note=[self._note(peer) for peer in peers],
            extra={  # in MB: the page shows a value with 4 decimals
                "MB received": [s.traffic.received / 1e6 if s else None for s in statuses],
                "MB sent": [s.traffic.sent / 1e6 if s else None for s in statuses],
            },
        )
        rounds_known = [s.round for s in statuses if s is not None]
        latest = max(rounds_known, default=0)
        total = next((s.rounds for s in statuses if s is not None), 0)
        answering = sum(1 for state in rows.state if state not in (State.DROPPED, State.UNKNOWN))
        bound = self.liveness.bound()
        notes = [
            f"a peer is dropped after {bound:.1f} s without an answer: the timing policy's deadline "
            "(4 × the median round time seen, at least 2 s, at most --wait)",
            "curves: the accuracy each peer reported for its newest model; bytes: the model bytes the peers "
            "fetched from each other, as each reports them (verified model bodies; the dashboard's own "
            "downloads are not in it)",
            *self.consensus.notes(),
        ]
        index_of = self._indices()
        trust, unplaced = self._trust(index_of)
        heat = None
        if trust:
            n = self._size()
            peer, partner, weight = (np.array(column) for column in zip(*trust, strict=True))
            learned = max((s.completed.round for s in statuses if s and s.completed), default=latest)
            heat = heat_of("trust", learned, block_means(peer, partner, weight, n))
            notes.append(
                f"trust heat-map and links: each peer's trust in its partners as it reports it (its "
                f"{MAX_LISTED} most trusted), as of its last completed round"
                + (f"; {unplaced} entries name partners not followed here: left out" if unplaced else "")
            )
        graph = None
        if self.layout is not None:
            notes += self.layout.notes()
            graph = self._graph(trust, index_of)
        config = None
        if self.config is not None:
            config = self.config.to_toml()
        elif self.shared is not None:
            config = json.dumps(self.shared, indent=2, sort_keys=True)
        return View(
            kind=SourceKind.SWARM,
            title=f"swarm of {len(peers)} peers" + (f" · {self.config.rule.label()}" if self.config else ""),
            status=f"following {len(peers)} peers · {answering} answering · round {latest} of {total}",
            live=True,
            replay=False,
            round=latest,
            latest=latest,
            rounds=total,
            peers_total=len(peers),
            notes=notes,
            problems=list(self.problems),
            peers=rows,
            curves=self._curves(),
            graph=graph,
            heat=heat,
            config=config,
            drop_after=bound,
        )

    def _size(self) -> int:
        """The number of swarm indices: the config's, else the peers' shared config's, else the followed."""
        n = self.config.peers if self.config is not None else (self.shared or {}).get("peers")
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else max(len(self.peers), 1)

    def _indices(self) -> dict[str, int]:
        """The swarm index of each peer id followed (the index its status names, within the swarm)."""
        n = self._size()
        found = {}
        for peer in self.peers:
            status = peer.status
            if status is not None:
                index = status.index if status.index is not None else peer.position
                if index < n:
                    found.setdefault(status.peer_id, index)
        return found

    def _trust(self, index_of: dict[str, int]) -> tuple[list[tuple[int, int, float]], int]:
        """The trust entries (peer, partner, trust) the peers report, and how many name a partner whose
        index is not known here."""
        entries, unplaced = [], 0
        for status in (peer.status for peer in self.peers):
            if status is None or (i := index_of.get(status.peer_id)) is None:
                continue
            for partner, weight in status.trust.items():
                j = index_of.get(partner)
                if j is None or j == i:
                    unplaced += 1
                else:
                    entries.append((i, j, weight))
        return entries, unplaced

    def _graph(self, trust: list[tuple[int, int, float]], index_of: dict[str, int]) -> GraphView:
        """The topology with its links weighted by trust (as a simulation draws learned trust), else by
        the model bytes fetched over them (both ways), else plain."""
        place = self.layout.place
        if trust:
            return self.layout.view(_trust_links(trust, place), "trust")
        traffic: dict[tuple[int, int], float] = {}
        for status in (peer.status for peer in self.peers):
            if status is None or (i := index_of.get(status.peer_id)) is None:
                continue
            for sender, received in status.traffic.received_from.items():
                j = index_of.get(sender)
                if j is not None and j != i and i in place and j in place:
                    pair = (min(i, j), max(i, j))
                    traffic[pair] = traffic.get(pair, 0) + received
        if traffic:
            return self.layout.view({**dict.fromkeys(self.layout.links, 0), **traffic}, "traffic")
        return self.layout.view(None, "topology")

    def _curves(self) -> Curves:
        """Accuracy (mean, min, max over the peers' reports for each round), the model bytes fetched by
        the end of each round (summed over the peers, each as of its last report at or before it), and
        the consensus distance of the rounds measured."""
        by_round: dict[int, list[float]] = {}
        for peer in self.peers:
            for r, accuracy in peer.accuracy.items():
                by_round.setdefault(r, []).append(accuracy)
        reports = [_Series(sorted(peer.received), peer.received) for peer in self.peers if peer.received]
        measured = self.consensus.measured
        rounds = sorted({*by_round, *measured, *(r for series in reports for r in series.rounds)})
        series: dict[str, list[float | None]] = {
            "acc_mean": [float(np.mean(by_round[r])) if r in by_round else None for r in rounds],
            "acc_min": [min(by_round[r]) if r in by_round else None for r in rounds],
            "acc_max": [max(by_round[r]) if r in by_round else None for r in rounds],
        }
        if reports:
            series["bytes_cumulative"] = [
                float(sum(known[1] for s in reports if (known := s.at(r)) is not None)) for r in rounds
            ]
        if measured:
            series["consensus_distance"] = [measured[r].distance if r in measured else None for r in rounds]
        return Curves(round=rounds, series=series)
