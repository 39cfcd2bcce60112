"""Self-centred rules (ClippedGossip, BALANCE): batched == per-peer, bounded pull, their defining formulas."""

import itertools
import math

import pytest
import torch
from pydantic import ValidationError
from rule_cases import D, N, context, params, run_plan

from ppaia.rules import RULES, apply_step_per_peer
from ppaia.rules.centred import CentredRule, CentredView, adaptive_radius, centred_clip
from ppaia.topology import Mixing

CENTRED = [
    "clipped_gossip",
    "clipped_gossip(delta=0.6)",
    "clipped_gossip(tau=0.3)",
    "balance",
    "balance(gamma=0.5, kappa=2, horizon=2)",
    "balance(alpha=0)",
]
TOPOLOGIES = ["ring", "star", "erdos_renyi(p=0.5)", "random_regular(k=4)"]


def near(seed=0, spread=None):
    """N models around 1.0, peer p spread by `spread` (default: from 0.02 for peer 0 to 0.4 for the
    last), so that BALANCE accepts some neighbours and rejects others."""
    generator = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.02, 0.4, N, dtype=torch.float64)[:, None] if spread is None else spread
    return 1.0 + spread * torch.randn(N, D, generator=generator, dtype=torch.float64)


def per_peer(rule, plan, theta, ctx):
    models = list(theta.clone())
    for step in plan.steps:
        models = apply_step_per_peer(rule, step, models, ctx)
    return torch.stack(models)


def view_of(plan, theta):
    (step,) = plan.steps
    return CentredView.of(step.gather(theta), step.receiver_ids())


@pytest.mark.parametrize("spec", CENTRED)
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("link_up", [1.0, 0.6])
def test_batched_and_per_peer_forms_agree(spec, topology, link_up):
    ctx = context(topology, link_up=link_up)
    theta = near()
    rule, plan, batched = run_plan(spec, ctx, theta)
    torch.testing.assert_close(per_peer(rule, plan, theta, ctx), batched, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(batched, theta)


@pytest.mark.parametrize("spec", ["clipped_gossip", "balance(gamma=0.25)"])
def test_chunked_combine_equals_one_chunk(spec, monkeypatch):
    ctx, theta = context("erdos_renyi(p=0.5)"), near(1)
    _, _, whole = run_plan(spec, ctx, theta)
    monkeypatch.setattr(CentredRule, "chunk_elements", 3 * 8 * D)  # a few rows per chunk
    _, _, chunked = run_plan(spec, ctx, theta)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_centred_rules_count_transfers_like_consensus():
    for link_up in [1.0, 0.6]:
        sent = {
            run_plan(spec, context("complete", link_up=link_up), params())[1].models_sent()
            for spec in CENTRED
        }
        assert sent == {
            run_plan("consensus", context("complete", link_up=link_up), params())[1].models_sent()
        }


@pytest.mark.parametrize("mixing", ["metropolis", "uniform", "data_size"])
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("link_up", [1.0, 0.6])
def test_clipped_gossip_without_clipping_is_consensus(mixing, topology, link_up):
    theta = params(3)
    for spec in ["clipped_gossip(delta=0)", "clipped_gossip(tau=1e9)"]:
        _, _, clipped = run_plan(spec, context(topology, mixing, link_up), theta)
        _, _, averaged = run_plan("consensus", context(topology, mixing, link_up), theta)
        torch.testing.assert_close(clipped, averaged, rtol=1e-12, atol=1e-12)


def hostile_round(seed):
    """A round on a random graph with honest models near 1 and a third of the peers sending anything:
    huge, tiny, opposite, NaN or ±inf values (generated with a fixed seed)."""
    generator = torch.Generator().manual_seed(seed)
    ctx = context(["ring", "erdos_renyi(p=0.5)", "random_regular(k=4)", "complete"][seed % 4], seed=seed)
    theta = 1.0 + 0.1 * torch.randn(N, D, generator=generator, dtype=torch.float64)
    bad = torch.randperm(N, generator=generator)[: N // 3]
    for peer in bad.tolist():
        kind = int(torch.randint(0, 4, (1,), generator=generator))
        scale = 10.0 ** float(torch.empty(1).uniform_(-3, 8, generator=generator))
        theta[peer] = [
            scale * torch.randn(D, generator=generator, dtype=torch.float64),
            -scale * theta[peer],
            torch.full((D,), float("nan")),
            torch.full((D,), float(["inf", "-inf"][seed % 2])),
        ][kind]
    honest = torch.ones(N, dtype=torch.bool).index_fill_(0, bad, False)
    return ctx, theta, honest


@pytest.mark.parametrize("spec", ["clipped_gossip", "clipped_gossip(delta=0.5)", "clipped_gossip(tau=0.05)"])
def test_clipping_bounds_each_neighbours_pull_whatever_it_sends(spec):
    for seed in range(24):
        ctx, theta, honest = hostile_round(seed)
        rule, plan, out = run_plan(spec, ctx, theta)
        view = view_of(plan, theta)
        radius = (
            torch.full((N,), rule.tau, dtype=torch.float64)
            if rule.tau is not None
            else adaptive_radius(view.distances, view.weights, view.partner, rule.delta)
        )
        others = torch.where(view.partner, view.weights, 0.0).sum(1)
        moved = (out - theta).norm(dim=1)
        bound = others * radius
        assert bool((moved[honest] <= bound[honest] * (1 + 1e-9) + 1e-12).all()), seed
        assert out[honest].isfinite().all(), seed


def test_centred_clip_scales_only_what_lies_beyond_the_radius():
    generator = torch.Generator().manual_seed(4)
    diffs = torch.randn(6, 5, D, generator=generator, dtype=torch.float64)
    diffs *= 10.0 ** torch.empty(6, 5, 1).uniform_(-4, 6, generator=generator).double()
    radius = torch.rand(6, 1, generator=generator, dtype=torch.float64) * 10
    clipped = centred_clip(diffs, radius)
    lengths, new_lengths = diffs.norm(dim=-1), clipped.norm(dim=-1)
    inside = lengths <= radius
    assert torch.equal(clipped[inside], diffs[inside])  # exactly unchanged
    torch.testing.assert_close(new_lengths[~inside], radius.expand_as(lengths)[~inside])
    cosine = (clipped * diffs).sum(-1) / (new_lengths * lengths)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))  # same direction
    assert torch.equal(centred_clip(diffs, radius, lengths), clipped)


def test_adaptive_radius_clips_at_most_a_delta_share_of_the_weight():
    distances = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]] * 4 + [[3.0, 3.0, 1.0, 0.0, 0.0]]).double()
    equal = torch.full((5, 5), 0.2, dtype=torch.float64)
    weights = torch.stack(
        [
            equal[0],
            equal[0],
            torch.tensor([0.1, 0.1, 0.1, 0.1, 0.6]),
            torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1]),
            equal[0],
        ]
    ).double()
    every = torch.ones(5, 5, dtype=torch.bool)
    every[4, 3:] = False  # the last row has three partners: two tied at 3 and one at 1
    for delta, expected in [(0.0, [5, 5, 5, 5, 3]), (0.3, [4, 4, 5, 2, 3]), (0.45, [3, 3, 5, 2, 3])]:
        radius = adaptive_radius(distances, weights, every, delta)
        assert radius.tolist() == pytest.approx(expected), delta
    assert adaptive_radius(distances, weights, torch.zeros_like(every), 0.3).tolist() == [0.0] * 5


def test_with_four_neighbours_adaptive_clipping_bounds_the_farthest_and_keeps_the_others():
    ctx = context("random_regular(k=4)")  # Metropolis weights 1/5 each; delta 0.3 clips one of four
    theta = near(5, spread=0.05)
    theta[4] = 1e3
    _, plan, out = run_plan("clipped_gossip", ctx, theta)
    view = view_of(plan, theta)
    receivers, senders = ctx.graph.directed()
    for receiver in receivers[senders == 4].tolist():
        honest = view.partner[receiver] & (plan.steps[0].gather(theta).ids[receiver] != 4)
        radius = view.distances[receiver][honest].max()
        plain = theta[receiver] + (view.weights[receiver][honest, None] * view.diffs[receiver][honest]).sum(0)
        pull = out[receiver] - plain  # all that peer 4 added: its weight times the radius, towards it
        torch.testing.assert_close(pull.norm(), radius / 5, rtol=1e-9, atol=0)
        assert (out[receiver] - 1).abs().max() < 0.2
    _, _, averaged = run_plan("consensus", context("random_regular(k=4)"), theta)
    assert (averaged[receivers[senders == 4]] - 1).abs().min() > 100


def test_balance_rejects_a_far_model_and_averages_the_close_ones():
    ctx = context("random_regular(k=4)")
    theta = near(6, spread=0.05)
    theta[4] = -3 * theta[4]  # a sign-flipped, scaled model
    _, _, out = run_plan("balance(alpha=0.25)", ctx, theta)
    receivers, senders = ctx.graph.directed()
    for receiver in range(N):
        if receiver == 4:
            continue
        neighbours = senders[(receivers == receiver) & (senders != 4)]
        expected = 0.25 * theta[receiver] + 0.75 * theta[neighbours].mean(0)
        torch.testing.assert_close(out[receiver], expected, rtol=1e-12, atol=1e-12)


def test_balance_radius_shrinks_with_the_runs_progress():
    rule = RULES.create("balance(gamma=0.3, kappa=1, horizon=10)")
    shares = [rule.radius_share(t) for t in range(0, 13)]
    assert shares[0] == 0.3 and all(a > b for a, b in itertools.pairwise(shares[:11]))
    assert shares[10:] == [pytest.approx(0.3 * math.exp(-1))] * 3  # λ(t) = t/T stops at 1
    assert {RULES.create("balance(kappa=5)").radius_share(t) for t in (1, 50, 10_000)} == {0.3}
    # a neighbour at 25 % of the receiver's norm: accepted in round 1 (radius 27 %), not in round 10 (11 %)
    theta = torch.zeros(N, D, dtype=torch.float64)
    theta[:, 0] = 4.0
    theta[1, 1] = 1.0
    for round_, accepted in [(1, True), (10, False)]:
        ctx = context("ring", round_=round_)
        _, _, out = run_plan("balance(horizon=10)", ctx, theta)
        moved = out[0, 1].item()  # peer 0 hears peers 1 and 9; only peer 1 differs
        assert moved == (pytest.approx(0.5 * 0.5) if accepted else 0.0), round_


@pytest.mark.parametrize("spec", ["clipped_gossip", "clipped_gossip(tau=0.1)", "balance(gamma=0.5)"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nan_and_inf_models_get_no_weight_and_no_peer_turns_nan(spec, dtype):
    ctx = context("complete")
    theta = near(7).to(dtype)
    theta[2] = float("nan")
    theta[5, 3] = float("inf")
    theta[7] = -torch.finfo(dtype).max  # finite, but its difference from a positive model may overflow
    theta[8] = torch.finfo(dtype).max
    rule, plan, out = run_plan(spec, ctx, theta)
    honest = torch.tensor([peer not in (2, 5, 7, 8) for peer in range(N)])
    assert out[honest].isfinite().all()
    assert out[2].isnan().all() and torch.equal(out[5], theta[5])  # a non-finite receiver keeps its model
    torch.testing.assert_close(per_peer(rule, plan, theta, ctx), out, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_a_nan_neighbour_counts_as_one_that_sent_nothing():
    """Its weight stays with the receiver: clipped gossip moves as if it had sent the receiver's own
    model; BALANCE as if it had sent a model it rejects."""
    ctx = context("complete")
    step = RULES.create("consensus").plan(ctx).steps[0].for_peer(0)
    received = near(8)
    for spec, stand_in in [("clipped_gossip(tau=0.2)", received[0]), ("balance", 1e6 * received[3])]:
        rule = RULES.create(spec)
        hostile, quiet = received.clone(), received.clone()
        hostile[3], quiet[3] = float("nan"), stand_in
        torch.testing.assert_close(rule.combine(hostile, step, ctx), rule.combine(quiet, step, ctx))


def test_a_step_without_the_receivers_own_model_is_refused():
    step = Mixing(
        torch.tensor([0, 0]), torch.tensor([1, 2]), torch.ones(2) / 2, 1, torch.tensor([0]), torch.tensor([0])
    )
    for spec in ["clipped_gossip", "balance"]:
        with pytest.raises(ValueError, match="own model"):
            RULES.create(spec).combine(params(), step, context())


@pytest.mark.parametrize(
    "spec",
    [
        "clipped_gossip(delta=1)",
        "clipped_gossip(delta=-0.1)",
        "clipped_gossip(tau=0)",
        "balance(gamma=0)",
        "balance(alpha=1.5)",
        "balance(horizon=0)",
        "balance(kappa=-1)",
        {"name": "clipped_gossip", "tau": float("nan")},
    ],
)
def test_options_out_of_range_are_refused(spec):
    with pytest.raises(ValidationError):
        RULES.create(spec)


def test_their_options_are_local_to_each_peer():
    assert RULES.get("clipped_gossip").local_options == {"tau", "delta"}
    assert RULES.get("balance").local_options == {"gamma", "kappa", "alpha", "horizon"}
