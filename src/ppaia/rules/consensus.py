"""Consensus averaging over the topology: θ ← W θ, K times per round."""

from __future__ import annotations

from pydantic import Field

from ppaia.rules.base import MAX_PLAN_STEPS, RULES, CooperationRule, RoundContext, RoundPlan
from ppaia.topology.mixing import mixing_step


@RULES.register("consensus")
class Consensus(CooperationRule):
    """K averaging steps θ ← Wθ per round with the configured mixing weights over the links that are up."""

    steps: int = Field(default=1, ge=1, le=MAX_PLAN_STEPS)

    def plan(self, ctx: RoundContext) -> RoundPlan:
        step = mixing_step(ctx.mixing, ctx.live_graph(), ctx.n_samples)
        return RoundPlan(steps=[step] * self.steps)
