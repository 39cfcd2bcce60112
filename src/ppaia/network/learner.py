"""The learning half of a networked peer: its share of the experiment, local training and the rule.

No sockets here. A peer builds the experiment exactly as the simulator does (the dataset, the split by
seed, the topology and the initial models are all derived from the config and its seed), keeps only its
own row, trains it with the simulator's trainer (same data order, same optimizer step) and applies the
rule's own per-peer form (:meth:`Mixing.for_peer` + :meth:`CooperationRule.combine`) to its own
parameters plus the ones it received. With every model received, the numbers are the simulator's.

Missing models (a neighbour that is down or too slow) are left out of the step: for linear averaging
their weight goes to the peer's own model (so the row still sums to what it did), for other rules
(robust aggregation, learned trust) the step simply runs over what arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ppaia.config import ExperimentConfig
from ppaia.rules import CooperationRule, RoundContext
from ppaia.simulation.engine import Simulation
from ppaia.topology.mixing import Mixing

__all__ = ["PeerLearner", "StepRole", "check_supported", "step_role", "unsupported"]


def check_supported(config: ExperimentConfig) -> None:
    """ValueError naming everything in `config` a networked peer cannot run."""
    problems = unsupported(config)
    if problems:
        raise ValueError(f"a networked peer does not support {', '.join(problems)}")


def unsupported(config: ExperimentConfig) -> list[str]:
    """What of `config` a networked peer cannot run (empty: all of it)."""
    problems = []
    if config.rule.pooled:
        problems.append(f"rule {config.rule.name!r} (it pools all data on one model)")
    if type(config.rule).prepare is not CooperationRule.prepare:  # FLoBC: trainers start from old versions
        problems.append(f"rule {config.rule.name!r} (it runs in the simulator and, for FLoBC, on the ledger)")
    if config.attack is not None:
        problems.append("attack (run attackers as separate misbehaving processes instead)")
    if config.privacy is not None:
        problems.append("privacy")
    if config.ewc is not None or config.tasks:
        problems.append("ewc/tasks")
    return problems


@dataclass(frozen=True)
class StepRole:
    """What this peer does in one mixing step: nothing, compute its row, or fetch a server's result.

    A broadcast step (one result row written to several peers, like FedAvg's server average) is
    computed once, by the row's *server* — the smallest peer id the row is written to — and the other
    peers of the row fetch the server's result.
    """

    row: Mixing | None  # the row this peer computes (None: it computes nothing in this step)
    server: int | None = None  # set when this peer fetches the step's result from that peer instead

    @property
    def senders(self) -> list[int]:
        """Peers whose models this peer needs for the step (its own included, if it is a sender)."""
        return [] if self.row is None else self.row.sender_ids.tolist()


def step_role(step: Mixing, peer: int) -> StepRole:
    """`peer`'s part in `step` (see :class:`StepRole`)."""
    hit = (step.targets == peer).nonzero()
    if hit.numel() == 0:
        return StepRole(None)
    result_row = step.target_rows[hit[0, 0]]
    server = int(step.targets[step.target_rows == result_row].min())
    if server != peer:
        return StepRole(None, server)
    return StepRole(step.for_peer(peer))


class PeerLearner:
    """One peer's model, data and rule, built from the shared config and seed."""

    def __init__(self, config: ExperimentConfig, peer: int) -> None:
        check_supported(config)
        if not 0 <= peer < config.peers:
            raise ValueError(f"partition: peer index {peer} is not in 0..{config.peers - 1}")
        self.config = config
        self.peer = peer
        self.simulation = Simulation(config)
        self.rule: CooperationRule = self.simulation.rule
        self.rule.reset(self.simulation.n_peers)
        self.layout = self.simulation.layout
        self.params = self.simulation.params[peer].clone()

    @property
    def n_peers(self) -> int:
        return self.simulation.n_peers

    def context(self, round_: int) -> RoundContext:
        return self.simulation.round_context(round_)

    def roles(self, ctx: RoundContext) -> tuple[bool, list[StepRole]]:
        """Whether this peer trains in round `ctx.round`, and its part in each of the round's steps."""
        plan = self.rule.plan(ctx)
        trains = plan.trainers is None or bool(plan.trainers[self.peer])
        return trains, [step_role(step, self.peer) for step in plan.steps]

    def train(self, round_: int) -> None:
        """One round of local training of this peer's model, as the simulator trains its row."""
        params = self.params.expand(self.n_peers, -1).clone()
        mask = torch.zeros(self.n_peers, dtype=torch.bool)
        mask[self.peer] = True
        self.params = self.simulation.train(params, round_, mask)[self.peer].clone()

    def combine(self, row: Mixing, received: dict[int, torch.Tensor], ctx: RoundContext) -> torch.Tensor:
        """This peer's result of a step from the models it has (own included); missing senders dropped."""
        have = {**received, self.peer: self.params}
        available = torch.tensor([int(s) in have for s in row.sender_ids.tolist()])
        if not bool(available.any()):
            return self.params
        if not bool(available.all()):
            row = row.restricted(available, self.peer)
        stacked = torch.stack([have[int(s)] for s in row.sender_ids.tolist()])
        return self.rule.combine(stacked, row, ctx)[0]

    def evaluate(self) -> tuple[float, float]:
        """Test accuracy and loss of this peer's model on the shared test set."""
        accuracy, loss = self.simulation.evaluator(self.params.unsqueeze(0))
        return float(accuracy[0]), float(loss[0])

    def tensors(self, params: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named tensors of `params` (default: this peer's), as they travel and are checkpointed."""
        return self.layout.unflatten(self.params if params is None else params)
