"""FedAvg: the server baseline."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from ppaia.rules.base import RULES, CooperationRule, RoundContext, RoundPlan
from ppaia.topology.mixing import Mixing


@RULES.register("fedavg")
class FedAvg(CooperationRule):
    """A server averages the models of a random `fraction` of peers, weighted by sample count.

    Everyone starts from the server's model; each round the sampled clients train from the current
    global model, the server forms their sample-weighted mean and every peer receives it.
    """

    uses_topology: ClassVar[bool] = False

    fraction: float = Field(default=1.0, gt=0, le=1)

    def initialize(self, params: torch.Tensor) -> torch.Tensor:
        return params[:1].expand_as(params).clone()

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
