"""Topologies: registry coverage, degrees, seeding, connectivity checks, edge-list files, PeerGraph."""

from pathlib import Path

import networkx as nx
import pytest
import torch

from ppaia.topology import TOPOLOGIES, PeerGraph, TopologyError, build_graph

N = 12

# one connected-on-12-peers spec per registered topology; the edgelist path is filled in per test
SPECS = {
    "complete": "complete",
    "ring": "ring",
    "star": "star",
    "grid": "grid",
    "torus": "torus",
    "erdos_renyi": "erdos_renyi(0.5)",
    "random_regular": "random_regular(3)",
    "small_world": "small_world(4, 0.2)",
    "geometric": "geometric(0.7)",
    "edgelist": None,
}
RANDOM = ["erdos_renyi(0.3)", "random_regular(4)", "small_world(4, 0.5)", "geometric(0.5)"]


def ring_file(tmp_path: Path, n: int = N) -> Path:
    path = tmp_path / "links.txt"
    lines = ["# a ring written by hand", *(f"{i} {(i + 1) % n}  # link" for i in range(n)), ""]
    path.write_text("\n".join(lines))
    return path


def build(spec: str, n: int = N, seed: int = 0, **kwargs: bool) -> PeerGraph:
    return build_graph(TOPOLOGIES.create(spec), n, seed, **kwargs)


def degrees(graph: PeerGraph) -> list[int]:
    return graph.degree().tolist()


def test_specs_cover_every_registered_topology() -> None:
    assert set(SPECS) == set(TOPOLOGIES.names())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_topology_builds_connected_on_peers_0_to_n(name: str, tmp_path: Path) -> None:
    spec = SPECS[name] or {"name": "edgelist", "path": str(ring_file(tmp_path))}
    graph = build_graph(TOPOLOGIES.create(spec), N, seed=3)
    nxg = graph.to_networkx()
    assert graph.n == N and sorted(nxg.nodes) == list(range(N))
    assert nx.is_connected(nxg)
    assert graph.edges.shape[0] == 2 and bool((graph.edges[0] < graph.edges[1]).all())


def test_ring_degrees_are_all_two() -> None:
    assert degrees(build("ring")) == [2] * N


def test_complete_degrees_are_n_minus_one() -> None:
    assert degrees(build("complete")) == [N - 1] * N


def test_star_has_one_hub_and_leaves() -> None:
    assert degrees(build("star")) == [N - 1] + [1] * (N - 1)


def test_torus_4x4_degrees_are_all_four() -> None:
    assert degrees(build("torus", n=16)) == [4] * 16


def test_grid_4x4_has_corner_degree_two_and_interior_four() -> None:
    deg = degrees(build("grid", n=16))
    assert sorted(deg) == [2] * 4 + [3] * 8 + [4] * 4
    assert deg[0] == 2 and deg[15] == 2


@pytest.mark.parametrize("k", [2, 3, 5])
def test_random_regular_degrees_are_all_k(k: int) -> None:
    assert degrees(build(f"random_regular({k})", n=N, seed=1)) == [k] * N


def test_grid_with_given_rows_has_that_shape() -> None:
    graph = build("grid(rows=3)", n=N).to_networkx()
    assert nx.is_isomorphic(graph, nx.grid_2d_graph(3, 4))


@pytest.mark.parametrize("spec", RANDOM)
def test_same_seed_gives_same_graph(spec: str) -> None:
    a = build(spec, seed=7, allow_disconnected=True).edges
    assert torch.equal(a, build(spec, seed=7, allow_disconnected=True).edges)


@pytest.mark.parametrize("spec", RANDOM)
def test_different_seed_gives_different_graph(spec: str) -> None:
    a = build(spec, n=30, seed=1, allow_disconnected=True).edges
    b = build(spec, n=30, seed=2, allow_disconnected=True).edges
    assert a.shape != b.shape or not torch.equal(a, b)


def test_disconnected_graph_is_an_error_naming_allow_disconnected() -> None:
    with pytest.raises(TopologyError, match="allow_disconnected"):
        build("erdos_renyi(p=0.01)", n=30)


def test_disconnected_graph_is_accepted_when_allowed() -> None:
    graph = build("erdos_renyi(p=0.01)", n=30, allow_disconnected=True)
    assert graph.n == 30 and not nx.is_connected(graph.to_networkx())


def test_edgelist_with_isolated_peer_is_disconnected(tmp_path: Path) -> None:
    topology = TOPOLOGIES.create({"name": "edgelist", "path": str(ring_file(tmp_path, n=N - 1))})
    with pytest.raises(TopologyError, match="allow_disconnected"):
        build_graph(topology, N, seed=0)
    graph = build_graph(topology, N, seed=0, allow_disconnected=True)
    assert graph.degree()[N - 1] == 0


@pytest.mark.parametrize("spec", ["grid(rows=5)", "grid(cols=7)", "grid(rows=3, cols=5)", "torus(rows=5)"])
def test_grid_shape_that_does_not_fit_the_peers_raises(spec: str) -> None:
    with pytest.raises(TopologyError):
        build(spec, n=N)


def test_random_regular_with_odd_n_times_k_raises() -> None:
    with pytest.raises(TopologyError, match="even"):
        build("random_regular(3)", n=11)


def test_random_regular_with_k_not_below_n_raises() -> None:
    with pytest.raises(TopologyError):
        build("random_regular(12)", n=N)


def edgelist(tmp_path: Path, text: str) -> PeerGraph:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    return build_graph(TOPOLOGIES.create({"name": "edgelist", "path": str(path)}), 4, seed=0)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("0 1\n1 two\n", 2),  # not an integer
        ("0 1\n\n1 2 3\n", 3),  # three fields
        ("# c\n5\n", 2),  # one field
        ("0 1\n1 4\n", 2),  # out of range
        ("0 1\n-1 2\n", 2),  # negative id
        ("0 1\n2 2\n", 2),  # self loop
    ],
)
def test_edgelist_errors_name_the_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(TopologyError, match=rf"bad\.txt:{line}:"):
        edgelist(tmp_path, text)


def test_edgelist_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(TopologyError, match=r"nowhere\.txt"):
        build_graph(TOPOLOGIES.create({"name": "edgelist", "path": str(missing)}), 4, seed=0)


def test_edgelist_skips_comments_and_blank_lines_and_duplicates(tmp_path: Path) -> None:
    graph = edgelist(tmp_path, "# header\n\n0 1\n1 0\n1 2 # note\n  2   3  \n")
    assert graph.edges.tolist() == [[0, 1, 2], [1, 2, 3]]


def test_directed_lists_each_link_both_ways() -> None:
    graph = build("star", n=4)
    receivers, senders = graph.directed()
    pairs = sorted(zip(receivers.tolist(), senders.tolist(), strict=True))
    assert pairs == [(0, 1), (0, 2), (0, 3), (1, 0), (2, 0), (3, 0)]


def test_neighbours_are_the_sorted_adjacent_peers() -> None:
    graph = build("ring", n=N)
    assert graph.neighbours(0).tolist() == [1, N - 1]
    assert graph.neighbours(5).tolist() == [4, 6]
    assert build("star", n=5).neighbours(0).tolist() == [1, 2, 3, 4]


def test_live_keeps_about_link_up_of_the_links() -> None:
    graph = build("complete", n=40)
    total = graph.edges.shape[1]
    kept = graph.live(0.5, torch.Generator().manual_seed(0)).edges.shape[1]
    assert 0.35 * total < kept < 0.65 * total


def test_live_links_are_a_subset_of_the_graph() -> None:
    graph = build("complete", n=20)
    live = graph.live(0.3, torch.Generator().manual_seed(1))
    assert set(map(tuple, live.edges.T.tolist())) <= set(map(tuple, graph.edges.T.tolist()))
    assert live.n == graph.n


def test_live_at_one_keeps_every_link() -> None:
    graph = build("complete", n=10)
    assert torch.equal(graph.live(1.0, torch.Generator().manual_seed(0)).edges, graph.edges)


def test_live_is_deterministic_for_a_seeded_generator() -> None:
    graph = build("complete", n=20)
    a = graph.live(0.5, torch.Generator().manual_seed(4)).edges
    b = graph.live(0.5, torch.Generator().manual_seed(4)).edges
    c = graph.live(0.5, torch.Generator().manual_seed(5)).edges
    assert torch.equal(a, b)
    assert a.shape != c.shape or not torch.equal(a, c)


def test_diameter_of_ring_of_ten_is_five() -> None:
    assert build("ring", n=10).diameter() == 5


def test_diameter_of_complete_graph_is_one() -> None:
    assert build("complete", n=6).diameter() == 1
