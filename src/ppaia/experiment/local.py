"""The local half of a round, for the rows an executor holds: written once for the simulator and a peer.

Before peers cooperate, each round: the current task's data comes in (continual learning), EWC's
anchor is renewed, the rule's trainers are narrowed to those that may train (attackers that do not,
peers whose privacy budget is spent), they train, DP releases and accounts for the update, and
attackers replace what they send. The simulator runs this for all peers at once, a networked peer for
its own row; both through :class:`LocalPhase`, so a peer's numbers are its row of the simulator's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ppaia.experiment.setup import Setup
from ppaia.learning.ewc import Anchor, fisher_diagonal
from ppaia.learning.local import PrivateSteps
from ppaia.rules import RoundContext
from ppaia.seeding import Stream, derive_seed, generator

__all__ = ["LocalPhase", "TrainFn", "round_context"]

TrainFn = Callable[[torch.Tensor, int, torch.Tensor, Anchor | None, PrivateSteps | None], torch.Tensor]


def round_context(setup: Setup, round_: int) -> RoundContext:
    """What the rule sees in round `round_`: the topology, sample counts, and the round's randomness."""
    cfg = setup.config
    return RoundContext(
        round_,
        setup.graph,
        setup.counts,
        cfg.mixing,
        cfg.link_up,
        generator(cfg.seed, Stream.RULE, round_),
        setup.learner,
    )


class LocalPhase:
    """Task switches, EWC anchor, who trains, training, DP and attacks for the rows of `setup`.

    `train` is the training step (default: the batched trainer; the reference executor passes its
    per-peer loop). The DP accountants (`privacy`) and the EWC anchor are state carried across rounds;
    :meth:`state_dict` / :meth:`load_state_dict` let a restarted peer resume them.
    """

    def __init__(self, setup: Setup, train: TrainFn | None = None) -> None:
        self.setup = setup
        self._train = train or self._batched
        self.privacy = setup.private_training()
        self.anchor: Anchor | None = None
        if setup.adversary is not None:
            setup.adversary.reset()

    def _batched(self, params, round_, trainers, anchor, private) -> torch.Tensor:
        return self.setup.trainer.train(params, round_, trainers, anchor=anchor, private=private)

    def enter(self, round_: int) -> None:
        """Switch every row to the current task's data when tasks change."""
        setup = self.setup
        if setup.schedule and (round_ == 1 or setup.schedule.starts_task(round_)):
            setup.data = setup.trainer.data = setup.task_data[setup.schedule.task_of(round_)]
            if self.privacy is not None:
                self.privacy.use_counts(setup.data.counts)

    def trainers(self, planned: torch.Tensor | None, round_: int) -> torch.Tensor:
        """The rows that train this round: the rule's plan (None: all; indexed by peer id), less
        attackers that do not train and peers whose privacy budget is spent."""
        setup = self.setup
        trainers = torch.ones(len(setup.ids), dtype=torch.bool) if planned is None else planned[setup.ids]
        if setup.adversary is not None:
            trainers = setup.adversary.trainers(trainers)
        if self.privacy is not None:
            trainers = self.privacy.allowed(trainers, round_)
        return trainers

    def train(
        self, params: torch.Tensor, round_: int, trainers: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Train the rows `trainers` from `params` (DP released and accounted for); returns the new
        parameters and, when attackers or update-level DP need them, those before training."""
        setup, privacy = self.setup, self.privacy
        self.anchor = self._renew_anchor(params, round_)
        needs_held = setup.adversary is not None or (privacy is not None and privacy.releases_updates)
        held = params.clone() if needs_held else None
        params = self._train(params, round_, trainers, self.anchor, privacy and privacy.private_steps())
        if privacy is not None:
            params = privacy.release(held, params, trainers, round_)
            privacy.spend(trainers)
        return params, held

    def send(self, params: torch.Tensor, held: torch.Tensor | None, round_: int) -> torch.Tensor:
        """What the rows send to the others: attackers' rows replaced by their attack's message."""
        adversary = self.setup.adversary
        if adversary is None:
            return params
        return adversary.send(params, held[adversary.attackers], round_)

    def _renew_anchor(self, params: torch.Tensor, round_: int) -> Anchor | None:
        """EWC's θ* and Fisher: at every round's start, or at the end of each finished task."""
        setup = self.setup
        ewc = setup.config.ewc
        if ewc is None:
            return None
        if ewc.anchor == "task":
            if not setup.schedule.starts_task(round_):
                return self.anchor
            data = setup.task_data[setup.schedule.task_of(round_) - 1]  # the task just finished
        else:
            data = setup.data
        fisher = fisher_diagonal(
            setup.model,
            params,
            data,
            torch.arange(len(setup.ids)),
            samples=ewc.samples,
            mode=ewc.fisher,
            key=derive_seed(setup.config.seed, Stream.FISHER, round_),
        )
        return Anchor(ewc.strength, fisher, params.clone())
