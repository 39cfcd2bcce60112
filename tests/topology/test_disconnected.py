"""A disconnected topology's error names the culprits (issue 16, item 11): its components and the peers
without links, cut short for large graphs."""

from __future__ import annotations

import random
import re

import networkx as nx
import pytest
from typer.testing import CliRunner

from ppaia.cli.main import app
from ppaia.topology import TOPOLOGIES, TopologyError, build_graph
from ppaia.topology.graphs import disconnection, peer_list

runner = CliRunner()


def test_the_cli_names_the_peers_an_edge_list_leaves_out(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lab.edges").write_text("".join(f"{i} {(i + 1) % 8}\n" for i in range(8)))  # ring 0..7
    result = runner.invoke(
        app, ["run", "--set", "peers=10", "--set", "topology=edgelist(path='lab.edges')", "--out", "run"]
    )
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "disconnected (3 components: 0–7 | 8 | 9): peers 8, 9 have no links" in message
    assert "allow_disconnected" in message and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("peers", "text"),
    [
        ([5], "5"),
        ([3, 4], "3, 4"),
        ([0, 1, 2, 3, 5, 7, 8, 10], "0–3, 5, 7, 8, 10"),
        ([9, 1, 2], "1, 2, 9"),
        (list(range(0, 40, 2)), "0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, … and 8 more"),
    ],
)
def test_peer_lists_are_runs_cut_short(peers, text) -> None:
    assert peer_list(peers) == text


def _random_split(seed: int) -> nx.Graph:
    """A seeded graph of 2–60 peers cut into 2–6 random groups, each a random tree, some peers alone."""
    rng = random.Random(seed)
    n = rng.randint(2, 60)
    peers = list(range(n))
    rng.shuffle(peers)
    cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(1, 5))))
    graph = nx.empty_graph(n)
    for group in (peers[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)):
        for i in range(1, len(group)):
            graph.add_edge(group[i], group[rng.randrange(i)])
    return graph


@pytest.mark.parametrize("seed", range(40))
def test_every_split_is_described_by_its_components_and_lonely_peers(tmp_path, seed) -> None:
    graph = _random_split(seed)
    parts = sorted((sorted(p) for p in nx.connected_components(graph)), key=lambda p: (-len(p), p[0]))
    alone = sorted(p for p, degree in graph.degree() if degree == 0)
    message = disconnection(graph)
    form = re.fullmatch(
        r"disconnected \((\d+) components: (.*)\)(?:: peers? (.*) ha(?:s|ve) no links)?", message
    )
    assert form and int(form[1]) == len(parts)
    if len(parts) <= 6:  # every component, largest first, as its members
        assert form[2].split(" | ") == [peer_list(part, 8) for part in parts]
    assert form[3] == (peer_list(alone) if alone else None)
    edges = tmp_path / "split.edges"
    edges.write_text("".join(f"{u} {v}\n" for u, v in graph.edges()))
    with pytest.raises(TopologyError, match=re.escape(message)):
        build_graph(
            TOPOLOGIES.create({"name": "edgelist", "path": str(edges)}), graph.number_of_nodes(), seed
        )


@pytest.mark.parametrize(("spec", "n"), [("erdos_renyi(p=0.002)", 100), ("geometric(radius=0.001)", 10_000)])
def test_the_message_stays_short_on_large_graphs(spec, n) -> None:
    """A graph too sparse to connect: thousands of components and lonely peers, in one short line."""
    with pytest.raises(TopologyError) as caught:
        build_graph(TOPOLOGIES.create(spec), n, seed=0)
    message = str(caught.value)
    assert "components: " in message and "have no links" in message and "more" in message
    assert len(message) < 700
