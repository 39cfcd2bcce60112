"""P2PL (Pranav & Moura): E local epochs, then K consensus steps with row-stochastic weights."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from ppaia.rules.base import RULES, RoundContext, RoundPlan
from ppaia.rules.consensus import Consensus
from ppaia.topology.mixing import MIXINGS, MixingWeights


@RULES.register("p2pl")
class P2PL(Consensus):
    """P2PL: local epochs, then K consensus steps with row-stochastic weights over the live links.

    The local epochs are the config's `local_epochs`; the config's `mixing` is not used. Pair it with
    the `max_norm` init policy for P2PL's max-norm synchronization of the initial models.
    """

    weights: Literal["uniform", "data_size"] = "uniform"

    reports_local_phase: ClassVar[bool] = True

    def reads_sample_counts(self, mixing: MixingWeights) -> bool:
        return self.weights == "data_size"  # its own weights, not the config's mixing

    def plan(self, ctx: RoundContext) -> RoundPlan:
        return super().plan(dataclasses.replace(ctx, mixing=MIXINGS.create(self.weights)))
