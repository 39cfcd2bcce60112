"""What the page receives: one :class:`View` of a run at one round, whatever the source.

A view is plain data (JSON, validated on the way out like any message): the page draws it and never
interprets a string in it as anything but text. It is bounded at any scale, so that a page stays
responsive with 10,000 peers: the topology is drawn for at most :data:`MAX_NODES` peers (a connected
sample around peer 0, laid out here once) and :data:`MAX_DRAWN_EDGES` links, a peer × partner matrix as
at most 200 × 200 block means (:mod:`ppaia.simulation.live`), and the table is paginated in the page.
Each such cut is named in the view's `notes`, which the page shows.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
from pydantic import BaseModel, ConfigDict

from ppaia.paths import path_options
from ppaia.rules import RULES
from ppaia.seeding import Stream, derive_seed
from ppaia.simulation.live import MAX_EDGES, Matrix, Value
from ppaia.topology import TOPOLOGIES, build_graph

__all__ = [
    "MAX_DRAWN_EDGES",
    "MAX_NODES",
    "Curves",
    "GraphView",
    "Heat",
    "Layout",
    "LedgerEvent",
    "PeerRows",
    "SourceKind",
    "State",
    "View",
    "heat_of",
    "layout",
    "topology_edges",
]

MAX_NODES = 300  # peers drawn in the topology at most
MAX_DRAWN_EDGES = 1_500  # links drawn at most (the heaviest)
MAX_REBUILT_PEERS = 1_000  # a topology is rebuilt from a config (not recorded) up to this many peers
UNKNOWN = 255  # a heat-map cell with no value


class SourceKind(enum.StrEnum):
    SIMULATION = "simulation"  # a simulated run, being written or finished
    SWARM = "swarm"  # real peers, followed through their signed status


class State(enum.StrEnum):
    """What a peer is doing, as the page colours it."""

    STARTING = "starting"
    WAITING = "waiting"  # waiting for the others, or not training this round
    TRAINING = "training"
    MIXING = "mixing"
    BEHIND = "behind"  # more than a round behind the others
    DROPPED = "dropped"  # stopped answering for longer than the timing policy's bound
    BANNED = "banned"  # banned by a peer that is followed
    ATTACKER = "attacker"
    FINISHED = "finished"
    UNKNOWN = "unknown"  # never answered yet


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null")


class PeerRows(_View):
    """The per-peer table as columns (one entry per peer, in the same order). `note` is free text,
    some of it reported by the peer itself (the page shows it as text)."""

    id: list[int] = []
    label: list[str] = []
    state: list[State] = []
    round: list[int | None] = []
    accuracy: list[Value] = []
    loss: list[Value] = []
    epsilon: list[Value] = []
    samples: list[int | None] = []
    rejections: list[int | None] = []
    bans: list[int | None] = []
    note: list[str] = []
    extra: dict[str, list[Value]] = {}  # more per-peer values a rule reports (FLoBC's score)


class Curves(_View):
    """Values per round: `series` by metric name (acc_mean, acc_min, acc_max, consensus_distance,
    bytes_cumulative, epsilon_max, ...)."""

    round: list[int] = []
    series: dict[str, list[Value]] = {}


class GraphView(_View):
    """The drawn part of the topology: peers `nodes` at (`x`, `y`), links `edges` with `weights`
    (traffic in models, or trust; None: plain links). `key` changes when the nodes or their places do."""

    key: str
    nodes: list[int]
    x: list[float]
    y: list[float]
    edges: list[tuple[int, int]]
    weights: list[float] | None = None
    edge_kind: str = "topology"  # topology, traffic (models sent over the link) or trust
    total_nodes: int
    total_edges: int | None = None


class Heat(_View):
    """A peer × partner matrix (`name`, e.g. trust) at round `round`: `blocks` × `blocks` cells over
    `size` peers, each a byte of `data` (base64): 0…254 spans `low`…`high`, 255 is no value."""

    name: str
    round: int
    size: int
    blocks: int
    low: float
    high: float
    data: str


class LedgerEvent(_View):
    round: int
    text: str


class View(_View):
    """Everything the page shows, at round `round` (of `first`…`latest` known; `rounds` configured)."""

    kind: SourceKind
    title: str
    status: str
    live: bool  # still changing
    replay: bool  # earlier rounds can be shown (a simulation keeps every round)
    round: int
    first: int = 0
    latest: int
    rounds: int
    peers_total: int
    notes: list[str] = []
    problems: list[str] = []
    peers: PeerRows
    curves: Curves
    graph: GraphView | None = None
    heat: Heat | None = None
    ledger: list[LedgerEvent] = []
    config: str | None = None
    drop_after: float | None = None  # a swarm: seconds without an answer after which a peer is dropped


def heat_of(name: str, round_: int, matrix: Matrix) -> Heat:
    """A matrix's block means as bytes (see :class:`Heat`)."""
    values = np.array([math.nan if v is None else v for v in matrix.values], dtype=float)
    known = np.isfinite(values)
    low = min(0.0, float(values[known].min())) if known.any() else 0.0
    high = float(values[known].max()) if known.any() else 1.0
    span = high - low or 1.0
    cells = np.full(values.shape, UNKNOWN, dtype=np.uint8)
    cells[known] = np.round((values[known] - low) / span * (UNKNOWN - 1)).astype(np.uint8)
    data = base64.b64encode(cells.tobytes()).decode()
    return Heat(
        name=name, round=round_, size=matrix.size, blocks=matrix.blocks, low=low, high=high, data=data
    )


@dataclass
class Layout:
    """Where the drawn peers go: `nodes` (a sample of at most MAX_NODES of `total` peers) at `x`, `y`,
    and the topology's links between them."""

    nodes: list[int]
    x: list[float]
    y: list[float]
    links: list[tuple[int, int]]
    total: int
    total_edges: int | None
    key: str = ""
    place: dict[int, int] = field(default_factory=dict)  # peer -> position in `nodes`

    def __post_init__(self) -> None:
        self.place = {peer: k for k, peer in enumerate(self.nodes)}
        digest = hashlib.sha256(repr((self.nodes, self.x, self.y)).encode()).hexdigest()
        self.key = digest[:16]

    def notes(self) -> list[str]:
        if len(self.nodes) >= self.total:
            return []
        how = "a connected sample around peer 0" if self.links else f"peers 0–{len(self.nodes) - 1}"
        return [f"topology: {len(self.nodes):,} of {self.total:,} peers drawn ({how}), without labels"]

    def view(self, edges: Mapping[tuple[int, int], float] | None, kind: str) -> GraphView:
        """This layout with `edges` (drawn pair -> weight; None: the topology's links, unweighted),
        at most MAX_DRAWN_EDGES of them (the heaviest)."""
        if edges is None:
            pairs, weights = self.links[:MAX_DRAWN_EDGES], None
        else:
            heaviest = sorted(edges.items(), key=lambda item: -item[1])[:MAX_DRAWN_EDGES]
            pairs, weights = [pair for pair, _ in heaviest], [float(w) for _, w in heaviest]
        return GraphView(
            key=self.key,
            nodes=self.nodes,
            x=self.x,
            y=self.y,
            edges=pairs,
            weights=weights,
            edge_kind=kind,
            total_nodes=self.total,
            total_edges=self.total_edges,
        )


def layout(n: int, edges: Sequence[Sequence[int]] | None, total_edges: int | None = None) -> Layout:
    """Lay out the peers of a topology (`edges`: its links; None: unknown or too many to list): up to
    MAX_NODES peers, breadth first from peer 0 (then the lowest ids), spring layout with a fixed seed
    (a circle without links)."""
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from((int(u), int(v)) for u, v in edges or [])
    if n > MAX_NODES:
        chosen = list(nx.bfs_tree(graph, 0))[:MAX_NODES] if edges else []
        chosen += [peer for peer in range(n) if peer not in set(chosen)][: MAX_NODES - len(chosen)]
        graph = graph.subgraph(sorted(chosen))
    nodes = sorted(graph.nodes)
    if graph.number_of_edges():
        where = nx.spring_layout(graph, seed=0, iterations=60)
    else:
        where = nx.circular_layout(graph)
    links = sorted((min(u, v), max(u, v)) for u, v in graph.edges if u != v)
    total_edges = total_edges if total_edges is not None else (len(edges) if edges is not None else None)
    return Layout(
        nodes,
        [round(float(where[p][0]), 4) for p in nodes],
        [round(float(where[p][1]), 4) for p in nodes],
        links,
        n,
        total_edges,
    )


def topology_edges(table: Mapping[str, Any], n: int) -> list[tuple[int, int]] | None:
    """The links of the topology a config `table` describes (its ``topology``, ``seed``, ``rule``,
    ``allow_disconnected``), built as the simulator builds it; None when it cannot be told without
    running code or reading files the table names: a rule or topology that is not registered here (a
    plugin's: plugins are not imported), a topology read from a file, more than MAX_REBUILT_PEERS
    peers, or anything invalid. An empty list: a rule that uses no topology."""
    try:
        rule = table.get("rule", "")
        rule_name = rule.get("name") if isinstance(rule, Mapping) else str(rule).split("(")[0].strip()
        if rule_name in RULES and not RULES.get(rule_name).uses_topology:
            return []
        spec = table.get("topology", "ring")
        name = spec.get("name") if isinstance(spec, Mapping) else str(spec).split("(")[0].strip()
        if not 0 < n <= MAX_REBUILT_PEERS or name not in TOPOLOGIES or path_options(TOPOLOGIES.get(name)):
            return None
        seed = table.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            return None
        topology = TOPOLOGIES.create(spec)
        graph = build_graph(topology, n, derive_seed(seed, Stream.TOPOLOGY), allow_disconnected=True)
    except (ValueError, TypeError, nx.NetworkXException):  # a bad spec, seed, or graph: links not drawn
        return None
    edges = graph.edges.T.tolist()
    return [(u, v) for u, v in edges] if len(edges) <= MAX_EDGES else None
