"""Shared helpers for the rule tests: a small round context, stacked parameters, and a batched run."""

import torch

from ppaia.rules import RULES, RoundContext, apply_plan
from ppaia.topology import MIXINGS, TOPOLOGIES, build_graph

N, D = 10, 7


def context(topology="ring", mixing="metropolis", link_up=1.0, round_=1, seed=0):
    """Round `round_` on N peers of `topology` (built with seed 3), sample counts 5, 10, ..., 50."""
    graph = build_graph(TOPOLOGIES.create(topology), N, seed=3)
    sizes = torch.arange(1, N + 1) * 5
    randomness = torch.Generator().manual_seed(seed)
    return RoundContext(round_, graph, sizes, MIXINGS.create(mixing), link_up, randomness)


def params(seed=0):
    return torch.randn(N, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_plan(spec, ctx, theta):
    """Plan a round of rule `spec` and run it batched; returns (rule, plan, new parameters)."""
    rule = RULES.create(spec)
    plan = rule.plan(ctx)
    return rule, plan, apply_plan(rule, plan, theta.clone(), ctx)
