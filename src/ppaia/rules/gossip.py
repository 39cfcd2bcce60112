"""Pairwise gossip: random pairs of linked peers replace their models by the pair's average."""

from __future__ import annotations

import torch
from pydantic import Field

from ppaia.rules.base import MAX_PLAN_STEPS, RULES, CooperationRule, RoundContext, RoundPlan
from ppaia.topology.mixing import Mixing


def disjoint_layers(pairs: torch.Tensor) -> list[torch.Tensor]:
    """Cut a sequence of pairs ([P, 2]) into consecutive runs in which no peer appears twice.

    Pairs within a run touch different peers, so averaging them all at once equals averaging them one
    after the other; the sequence's order between runs is kept.
    """
    layers, start, seen = [], 0, set()
    for index, (u, v) in enumerate(pairs.tolist()):
        if u in seen or v in seen:
            layers.append(pairs[start:index])
            start, seen = index, set()
        seen.update((u, v))
    if start < len(pairs):
        layers.append(pairs[start:])
    return layers


def pair_average(layer: torch.Tensor) -> Mixing:
    """Both peers of each pair receive ½·(θ_u + θ_v)."""
    targets = layer.T.flatten()  # all u's then all v's; each receives its own row
    rows = torch.arange(targets.numel())
    partners = layer.flip(1).T.flatten()
    half = torch.full((2 * rows.numel(),), 0.5, dtype=torch.float64)
    return Mixing(rows.repeat(2), torch.cat([targets, partners]), half, rows.numel(), targets, rows)


@RULES.register("gossip")
class Gossip(CooperationRule):
    """`pairs` random pairwise averagings per round over links that are up (default: peers // 2).

    Each averaging picks a live link uniformly at random (with replacement), in sequence.
    """

    pairs: int | None = Field(default=None, ge=1, le=MAX_PLAN_STEPS)

    def plan(self, ctx: RoundContext) -> RoundPlan:
        live = ctx.live_graph()
        if live.edges.shape[1] == 0:
            return RoundPlan()
        count = self.pairs or max(1, ctx.n_peers // 2)
        chosen = torch.randint(live.edges.shape[1], (count,), generator=ctx.generator)
        steps = [pair_average(layer) for layer in disjoint_layers(live.edges[:, chosen].T)]
        return RoundPlan(steps=steps)
