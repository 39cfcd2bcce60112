"""Mixing weights (stochasticity, locality, formulas) and Mixing steps (sparse/dense sums, partial writes)."""

import pytest
import torch

from ppaia.topology import MIXINGS, TOPOLOGIES, Mixing, PeerGraph, build_graph, mixing_step

MIXING_NAMES = ["metropolis", "uniform", "data_size"]
GRAPHS = {
    "ring": ("ring", 12),
    "torus": ("torus", 16),
    "star": ("star", 12),
    "erdos_renyi": ("erdos_renyi(0.3)", 15),
}


def graph_of(name: str, seed: int = 1) -> PeerGraph:
    spec, n = GRAPHS[name]
    return build_graph(TOPOLOGIES.create(spec), n, seed)  # connected, else TopologyError


def samples(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 200, (n,), generator=torch.Generator().manual_seed(seed))


def dense(step: Mixing, n: int) -> torch.Tensor:
    matrix = torch.zeros(step.n_rows, n, dtype=torch.float64)
    return matrix.index_put_((step.rows, step.senders), step.weights.double(), accumulate=True)


def adjacency(graph: PeerGraph) -> torch.Tensor:
    adj = torch.zeros(graph.n, graph.n, dtype=torch.bool)
    receivers, senders = graph.directed()
    adj[receivers, senders] = True
    return adj


def matrix_for(mixing: str, graph: PeerGraph, counts: torch.Tensor | None = None) -> torch.Tensor:
    counts = samples(graph.n) if counts is None else counts
    return dense(mixing_step(MIXINGS.create(mixing), graph, counts), graph.n)


def params(n: int, d: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_erdos_renyi_fixture_is_irregular() -> None:
    assert graph_of("erdos_renyi").degree().unique().numel() > 1


@pytest.mark.parametrize("topology", sorted(GRAPHS))
@pytest.mark.parametrize("mixing", MIXING_NAMES)
def test_rows_sum_to_one_and_entries_are_nonnegative(mixing: str, topology: str) -> None:
    w = matrix_for(mixing, graph_of(topology))
    assert torch.allclose(w.sum(1), torch.ones(w.shape[0], dtype=torch.float64))
    assert bool((w >= 0).all())


@pytest.mark.parametrize("topology", sorted(GRAPHS))
@pytest.mark.parametrize("mixing", MIXING_NAMES)
def test_weights_are_positive_exactly_on_closed_neighbourhoods(mixing: str, topology: str) -> None:
    graph = graph_of(topology)
    w = matrix_for(mixing, graph)
    closed = adjacency(graph) | torch.eye(graph.n, dtype=torch.bool)
    assert bool((w[~closed] == 0).all())
    assert bool((w[closed] > 0).all())


@pytest.mark.parametrize("topology", ["star", "erdos_renyi"])
def test_metropolis_is_symmetric_and_doubly_stochastic_on_irregular_graphs(topology: str) -> None:
    w = matrix_for("metropolis", graph_of(topology))
    assert torch.allclose(w, w.T)
    assert torch.allclose(w.sum(0), torch.ones(w.shape[0], dtype=torch.float64))


def test_metropolis_link_weight_uses_the_larger_degree() -> None:
    w = matrix_for("metropolis", graph_of("star"))  # hub degree 11, leaves 1
    assert w[0, 5].item() == pytest.approx(1 / 12)
    assert w[5, 5].item() == pytest.approx(11 / 12)


@pytest.mark.parametrize("mixing", ["uniform", "data_size"])
def test_uniform_and_data_size_are_not_column_stochastic_on_a_star(mixing: str) -> None:
    w = matrix_for(mixing, graph_of("star"))
    assert not torch.allclose(w.sum(0), torch.ones(w.shape[0], dtype=torch.float64))


def test_uniform_gives_equal_weight_to_self_and_each_neighbour() -> None:
    graph = graph_of("erdos_renyi")
    w = matrix_for("uniform", graph)
    closed = adjacency(graph) | torch.eye(graph.n, dtype=torch.bool)
    for i, deg in enumerate(graph.degree().tolist()):
        assert torch.allclose(w[i, closed[i]], torch.full((deg + 1,), 1 / (deg + 1), dtype=torch.float64))


def test_data_size_weights_are_proportional_to_sample_counts() -> None:
    graph = graph_of("erdos_renyi")
    counts = samples(graph.n, seed=3)
    w = matrix_for("data_size", graph, counts)
    closed = (adjacency(graph) | torch.eye(graph.n, dtype=torch.bool)).double()
    expected = closed * counts.double() / (closed @ counts.double()).unsqueeze(1)
    assert torch.allclose(w, expected)


def test_weighted_sum_sparse_path_equals_dense_product(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = build_graph(TOPOLOGIES.create("ring"), 40, seed=0)
    step = mixing_step(MIXINGS.create("data_size"), graph, samples(40))
    assert step.rows.numel() * 4 < 40 * 40  # sparse enough for the sparse path
    calls = []
    original = torch.sparse.mm
    monkeypatch.setattr(torch.sparse, "mm", lambda *a: calls.append(1) or original(*a))
    x = params(40)
    assert torch.allclose(step.weighted_sum(x), dense(step, 40) @ x)
    assert calls


def test_weighted_sum_dense_path_equals_dense_product(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = build_graph(TOPOLOGIES.create("complete"), 12, seed=0)
    step = mixing_step(MIXINGS.create("uniform"), graph, samples(12))
    monkeypatch.setattr(torch.sparse, "mm", lambda *a: pytest.fail("dense path expected"))
    x = params(12)
    assert torch.allclose(step.weighted_sum(x), dense(step, 12) @ x)


def test_weighted_sum_keeps_the_parameter_dtype() -> None:
    step = mixing_step(MIXINGS.create("metropolis"), graph_of("ring"), samples(12))
    x = params(12).float()
    out = step.weighted_sum(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, (dense(step, 12) @ x.double()).float(), atol=1e-6)


def pair_step(n: int = 6) -> Mixing:
    """Peers 2 and 5 average with each other; no other peer is written."""
    rows = torch.tensor([0, 0, 1, 1])
    senders = torch.tensor([2, 5, 5, 2])
    return Mixing(
        rows,
        senders,
        torch.full((4,), 0.5, dtype=torch.float64),
        2,
        torch.tensor([2, 5]),
        torch.tensor([0, 1]),
    )


def test_write_of_a_partial_step_only_changes_its_targets() -> None:
    x = params(6)
    before = x.clone()
    step = pair_step()
    result = step.write(x, step.weighted_sum(x))
    mean = (before[2] + before[5]) / 2
    assert torch.allclose(result[2], mean) and torch.allclose(result[5], mean)
    untouched = [0, 1, 3, 4]
    assert torch.equal(result[untouched], before[untouched])


def test_write_of_a_full_step_returns_the_mixed_rows() -> None:
    step = mixing_step(MIXINGS.create("metropolis"), graph_of("ring"), samples(12))
    x = params(12)
    out = step.weighted_sum(x)
    assert torch.equal(step.write(x, out), out)


@pytest.mark.parametrize("mixing", MIXING_NAMES)
def test_for_peer_reproduces_each_row_of_the_full_product(mixing: str) -> None:
    graph = graph_of("erdos_renyi")
    step = mixing_step(MIXINGS.create(mixing), graph, samples(graph.n))
    x = params(graph.n)
    full = step.weighted_sum(x)
    for peer in range(graph.n):
        mine = step.for_peer(peer)
        senders = mine.sender_ids
        expected_senders = sorted([peer, *graph.neighbours(peer).tolist()])
        assert senders.tolist() == expected_senders
        assert mine.n_rows == 1 and mine.receiver_ids().tolist() == [peer]
        assert mine.sender_peers().sort().values.tolist() == expected_senders
        assert torch.allclose(mine.weighted_sum(x[senders]), full[peer : peer + 1])


def test_for_peer_of_a_partial_step() -> None:
    step = pair_step()
    x = params(6)
    mine = step.for_peer(5)
    senders = mine.sender_ids
    assert senders.tolist() == [2, 5]
    assert torch.allclose(mine.weighted_sum(x[senders])[0], (x[2] + x[5]) / 2)
    assert step.for_peer(0) is None


@pytest.mark.parametrize("topology", sorted(GRAPHS))
def test_transfers_of_a_full_step_is_the_number_of_directed_links(topology: str) -> None:
    graph = graph_of(topology)
    step = mixing_step(MIXINGS.create("metropolis"), graph, samples(graph.n))
    assert step.transfers() == 2 * graph.edges.shape[1]


def test_transfers_of_a_pair_average_is_two() -> None:
    assert pair_step().transfers() == 2


@pytest.mark.parametrize("topology", ["ring", "star", "erdos_renyi"])
def test_repeated_metropolis_mixing_reaches_the_average(topology: str) -> None:
    graph = graph_of(topology)
    step = mixing_step(MIXINGS.create("metropolis"), graph, samples(graph.n))
    x = params(graph.n, d=3)
    target = x.mean(0, keepdim=True).expand_as(x)
    for _ in range(400):
        x = step.write(x, step.weighted_sum(x))
    assert torch.allclose(x, target, atol=1e-8)


def test_gather_lays_each_receivers_senders_side_by_side() -> None:
    graph = graph_of("star")
    step = mixing_step(MIXINGS.create("uniform"), graph, samples(graph.n))
    x = params(graph.n)
    hood = step.gather(x)
    degree = graph.degree()
    assert hood.values.shape == (graph.n, int(degree.max()) + 1, x.shape[1])
    assert hood.mask.sum(1).tolist() == (degree + 1).tolist()
    for peer in range(graph.n):
        ids = hood.ids[peer][hood.mask[peer]]
        assert sorted(ids.tolist()) == sorted([peer, *graph.neighbours(peer).tolist()])
        assert torch.equal(hood.values[peer][hood.mask[peer]], x[ids])
        assert torch.allclose(
            (hood.weights[peer] * hood.mask[peer]).sum(), torch.tensor(1.0, dtype=torch.float64)
        )
    part = step.gather(x, slice(2, 5))
    assert torch.equal(part.ids, hood.ids[2:5, : part.ids.shape[1]])


def test_a_row_restricted_to_available_senders_keeps_its_total():
    import torch

    from ppaia.topology.mixing import Mixing

    row = Mixing(
        torch.zeros(4, dtype=torch.long),
        torch.tensor([0, 1, 2, 3]),
        torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64),
        1,
        torch.tensor([5]),
        torch.tensor([0]),
        torch.tensor([2, 5, 7, 9]),  # peer 5 is the receiver itself
    )
    params = torch.arange(4.0).unsqueeze(1)
    cut = row.restricted(torch.tensor([True, True, False, True]), peer=5)
    assert cut.sender_ids.tolist() == [2, 5, 9]
    # peer 7's weight went to the receiver's own model
    torch.testing.assert_close(cut.weights, torch.tensor([0.4, 0.5, 0.1], dtype=torch.float64))
    torch.testing.assert_close(cut.weighted_sum(params[[0, 1, 3]]), torch.tensor([[0.5 * 1 + 0.1 * 3]]))
    without_self = row.restricted(torch.tensor([True, False, True, False]), peer=5)
    assert without_self.sender_ids.tolist() == [2, 7]
    torch.testing.assert_close(without_self.weights, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
