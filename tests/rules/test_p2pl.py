"""P2PL: K consensus steps with its own row-stochastic weights; batched form == per-peer form."""

import pydantic
import pytest
import rule_cases
import torch
from rule_cases import N

from ppaia.rules import RULES, apply_plan, apply_step_per_peer
from ppaia.topology import MIXINGS, mixing_step


def context(topology="erdos_renyi(p=0.4)", link_up=1.0, mixing="metropolis", seed=0):
    return rule_cases.context(topology, mixing, link_up, seed=seed)


def dense(step) -> torch.Tensor:
    return torch.zeros(step.n_rows, N, dtype=torch.float64).index_put_(
        (step.rows, step.senders), step.weights.double(), True
    )


@pytest.mark.parametrize("weights", ["uniform", "data_size"])
@pytest.mark.parametrize("link_up", [1.0, 0.5])
def test_batched_and_per_peer_forms_agree(weights, link_up):
    ctx = context(link_up=link_up)
    theta = rule_cases.params()
    rule = RULES.create(f"p2pl(steps=3, weights={weights!r})")
    plan = rule.plan(ctx)
    batched = apply_plan(rule, plan, theta.clone(), ctx)
    models = list(theta.clone())
    for step in plan.steps:
        models = apply_step_per_peer(rule, step, models, ctx)
    torch.testing.assert_close(torch.stack(models), batched, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weights", ["uniform", "data_size"])
def test_uses_its_own_weights_not_the_configured_mixing(weights):
    ctx = context(mixing="metropolis")
    plan = RULES.create(f"p2pl(weights={weights!r})").plan(ctx)
    expected = mixing_step(MIXINGS.create(weights), ctx.graph, ctx.n_samples)
    torch.testing.assert_close(dense(plan.steps[0]), dense(expected))


def test_steps_are_row_but_not_column_stochastic_on_a_star():
    ctx = context("star")
    plan = RULES.create("p2pl(steps=2, weights='data_size')").plan(ctx)
    for step in plan.steps:
        matrix = dense(step)
        assert (matrix >= 0).all()
        torch.testing.assert_close(matrix.sum(1), torch.ones(N, dtype=torch.float64))
        assert not torch.allclose(matrix.sum(0), torch.ones(N, dtype=torch.float64))


@pytest.mark.parametrize("steps", [1, 4])
def test_k_steps_per_round(steps):
    ctx = context("ring")
    plan = RULES.create(f"p2pl({steps})").plan(ctx)
    assert len(plan.steps) == steps and plan.trainers is None
    assert plan.models_sent() == steps * 2 * N


@pytest.mark.parametrize("spec", ["p2pl(weights='metropolis')", "p2pl(steps=0)"])
def test_invalid_options_name_the_option(spec):
    with pytest.raises(pydantic.ValidationError, match="weights" if "weights" in spec else "steps"):
        RULES.create(spec)


def test_reports_the_local_phase():
    assert RULES.create("p2pl").reports_local_phase
    assert not RULES.create("consensus").reports_local_phase
