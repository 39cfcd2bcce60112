"""Robust rules: batched form == per-peer form, resistance to outliers, and their defining formulas."""

import pytest
import torch
from pydantic import ValidationError
from rule_cases import D, N, context, params, run_plan

from ppaia.rules import RULES, apply_step_per_peer
from ppaia.rules.robust import RobustRule, krum_mean, krum_scores
from ppaia.topology import Mixing

ROBUST = [
    "median",
    "trimmed_mean",
    "trimmed_mean(0.3)",
    "krum",
    "krum(f=3)",
    "multi_krum",
    "multi_krum(2, 4)",
]


def per_peer(rule, plan, theta, ctx):
    models = list(theta.clone())
    for step in plan.steps:
        models = apply_step_per_peer(rule, step, models, ctx)
    return torch.stack(models)


def with_outliers(seed=0):
    """7 honest peers near 1.0 and 3 Byzantine peers (1, 4, 8) at ±1e3."""
    generator = torch.Generator().manual_seed(seed)
    theta = 1.0 + 0.05 * torch.randn(N, D, generator=generator, dtype=torch.float64)
    bad = torch.tensor([1, 4, 8])
    signs = torch.randint(0, 2, (3, D), generator=generator).double() * 2 - 1
    theta[bad] = 1e3 * signs
    honest = torch.ones(N, dtype=torch.bool).index_fill_(0, bad, False)
    return theta, honest


def rows(*points):
    """One neighbourhood of the given points: values [1, M, D], mask [1, M]."""
    values = torch.tensor(points, dtype=torch.float64)[None]
    return values, torch.ones(values.shape[:2], dtype=torch.bool)


def test_robust_rules_are_registered_as_robust():
    for name in ["median", "trimmed_mean", "krum", "multi_krum"]:
        assert issubclass(RULES.get(name), RobustRule)
        assert RULES.get(name).__doc__.splitlines()[0]


@pytest.mark.parametrize("spec", ROBUST)
@pytest.mark.parametrize("link_up", [1.0, 0.6])
def test_batched_and_per_peer_forms_agree(spec, link_up):
    ctx = context("erdos_renyi(p=0.5)", link_up=link_up)
    theta = params()
    rule, plan, batched = run_plan(spec, ctx, theta)
    torch.testing.assert_close(per_peer(rule, plan, theta, ctx), batched, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(batched, theta)


@pytest.mark.parametrize("spec", ["median", "krum(f=2)", "multi_krum(f=1, m=3)", "trimmed_mean(0.25)"])
def test_chunked_combine_equals_one_chunk(spec, monkeypatch):
    ctx, theta = context("erdos_renyi(p=0.5)"), params()
    _, _, whole = run_plan(spec, ctx, theta)
    monkeypatch.setattr(RobustRule, "chunk_elements", 3 * 8 * D)  # a few rows per chunk
    _, _, chunked = run_plan(spec, ctx, theta)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_robust_rules_count_transfers_like_consensus():
    for link_up in [1.0, 0.6]:
        sent = [
            run_plan(spec, context("complete", link_up=link_up), params())[1].models_sent() for spec in ROBUST
        ]
        consensus = run_plan("consensus", context("complete", link_up=link_up), params())[1].models_sent()
        assert set(sent) == {consensus}


@pytest.mark.parametrize("spec", ["median", "trimmed_mean(0.3)", "krum", "krum(f=3)", "multi_krum(f=3, m=4)"])
def test_robust_rules_ignore_a_minority_of_outliers(spec):
    theta, honest = with_outliers()
    target = theta[honest].mean(0)
    _, _, out = run_plan(spec, context("complete"), theta)
    assert (out[honest] - target).abs().max() < 0.2
    _, _, averaged = run_plan("consensus", context("complete"), theta)
    assert (averaged[honest] - target).abs().max() > 50


def test_median_of_an_odd_set_is_torch_median():
    values = torch.randn(3, 9, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    counts = torch.tensor([9, 5, 7])
    mask = torch.arange(9)[None, :] < counts[:, None]
    out = RULES.create("median").aggregate(values, mask)
    for row, count in enumerate(counts.tolist()):
        torch.testing.assert_close(out[row], values[row, :count].median(0).values, rtol=0, atol=0)
    values, mask = rows([1.0, 5.0], [3.0, -2.0], [2.0, 0.0])
    torch.testing.assert_close(
        RULES.create("median").aggregate(values, mask), torch.tensor([[2.0, 0.0]]).double()
    )


def test_median_of_an_even_set_averages_the_two_middle_values():
    values, mask = rows([1.0], [10.0], [4.0], [2.0])
    torch.testing.assert_close(RULES.create("median").aggregate(values, mask), torch.tensor([[3.0]]).double())


def test_trimmed_mean_without_trimming_is_the_mean():
    theta = params(2)
    ctx = context("erdos_renyi(p=0.5)", link_up=0.6)
    _, plan, out = run_plan("trimmed_mean(0)", ctx, theta)
    heard = plan.steps[0].gather(theta)
    mean = (heard.values * heard.mask[..., None]).sum(1) / heard.mask.sum(1, keepdim=True)
    torch.testing.assert_close(out, mean)


def test_trimmed_mean_drops_the_extremes_of_each_coordinate():
    values, mask = rows([0.0, 9.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [100.0, -50.0])
    out = RULES.create("trimmed_mean(0.2)").aggregate(values, mask)  # drops 1 at each end of 5
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0]]).double())


def test_krum_picks_the_central_point():
    values, mask = rows([1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [10.0, 10.0])
    scores = krum_scores(values, mask, f=1)  # 3 nearest others: 1 + 1 + 1 for the centre
    assert scores[0].tolist()[:3] == pytest.approx([1 + 2 + 2, 1 + 2 + 2, 3])
    torch.testing.assert_close(
        RULES.create("krum").aggregate(values, mask), torch.tensor([[0.0, 0.0]]).double()
    )


def test_krum_breaks_ties_towards_the_first_candidate():
    values, mask = rows([5.0], [-5.0])
    torch.testing.assert_close(
        RULES.create("krum(f=0)").aggregate(values, mask), torch.tensor([[5.0]]).double()
    )


def test_krum_ties_go_to_the_lowest_peer_id_whatever_the_step_order():
    theta, ctx = params(3), context()
    row, senders, peer = torch.tensor([0, 0]), torch.tensor([7, 2]), torch.tensor([5])  # peer 7 listed first
    step = Mixing(row, senders, torch.ones(2), 1, peer, torch.tensor([0]))
    rule = RULES.create("krum(f=0)")  # two values: equal scores
    torch.testing.assert_close(rule.combine(theta, step, ctx), theta[2:3], rtol=0, atol=0)
    torch.testing.assert_close(apply_step_per_peer(rule, step, list(theta), ctx)[5], theta[2], rtol=0, atol=0)


@pytest.mark.parametrize("f", [0, 1, 3])
def test_multi_krum_with_one_model_is_krum(f):
    ctx, theta = context("erdos_renyi(p=0.5)", link_up=0.6), params(4)
    _, _, krum = run_plan(f"krum(f={f})", ctx, theta)
    _, _, multi = run_plan(f"multi_krum(f={f}, m=1)", context("erdos_renyi(p=0.5)", link_up=0.6), theta)
    torch.testing.assert_close(multi, krum, rtol=0, atol=0)


def test_multi_krum_of_everyone_is_the_mean():
    theta = params(5)
    _, _, out = run_plan(f"multi_krum(f=0, m={N})", context("complete"), theta)
    torch.testing.assert_close(out, theta.mean(0).expand(N, D))
    values, mask = rows([1.0], [2.0], [6.0])
    out = RULES.create("multi_krum(f=0, m=50)").aggregate(values, mask)  # m capped at n
    torch.testing.assert_close(out, torch.tensor([[3.0]]).double())


def test_variable_neighbourhood_sizes_on_a_star():
    theta = params(6)
    hub, leaves = theta[0], theta[1:]
    ctx = context("star")
    out = run_plan("median", ctx, theta)[2]
    torch.testing.assert_close(out[0], theta.median(0).values.add(theta.sort(0).values[N // 2]).div(2))
    torch.testing.assert_close(out[1:], (leaves + hub) / 2)  # a leaf hears itself and the hub
    out = run_plan("trimmed_mean(0.2)", ctx, theta)[2]
    middle = theta.sort(0).values[2 : N - 2].mean(0)
    torch.testing.assert_close(out[0], middle)
    torch.testing.assert_close(out[1:], (leaves + hub) / 2)  # ⌊0.2·2⌋ = 0: nothing dropped
    out = run_plan("krum", ctx, theta)[2]
    torch.testing.assert_close(out[1:], hub.expand(N - 1, D))  # two equal scores: the lower peer id
    assert any(torch.equal(out[0], model) for model in theta)
    rule, plan, batched = run_plan("multi_krum(f=0, m=3)", ctx, theta)
    torch.testing.assert_close(batched[1:], (leaves + hub) / 2)  # m capped at the leaf's 2 values
    torch.testing.assert_close(per_peer(rule, plan, theta, ctx), batched, rtol=1e-12, atol=1e-12)


def test_nan_models_are_outvoted():
    theta, honest = with_outliers(1)
    theta[4] = float("nan")
    target = theta[honest].mean(0)
    for spec in ["median", "trimmed_mean(0.3)", "krum(f=3)", "multi_krum(f=3, m=4)"]:
        out = run_plan(spec, context("complete"), theta)[2]
        assert (out[honest] - target).abs().max() < 0.2, spec


def test_krum_scores_rank_padding_last():
    values = torch.tensor([[[0.0], [1.0], [0.0]], [[0.0], [3.0], [7.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    scores = krum_scores(values, mask, f=0)
    assert scores[0, 2].isnan() and scores[0, :2].tolist() == [1.0, 1.0]
    torch.testing.assert_close(krum_mean(values, mask, scores, 3), torch.tensor([[0.5], [10 / 3]]).double())


def test_fedavg_median_gives_everyone_the_median_of_the_sampled_clients():
    ctx, theta = context(), params(7)
    rule, plan, out = run_plan("fedavg(aggregator='median')", ctx, theta)
    torch.testing.assert_close(out, theta.quantile(0.5, dim=0).expand(N, D))
    assert plan.models_sent() == 2 * N
    rule, plan, out = run_plan("fedavg(fraction=0.5, aggregator='median')", ctx, theta)
    clients = plan.trainers.nonzero().flatten()
    assert clients.numel() == 5
    torch.testing.assert_close(out, theta[clients].median(0).values.expand(N, D))
    torch.testing.assert_close(per_peer(rule, plan, theta, ctx), out, rtol=0, atol=0)


def test_fedavg_robust_aggregator_ignores_an_outlier_client():
    ctx = context()
    theta = 1.0 + 0.05 * torch.randn(N, D, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    theta[3] = 1e6
    for aggregator in ["median", "trimmed_mean(0.1)", "krum(f=1)", "multi_krum(f=1, m=5)"]:
        _, _, out = run_plan({"name": "fedavg", "aggregator": aggregator}, ctx, theta)
        assert (out - 1.0).abs().max() < 0.2, aggregator
    _, _, out = run_plan("fedavg", ctx, theta)
    assert (out - 1.0).abs().min() > 1e4


@pytest.mark.parametrize("aggregator", ["consensus", "nope", "trimmed_mean(0.7)", "median(", "mean(1)"])
def test_fedavg_rejects_an_aggregator_that_is_not_a_robust_rule(aggregator):
    with pytest.raises(ValidationError, match="aggregator"):
        RULES.create({"name": "fedavg", "aggregator": aggregator})


def test_fedavg_aggregator_is_stored_in_full():
    assert RULES.create("fedavg(aggregator='trimmed_mean(0.1)')").aggregator == "trimmed_mean(beta=0.1)"
    rule = RULES.create("fedavg(aggregator=' krum ')")
    assert rule.spec() == {"name": "fedavg", "fraction": 1.0, "aggregator": "krum(f=1)"}
    assert RULES.create(rule.spec()) == rule


def test_fedavg_default_is_still_the_sample_weighted_mean():
    ctx, theta = context(), params(9)
    rule, _, out = run_plan("fedavg", ctx, theta)
    assert rule.aggregator == "mean"
    sizes = ctx.n_samples.double()
    expected = (sizes[:, None] * theta).sum(0) / sizes.sum()
    torch.testing.assert_close(out, expected.expand(N, D))
