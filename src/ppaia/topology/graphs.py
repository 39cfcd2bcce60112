"""Communication graphs between peers (built with networkx) and their tensor form for the simulator."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import torch
from pydantic import Field

from ppaia.paths import UserPath
from ppaia.registry import Component, Registry

__all__ = ["TOPOLOGIES", "PeerGraph", "Topology", "TopologyError", "build_graph"]


class TopologyError(ValueError):
    """A graph that cannot be built or is unusable (e.g. disconnected when that is not allowed)."""


class Topology(Component):
    """Builds an undirected graph on peers 0..n-1."""

    def graph(self, n: int, seed: int) -> nx.Graph:
        raise NotImplementedError


TOPOLOGIES: Registry[Topology] = Registry("topology")


@TOPOLOGIES.register("complete")
class Complete(Topology):
    """Every peer is linked to every other peer."""

    def graph(self, n: int, seed: int) -> nx.Graph:
        return nx.complete_graph(n)


@TOPOLOGIES.register("ring")
class Ring(Topology):
    """Each peer is linked to its two neighbours on a cycle."""

    def graph(self, n: int, seed: int) -> nx.Graph:
        return nx.cycle_graph(n)


@TOPOLOGIES.register("star")
class Star(Topology):
    """Peer 0 is linked to every other peer; no other links."""

    def graph(self, n: int, seed: int) -> nx.Graph:
        return nx.star_graph(n - 1)


def _near_square(n: int) -> tuple[int, int]:
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


@TOPOLOGIES.register("grid")
class Grid(Topology):
    """A rows × cols lattice (nearly square when not given); `periodic` wraps it into a torus."""

    rows: int | None = Field(default=None, ge=1)
    cols: int | None = Field(default=None, ge=1)
    periodic: bool = False

    def graph(self, n: int, seed: int) -> nx.Graph:
        rows, cols = self.rows, self.cols
        if rows is None and cols is None:
            rows, cols = _near_square(n)
        elif rows is None or cols is None:
            given = rows or cols
            if n % given:
                raise TopologyError(f"{self.name}: {n} peers do not fill rows of {given}")
            rows, cols = (given, n // given) if rows else (n // given, given)
        if rows * cols != n:
            raise TopologyError(f"{self.name}: rows × cols = {rows * cols} but there are {n} peers")
        # wrapping a side shorter than 3 would only duplicate an edge or add a self-loop
        grid = nx.grid_2d_graph(
            rows, cols, periodic=(self.periodic and rows >= 3, self.periodic and cols >= 3)
        )
        return nx.convert_node_labels_to_integers(grid, ordering="sorted")


@TOPOLOGIES.register("torus")
class Torus(Grid):
    """A rows × cols lattice wrapped at both edges (nearly square when not given)."""

    periodic: bool = True


@TOPOLOGIES.register("erdos_renyi")
class ErdosRenyi(Topology):
    """Each pair of peers is linked independently with probability p."""

    p: float = Field(default=0.3, gt=0, le=1)

    def graph(self, n: int, seed: int) -> nx.Graph:
        return nx.gnp_random_graph(n, self.p, seed=seed)


@TOPOLOGIES.register("random_regular")
class RandomRegular(Topology):
    """A random graph where every peer has exactly k neighbours (n·k must be even)."""

    k: int = Field(default=4, ge=1)

    def graph(self, n: int, seed: int) -> nx.Graph:
        if self.k >= n or (n * self.k) % 2:
            raise TopologyError(f"random_regular: needs k < peers and peers·k even (k={self.k}, peers={n})")
        return nx.random_regular_graph(self.k, n, seed=seed)


@TOPOLOGIES.register("small_world")
class SmallWorld(Topology):
    """Watts–Strogatz: a ring where each peer links to k nearest peers, each link rewired with prob. p."""

    k: int = Field(default=4, ge=2)
    p: float = Field(default=0.1, ge=0, le=1)

    def graph(self, n: int, seed: int) -> nx.Graph:
        if self.k >= n:
            raise TopologyError(f"small_world: k={self.k} must be smaller than the number of peers {n}")
        return nx.watts_strogatz_graph(n, self.k, self.p, seed=seed)


@TOPOLOGIES.register("geometric")
class Geometric(Topology):
    """Peers at random points of the unit square, linked when closer than `radius`."""

    radius: float = Field(default=0.3, gt=0)

    def graph(self, n: int, seed: int) -> nx.Graph:
        return nx.random_geometric_graph(n, self.radius, seed=seed)


@TOPOLOGIES.register("edgelist")
class EdgeList(Topology):
    """Links read from a text file: one `u v` pair of peer ids (0-based) per line, `#` comments."""

    path: UserPath

    def graph(self, n: int, seed: int) -> nx.Graph:
        path = Path(self.path)
        if not path.is_file():
            raise TopologyError(f"edgelist: {path} does not exist (expected lines of 'u v' peer ids)")
        graph = nx.empty_graph(n)
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            try:
                u, v = (int(f) for f in fields[:2])
                if len(fields) != 2:
                    raise ValueError
            except ValueError:
                raise TopologyError(f"{path}:{number}: expected two integer peer ids, got {line!r}") from None
            if not (0 <= u < n and 0 <= v < n) or u == v:
                raise TopologyError(f"{path}:{number}: link {u}-{v} is not between two peers in 0..{n - 1}")
            graph.add_edge(u, v)
        return graph


@dataclass(frozen=True)
class PeerGraph:
    """An undirected graph as tensors: each link once in `edges` ([2, E], u < v)."""

    n: int
    edges: torch.Tensor

    @classmethod
    def from_networkx(cls, graph: nx.Graph) -> PeerGraph:
        pairs = sorted((min(u, v), max(u, v)) for u, v in graph.edges() if u != v)
        edges = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).T.contiguous()
        return cls(graph.number_of_nodes(), edges)

    def directed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(receivers, senders) listing every link in both directions."""
        u, v = self.edges
        return torch.cat([u, v]), torch.cat([v, u])

    def degree(self) -> torch.Tensor:
        return torch.bincount(self.edges.flatten(), minlength=self.n)

    def neighbours(self, peer: int) -> torch.Tensor:
        receivers, senders = self.directed()
        return senders[receivers == peer].sort().values

    def live(self, link_up: float, generator: torch.Generator) -> PeerGraph:
        """The links that are up this round: each independently with probability `link_up`."""
        if link_up >= 1.0:
            return self
        up = torch.rand(self.edges.shape[1], generator=generator) < link_up
        return PeerGraph(self.n, self.edges[:, up])

    def to_networkx(self) -> nx.Graph:
        graph = nx.empty_graph(self.n)
        graph.add_edges_from(self.edges.T.tolist())
        return graph

    def diameter(self) -> int:
        return nx.diameter(self.to_networkx()) if self.n > 1 else 0


def build_graph(topology: Topology, n: int, seed: int, allow_disconnected: bool = False) -> PeerGraph:
    """Build the topology for `n` peers; a disconnected graph is an error unless allowed."""
    graph = topology.graph(n, seed)
    if graph.number_of_nodes() != n:
        raise TopologyError(f"{topology.name}: built {graph.number_of_nodes()} peers, expected {n}")
    if n > 1 and not allow_disconnected and not nx.is_connected(graph):
        raise TopologyError(
            f"{topology.label()} on {n} peers is {disconnection(graph)}; "
            "change its options or set allow_disconnected = true"
        )
    return PeerGraph.from_networkx(graph)


def peer_list(peers: list[int], limit: int = 12) -> str:
    """Sorted peer ids as runs (``0–7, 9, 12–15``), cut after `limit` runs with how many peers are left."""
    runs: list[list[int]] = []
    for peer in sorted(peers):
        if runs and peer == runs[-1][1] + 1:
            runs[-1][1] = peer
        else:
            runs.append([peer, peer])
    shown = [f"{a}" if a == b else f"{a}, {b}" if b == a + 1 else f"{a}–{b}" for a, b in runs[:limit]]
    left = sum(b - a + 1 for a, b in runs[limit:])
    return ", ".join(shown) + (f", … and {left} more" if left else "")


def disconnection(graph: nx.Graph, limit: int = 6) -> str:
    """What splits `graph`, naming the culprits: ``disconnected (3 components: 0–7 | 8 | 9): peers 8, 9
    have no links``. Components largest first, at most `limit` of them spelt out."""
    parts = sorted((sorted(part) for part in nx.connected_components(graph)), key=lambda p: (-len(p), p[0]))
    shown = " | ".join(peer_list(part, 8) for part in parts[:limit])
    more = f" | … and {len(parts) - limit} more" if len(parts) > limit else ""
    isolated = [peer for peer, degree in graph.degree() if degree == 0]
    alone = ""
    if isolated:
        alone = (
            f": peer {isolated[0]} has no links"
            if len(isolated) == 1
            else f": peers {peer_list(isolated)} have no links"
        )
    return f"disconnected ({len(parts)} components: {shown}{more}){alone}"
