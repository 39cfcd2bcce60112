"""Churn schedules (ppaia.churn) and the simulator running one: who is in each round, sampled partners,
joiners starting from the live peers' models, absent peers frozen."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

import ppaia
from ppaia.churn import Churn, adopt_joiners, sampled_graph
from ppaia.simulation.engine import Simulation

BASE = {
    "peers": 12,
    "rounds": 6,
    "seed": 3,
    "model": "mlp(hidden=[16])",
    "local_epochs": 1,
    "holdout": 0.2,
    "partition": "iid",
    "rule": "learned_trust(partners=2)",
}


def test_explicit_rounds_say_who_is_in_each_round():
    churn = Churn(joins={3: 4}, leaves={5: 3}, returns={5: 5})
    alive = churn.alive(8, 6, seed=0)
    assert alive.shape == (7, 8)
    assert alive[1:4, 3].tolist() == [False] * 3 and alive[4:, 3].all()
    assert alive[1:, 5].tolist() == [True, True, False, False, True, True]
    assert alive[:, [0, 1, 2, 4, 6, 7]].all()


@pytest.mark.parametrize(
    "bad",
    [
        {"leaves": {1: 3}, "returns": {1: 2}},  # back before it left
        {"returns": {1: 4}},  # back without leaving
        {"joins": {1: 5}, "leaves": {1: 4}},  # leaves before it joins
        {"departure": 1.5},
        {"joins": {1: 0}},
    ],
)
def test_schedules_that_cannot_happen_are_refused(bad):
    with pytest.raises(ValidationError):
        Churn.model_validate(bad)


def test_a_schedule_naming_a_peer_beyond_the_swarm_is_refused_in_the_config():
    with pytest.raises(ValidationError, match="peer 20 named"):
        ppaia.ExperimentConfig.model_validate(BASE | {"churn": {"joins": {20: 2}}})


@pytest.mark.parametrize("seed", range(3))
def test_rates_draw_one_schedule_per_seed(seed):
    churn = Churn(initial=0.5, arrival=0.3, departure=0.1)
    alive = churn.alive(200, 20, seed)
    assert torch.equal(alive, churn.alive(200, 20, seed))
    assert 60 < int(alive[1].sum()) < 140  # about half in at round 1
    assert int(alive[20].sum()) > int(alive[1].sum())  # arrivals outpace departures
    left = alive[1:-1] & ~alive[2:]
    assert bool(left.any())  # some leave


@pytest.mark.parametrize("seed", range(3))
def test_sampled_partners_are_live_and_about_k_each(seed):
    g = torch.Generator().manual_seed(seed)
    alive = torch.rand(10_000, generator=g) < 0.7
    graph = sampled_graph(alive, 3, g)
    assert graph.n == 10_000
    ends = graph.edges.flatten()
    assert bool(alive[ends].all()) and bool((graph.edges[0] < graph.edges[1]).all())
    degree = graph.degree()[alive].double()
    assert 5.0 < float(degree.mean()) <= 6.0  # k picked + about k picked by others, a few repeats
    assert int((degree == 0).sum()) == 0


@pytest.mark.parametrize("partners", [7, 8, 10**8, 2**62])
def test_asking_for_more_partners_than_live_peers_links_them_all_without_drawing_more(partners):
    alive = torch.tensor([True, False, True, True, True, False, True, True, True, True])  # 8 live
    graph = sampled_graph(alive, partners, torch.Generator().manual_seed(0))
    live = alive.nonzero().flatten()
    assert graph.edges.shape[1] <= 8 * 7 // 2 and bool(alive[graph.edges.flatten()].all())
    assert int(graph.degree()[live].min()) >= 1


@pytest.mark.slow
def test_the_simulator_trains_only_the_peers_in_the_swarm_each_round():
    config = ppaia.ExperimentConfig.model_validate(
        BASE | {"churn": {"joins": {4: 3}, "leaves": {7: 3}, "returns": {7: 5}, "partners": 2}}
    )
    sim = Simulation(config)
    seen = {}

    def observe(view):
        seen[view.round] = view.trainers.clone() if view.trainers is not None else None

    started = sim.setup.params.clone()
    result = sim.run(observe=observe)
    assert not bool(seen[1][4]) and not bool(seen[2][4]) and bool(seen[3][4])  # 4 trains from round 3
    assert not bool(seen[3][7]) and not bool(seen[4][7]) and bool(seen[5][7])
    assert result.final["round"] == config.rounds
    assert not torch.equal(result.params[4], started[4])  # it joined and trained


def test_a_joiner_takes_the_mean_of_the_peers_staying_and_a_returning_peer_keeps_its_own():
    params = torch.arange(12.0).reshape(4, 3)
    alive = torch.tensor([True, True, True, True])
    was = torch.tensor([True, True, False, False])
    ever = torch.tensor([True, True, False, True])  # 2 is new, 3 comes back
    before = params.clone()
    adopt_joiners(params, alive, was, ever)
    assert torch.equal(params[2], before[:2].mean(0))
    assert torch.equal(params[3], before[3]) and torch.equal(params[:2], before[:2])
