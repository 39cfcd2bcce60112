"""Cooperation rules: their defining properties, and batched form == per-peer form for every rule."""

import pytest
import torch
from rule_cases import D, N, context, params, run_plan

import ppaia
from ppaia.rules import RULES, apply_step_per_peer
from ppaia.rules.gossip import disjoint_layers, pair_average


@pytest.mark.parametrize(
    "spec",
    [
        "isolated",
        "fedavg",
        "fedavg(fraction=0.3)",
        "gossip",
        "gossip(pairs=25)",
        "consensus",
        "consensus(steps=3)",
    ],
)
@pytest.mark.parametrize("mixing", ["metropolis", "uniform", "data_size"])
@pytest.mark.parametrize("link_up", [1.0, 0.6])
def test_batched_and_per_peer_forms_agree(spec, mixing, link_up):
    ctx = context("erdos_renyi(p=0.4)", mixing, link_up)
    theta = params()
    rule, plan, batched = run_plan(spec, ctx, theta)
    models = list(theta.clone())
    for step in plan.steps:
        models = apply_step_per_peer(rule, step, models, ctx)
    torch.testing.assert_close(torch.stack(models), batched, rtol=1e-12, atol=1e-12)


PARITY_ELSEWHERE = {
    "centralized": "one pooled model, no mixing step",
    "p2pl": "tests/rules/test_p2pl.py",
    "learned_trust": "tests/rules/test_trust.py",
    "flobc": "tests/rules/test_flobc.py",
    "median": "tests/rules/test_robust.py",
    "trimmed_mean": "tests/rules/test_robust.py",
    "krum": "tests/rules/test_robust.py",
    "multi_krum": "tests/rules/test_robust.py",
    "clipped_gossip": "tests/rules/test_centred.py",
    "balance": "tests/rules/test_centred.py",
}


def test_every_registered_rule_is_covered_by_a_parity_test():
    here = {"isolated", "fedavg", "gossip", "consensus"}
    assert set(RULES.names()) == here | set(PARITY_ELSEWHERE)


def test_isolated_changes_nothing_and_sends_nothing():
    theta = params()
    _, plan, out = run_plan("isolated", context(), theta)
    torch.testing.assert_close(out, theta)
    assert plan.models_sent() == 0 and plan.trainers is None


def test_centralized_pools_data_and_ignores_topology():
    rule = RULES.create("centralized")
    assert rule.pooled and not rule.uses_topology


def test_fedavg_gives_everyone_the_sample_weighted_mean():
    ctx, theta = context(), params()
    _, plan, out = run_plan("fedavg", ctx, theta)
    sizes = ctx.n_samples.double()
    expected = (sizes[:, None] * theta).sum(0) / sizes.sum()
    torch.testing.assert_close(out, expected.expand(N, D))
    assert plan.trainers.all() and plan.models_sent() == 2 * N


def test_fedavg_fraction_averages_only_sampled_clients():
    ctx, theta = context(), params()
    _, plan, out = run_plan("fedavg(fraction=0.3)", ctx, theta)
    clients = plan.trainers.nonzero().flatten()
    assert clients.numel() == 3 and plan.models_sent() == 6
    sizes = ctx.n_samples[clients].double()
    expected = (sizes[:, None] * theta[clients]).sum(0) / sizes.sum()
    torch.testing.assert_close(out, expected.expand(N, D))


def test_fedavg_starts_every_peer_from_the_servers_model():
    config = ppaia.ExperimentConfig.model_validate(
        {"peers": 5, "rule": "fedavg", "init": "independent", "dataset": "synthetic(samples=200)"}
    )
    params = ppaia.Simulation(config).setup.params
    torch.testing.assert_close(params, params[:1].expand_as(params))


@pytest.mark.parametrize("spec", ["gossip", "gossip(pairs=40)"])
@pytest.mark.parametrize("topology", ["ring", "star", "complete"])
def test_gossip_preserves_the_average(spec, topology):
    theta = params()
    _, plan, out = run_plan(spec, context(topology), theta)
    assert plan.steps, "gossip made no exchange"
    torch.testing.assert_close(out.mean(0), theta.mean(0))
    assert plan.models_sent() == 2 * (40 if "40" in spec else N // 2)


def test_gossip_layers_equal_sequential_pair_averaging():
    pairs = torch.tensor([[0, 1], [2, 3], [1, 2], [4, 5], [0, 1], [6, 7], [5, 6], [3, 4]])
    layers = disjoint_layers(pairs)
    assert torch.equal(torch.cat(layers), pairs)  # order kept
    for layer in layers:
        assert layer.flatten().unique().numel() == layer.numel()  # no peer twice within a layer
    theta = params()
    sequential = theta.clone()
    for u, v in pairs.tolist():
        sequential[u] = sequential[v] = (sequential[u] + sequential[v]) / 2
    layered = theta.clone()
    for layer in layers:
        step = pair_average(layer)
        layered = step.write(layered, step.weighted_sum(layered))
    torch.testing.assert_close(layered, sequential)


def test_gossip_only_uses_links_of_the_topology():
    ctx = context("ring")
    _, plan, _ = run_plan("gossip(pairs=30)", ctx, params())
    links = {tuple(edge) for edge in ctx.graph.edges.T.tolist()}
    for step in plan.steps:
        for row in range(step.n_rows):
            senders = set(step.senders[step.rows == row].tolist())
            assert len(senders) == 2 and tuple(sorted(senders)) in links


def test_consensus_with_doubly_stochastic_weights_preserves_the_average():
    theta = params()
    _, _, out = run_plan("consensus(steps=4)", context("erdos_renyi(p=0.5)", "metropolis"), theta)
    torch.testing.assert_close(out.mean(0), theta.mean(0))


@pytest.mark.parametrize("mixing", ["metropolis", "uniform", "data_size"])
def test_consensus_converges_to_agreement(mixing):
    theta = params()
    start = (theta - theta.mean(0)).square().sum(1).mean()
    _, _, out = run_plan("consensus(steps=200)", context("ring", mixing), theta)
    spread = (out - out.mean(0)).square().sum(1).mean()
    assert spread < 1e-6 * start


def test_consensus_counts_one_model_per_directed_live_link_and_step():
    ctx = context("ring")
    _, plan, _ = run_plan("consensus(steps=3)", ctx, params())
    assert plan.models_sent() == 3 * 2 * N
    ctx = context("complete", link_up=0.5)
    _, plan, _ = run_plan("consensus", ctx, params())
    live = ctx.graph.live(0.5, torch.Generator().manual_seed(0))
    assert plan.models_sent() == 2 * live.edges.shape[1] < 2 * ctx.graph.edges.shape[1]


def test_rule_plans_are_deterministic_for_a_seeded_round():
    first = run_plan("gossip", context(link_up=0.7, seed=5), params())[2]
    again = run_plan("gossip", context(link_up=0.7, seed=5), params())[2]
    other = run_plan("gossip", context(link_up=0.7, seed=6), params())[2]
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
