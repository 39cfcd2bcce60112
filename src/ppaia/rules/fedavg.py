"""FedAvg: the server baseline."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, PrivateAttr, ValidationError, field_validator

from ppaia.registry import SpecError
from ppaia.rules.base import RULES, CooperationRule, RoundContext, RoundPlan
from ppaia.topology.mixing import Mixing, MixingWeights


@RULES.register("fedavg")
class FedAvg(CooperationRule):
    """A server averages the models of a random `fraction` of peers, weighted by sample count.

    Everyone starts from the server's model; each round the sampled clients train from the current
    global model, the server forms their sample-weighted mean and every peer receives it. With
    `aggregator` set to a robust rule (``"median"``, ``"trimmed_mean(0.1)"``, ``"krum(f=2)"``, ...) the
    server forms that rule's aggregate of the clients' models instead (sample counts are then ignored);
    the spec is stored in its full form, e.g. ``"trimmed_mean(beta=0.1)"``.
    """

    uses_topology: ClassVar[bool] = False
    broadcasts_initial: ClassVar[bool] = True  # the server's initial model is everyone's

    fraction: float = Field(default=1.0, gt=0, le=1)
    aggregator: str = "mean"

    _robust: CooperationRule | None = PrivateAttr(default=None)

    @field_validator("aggregator")
    @classmethod
    def _robust_aggregator(cls, value: str) -> str:
        from ppaia.rules.robust import RobustRule  # lazy: no module-level cycle between the two

        value = value.strip()
        if value == "mean":
            return value
        robust = ", ".join(name for name, rule in RULES if issubclass(rule, RobustRule))
        try:
            rule = RULES.create(value)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ValueError(f"{value!r}: {problems}") from None
        except SpecError as err:
            raise ValueError(f"{err} (expected 'mean' or a robust rule: {robust})") from None
        if not isinstance(rule, RobustRule):
            raise ValueError(f"{rule.name!r} is not a robust rule; expected 'mean' or one of: {robust}")
        return rule.label()

    def robust_aggregator(self) -> CooperationRule | None:
        """The robust rule whose aggregate the server forms; None for the sample-weighted mean."""
        if self._robust is None and self.aggregator != "mean":
            self._robust = RULES.create(self.aggregator)
        return self._robust

    def linear(self) -> bool:
        return self.aggregator == "mean"

    def reads_sample_counts(self, mixing: MixingWeights) -> bool:
        return self.aggregator == "mean"  # the sample-weighted mean; a robust aggregate ignores counts

    def clients(self, ctx: RoundContext) -> torch.Tensor:
        count = max(1, round(self.fraction * ctx.n_peers))
        return torch.randperm(ctx.n_peers, generator=ctx.generator)[:count].sort().values

    def plan(self, ctx: RoundContext) -> RoundPlan:
        clients = self.clients(ctx)
        sizes = ctx.n_samples[clients].double()
        server_row = torch.zeros_like(clients)
        every = torch.arange(ctx.n_peers)
        aggregate = Mixing(server_row, clients, sizes / sizes.sum(), 1, every, torch.zeros_like(every))
        trainers = torch.zeros(ctx.n_peers, dtype=torch.bool).index_fill_(0, clients, True)
        # each client downloads the global model and uploads its own
        return RoundPlan(trainers=trainers, steps=[aggregate], transfers=2 * clients.numel())

    def combine(self, params: torch.Tensor, step: Mixing, ctx: RoundContext) -> torch.Tensor:
        robust = self.robust_aggregator()
        # the server's single row gathers the sampled clients' models; every peer receives the result
        return step.weighted_sum(params) if robust is None else robust.combine(params, step, ctx)
