"""Init policies: max-norm synchronization (P2PL) by max-consensus over the graph."""

import networkx as nx
import pytest
import torch
from torch import nn

from ppaia.learning.init import (
    INIT_POLICIES,
    adopt_smallest,
    independent_params,
    max_norm_sync,
    norm_ranks,
)
from ppaia.topology import MIXINGS, TOPOLOGIES, PeerGraph, build_graph, mixing_step


def build() -> nn.Module:
    return nn.Linear(4, 3)


def max_norm(n: int, graph: PeerGraph | None, seed: int = 0):
    return INIT_POLICIES.create("max_norm").initial_params(build, n, seed, graph)


def path(n: int) -> PeerGraph:
    return PeerGraph.from_networkx(nx.path_graph(n))


def decreasing_norms(n: int, d: int = 5) -> torch.Tensor:
    """Peer i's parameters have norm n - i: the largest at peer 0, ranks equal to ids."""
    theta = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    return theta / theta.norm(dim=1, keepdim=True) * torch.arange(n, 0, -1).unsqueeze(1)


@pytest.mark.parametrize(
    ("spec", "n", "seed"),
    [("ring", 12, 0), ("torus", 16, 0), ("erdos_renyi(p=0.3)", 20, 1), ("star", 9, 0), ("complete", 7, 0)],
)
def test_every_peer_ends_with_the_largest_norm_draw(spec, n, seed):
    graph = build_graph(TOPOLOGIES.create(spec), n, seed)
    own = independent_params(build, list(range(n)), seed=4)
    init = max_norm(n, graph, seed=4)
    best = own.norm(dim=1).argmax()
    torch.testing.assert_close(init.params, own[best].expand(n, -1), rtol=0, atol=0)
    assert 1 <= init.steps <= graph.diameter()
    assert init.models_sent > 0


@pytest.mark.parametrize("n", [5, 8, 12])
def test_ring_with_the_max_at_peer_0_takes_half_the_ring(n):
    graph = build_graph(TOPOLOGIES.create("ring"), n, 0)
    theta = decreasing_norms(n)
    init = max_norm_sync(theta, graph)
    assert init.steps == n // 2
    torch.testing.assert_close(init.params, theta[0].expand(n, -1), rtol=0, atol=0)


def test_models_sent_is_the_flooding_cost_on_a_path():
    # path 0-1-2-3 (degrees 1,2,2,1), ranks = ids: step 1 everyone sends (6); 1,2,3 changed -> 2+2+1 = 5;
    # 2,3 changed -> 2+1 = 3; 3 changed -> 1, nobody changes: 3 steps, 15 models
    init = max_norm_sync(decreasing_norms(4), path(4))
    assert (init.steps, init.models_sent) == (3, 15)


def test_models_sent_when_the_max_is_in_the_middle():
    # path 0-1-2 with the max at 1: step 1 all send (1+2+1 = 4), 0 and 2 change; step 2 they send 1+1
    theta = decreasing_norms(3)[[1, 0, 2]]
    init = max_norm_sync(theta, path(3))
    assert (init.steps, init.models_sent) == (1, 6)
    torch.testing.assert_close(init.params, theta[1].expand(3, -1), rtol=0, atol=0)


def test_equal_norms_go_to_the_smaller_id():
    theta = torch.zeros(6, 3)
    theta[:, 0] = 1.0
    theta[5] = torch.tensor([0.0, 3.0, 0.0])  # same norm as peer 2, seen first by its neighbours
    theta[2] = torch.tensor([0.0, 0.0, -3.0])
    assert norm_ranks(theta)[:3].tolist() == [2, 3, 0] and norm_ranks(theta)[5] == 1
    init = max_norm_sync(theta, path(6))
    torch.testing.assert_close(init.params, theta[2].expand(6, -1), rtol=0, atol=0)


def test_one_peer_runs_the_same_step_on_what_it_received():
    graph = build_graph(TOPOLOGIES.create("erdos_renyi(p=0.3)"), 15, 2, allow_disconnected=True)
    step = mixing_step(MIXINGS.create("uniform"), graph, torch.ones(15))
    ranks = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        batched = adopt_smallest(ranks, step)
        for peer in range(15):
            own_row = step.for_peer(peer)
            assert adopt_smallest(ranks[own_row.sender_ids], own_row).tolist() == [batched[peer]]
            closed = torch.cat([graph.neighbours(peer), torch.tensor([peer])])
            assert batched[peer] == ranks[closed].min()
        ranks = batched


def test_without_links_every_peer_keeps_its_own_draw():
    own = independent_params(build, list(range(5)), seed=2)
    for graph in [None, PeerGraph(5, torch.zeros(2, 0, dtype=torch.long))]:
        init = max_norm(5, graph, seed=2)
        torch.testing.assert_close(init.params, own, rtol=0, atol=0)
        assert (init.steps, init.models_sent) == (0, 0)


def test_disconnected_parts_each_agree_on_their_own_largest():
    graph = PeerGraph.from_networkx(nx.disjoint_union(nx.path_graph(3), nx.path_graph(3)))
    theta = decreasing_norms(6)[[2, 0, 1, 5, 4, 3]]
    init = max_norm_sync(theta, graph)
    torch.testing.assert_close(init.params, theta[[1, 1, 1, 5, 5, 5]], rtol=0, atol=0)


def test_max_norm_is_deterministic_by_seed():
    graph = build_graph(TOPOLOGIES.create("ring"), 10, 0)
    first, again, other = max_norm(10, graph, 3), max_norm(10, graph, 3), max_norm(10, graph, 4)
    torch.testing.assert_close(first.params, again.params, rtol=0, atol=0)
    assert (first.steps, first.models_sent) == (again.steps, again.models_sent)
    assert not torch.equal(first.params, other.params)


@pytest.mark.parametrize("policy", ["common", "independent", "max_norm"])
@pytest.mark.parametrize(("spec", "n"), [("ring", 9), ("erdos_renyi(p=0.3)", 12), ("star", 6)])
def test_a_few_peers_rows_equal_those_rows_of_the_whole_swarm(policy, spec, n):
    """A networked peer asks for its own row only; it must be the simulator's row, cost included."""
    graph = build_graph(TOPOLOGIES.create(spec), n, 3)
    init = INIT_POLICIES.create(policy)
    whole = init.initial_params(build, n, 5, graph)
    for ids in ([0], [n - 1], [2, n // 2]):
        part = init.initial_params(build, n, 5, graph, torch.tensor(ids))
        assert torch.equal(part.params, whole.params[ids])
        assert (part.steps, part.models_sent) == (whole.steps, whole.models_sent)
