"""The learning half of a networked peer: its slice of the experiment, local training and the rule.

No sockets here. A peer builds only its own slice of the experiment (:meth:`Setup.peer`: its share of
the config's dataset, split by seed as the simulator splits it; or :meth:`Setup.own`: data it brings),
runs the local half of each round with the simulator's own code (:class:`LocalPhase`: same data order,
optimizer step, DP noise and accounting, EWC anchor, attack) on its one row, and applies the rule's own
per-peer form (:meth:`Mixing.for_peer` + :meth:`CooperationRule.combine`) to its own parameters plus
the ones it received. With every model received, the numbers are the simulator's.

Missing models (a neighbour that is down or too slow) are left out of the step: for linear averaging
their weight goes to the peer's own model (so the row still sums to what it did), for other rules
(robust aggregation, learned trust) the step simply runs over what arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ppaia.config import ConfigError, ExperimentConfig
from ppaia.experiment import OwnData, Setup
from ppaia.experiment.local import LocalPhase, round_context
from ppaia.network.checkpoint import CheckpointError, LearnerState
from ppaia.privacy import PrivacyError
from ppaia.rules import CooperationRule, RoundContext, RuleStateError
from ppaia.topology.mixing import Mixing

__all__ = ["PeerLearner", "StepRole", "check_supported", "step_role", "unsupported"]


def check_supported(config: ExperimentConfig) -> None:
    """ConfigError naming everything in `config` a networked peer cannot run."""
    problems = unsupported(config)
    if problems:
        raise ConfigError(f"a networked peer does not support {', '.join(problems)}")


def unsupported(config: ExperimentConfig) -> list[str]:
    """What of `config` a networked peer cannot run (empty: all of it)."""
    problems = []
    if config.rule.pooled:
        problems.append(f"rule {config.rule.name!r} (it pools all data on one model)")
    if type(config.rule).prepare is not CooperationRule.prepare:  # FLoBC: trainers start from old versions
        problems.append(f"rule {config.rule.name!r} (it runs in the simulator and, for FLoBC, on the ledger)")
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
    """One peer's slice of the experiment, its local phase and its rule, built from the config and seed."""

    def __init__(self, config: ExperimentConfig, peer: int, own: OwnData | None = None) -> None:
        check_supported(config)
        self.config = config
        self.peer = peer
        self.setup = Setup.peer(config, peer) if own is None else Setup.own(config, peer, own)
        self.rule: CooperationRule = self.setup.rule
        self.rule.reset(self.setup.n_peers, self.setup.ids)  # its own row of any per-receiver state
        self.layout = self.setup.layout
        self.params = self.setup.params[0].clone()
        self.phase = LocalPhase(self.setup)
        self._planned: torch.Tensor | None = None  # the rule's trainers of the round being run

    @property
    def n_peers(self) -> int:
        return self.setup.n_peers

    def context(self, round_: int) -> RoundContext:
        return round_context(self.setup, round_)

    def roles(self, ctx: RoundContext) -> tuple[bool, list[StepRole]]:
        """Whether this peer runs the local phase in round `ctx.round` (always: who of its rows trains,
        spends privacy or attacks is the local phase's call), and its part in each mixing step."""
        plan = self.rule.plan(ctx)
        self._planned = plan.trainers
        return True, [step_role(step, self.peer) for step in plan.steps]

    def train(self, round_: int) -> None:
        """The local half of round `round_` for this peer's row, as the simulator runs it (after
        :meth:`roles` for the round): training, DP, EWC, and — for an attacker — what it sends."""
        phase = self.phase
        phase.enter(round_)
        trainers = phase.trainers(self._planned, round_)
        params, held = phase.train(self.params.unsqueeze(0).clone(), round_, trainers)
        self.params = phase.send(params, held, round_)[0].clone()

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
        """Accuracy and loss of this peer's model on its test set (the config's, its own, or its
        held-out share)."""
        accuracy, loss = self.setup.evaluator(self.params.unsqueeze(0))
        return float(accuracy[0]), float(loss[0])

    def epsilon(self) -> float | None:
        """The privacy this peer has spent so far (None without DP)."""
        privacy = self.phase.privacy
        return None if privacy is None else float(privacy.epsilon()[0])

    def state(self, ids: list[str | None]) -> LearnerState:
        """What this peer learned besides its model, for its checkpoint: its rule's state keyed by the
        partner id playing each index (`ids`), and its accountant's."""
        privacy = self.phase.privacy
        return LearnerState(
            rule=self.rule.peer_state(self.peer, ids),
            privacy=None if privacy is None else privacy.state_dict(),
        )

    def load_state(self, state: LearnerState, ids: list[str | None]) -> None:
        """Resume what :meth:`state` saved; CheckpointError if it does not fit this peer's config."""
        privacy = self.phase.privacy
        try:
            self.rule.load_peer_state(self.peer, ids, state.rule)
            if (state.privacy is None) != (privacy is None):
                raise PrivacyError("the checkpoint's privacy state does not match this peer's privacy")
            if privacy is not None:
                privacy.load_state_dict(state.privacy)
        except (RuleStateError, PrivacyError) as err:
            raise CheckpointError(f"peer {self.peer}: its saved learner state does not fit: {err}") from None

    def describe_state(self, ids: list[str | None]) -> str:
        """``, with trust in 3 partners (mean 0.210) and epsilon 1.234 spent``: what a resume brought
        back, for the log."""
        trust = self.rule.peer_state(self.peer, ids)
        parts = []
        if trust:
            parts.append(f"trust in {len(trust)} partners (mean {sum(trust.values()) / len(trust):.3f})")
        if (epsilon := self.epsilon()) is not None:
            parts.append(f"epsilon {epsilon:.3f} spent")
        return f", with {' and '.join(parts)}" if parts else ""

    def catch_up(self, models: dict[int, torch.Tensor], round_: int) -> torch.Tensor:
        """This peer's model from the others' round-`round_` results after it missed rounds: its own
        part of that round's plan, run over them (learned trust weighs its partners by its trust; a
        broadcast adopts the server's result), not a plain mean. Its own model when the plan gives it
        nothing it has."""
        ctx = self.context(round_)
        for role in self.roles(ctx)[1]:
            if role.server is not None and role.server in models:
                return models[role.server]
            if role.row is not None:
                return self.combine(role.row, models, ctx)
        return self.params

    def tensors(self, params: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named tensors of `params` (default: this peer's), as they travel and are checkpointed."""
        return self.layout.unflatten(self.params if params is None else params)
