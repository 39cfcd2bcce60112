"""Byzantine peers: which peers attack, and the attack API the simulator applies to them.

An attack changes what an attacker *sends* after its local phase (and, for data poisoning, what it
trains on); honest peers never know who is honest. Metrics over honest peers leave attackers out.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ppaia.registry import Component, Registry
from ppaia.seeding import Stream, generator

__all__ = ["ATTACKS", "Adversary", "Attack", "AttackRound", "attacker_count", "choose_attackers"]


@dataclass(frozen=True)
class AttackRound:
    """What the attackers know when they choose their messages in one round (rows = attackers)."""

    round: int
    peers: torch.Tensor  # the attackers' peer ids, in row order
    trained: torch.Tensor  # their parameters after this round's local phase
    held: torch.Tensor  # their parameters before it (what they were sent and kept last round)
    initial: torch.Tensor  # their initial parameters
    past: tuple[torch.Tensor, ...]  # their trained parameters of earlier rounds, oldest first
    generator: torch.Generator


class Attack(Component):
    """What attackers send (and, optionally, train on) instead of following the protocol."""

    trains: ClassVar[bool] = True  # False: attackers skip local training

    def memory(self) -> int:
        """How many past rounds of trained parameters the attack needs to remember."""
        return 0

    def relabel(self, labels: torch.Tensor, n_classes: int, randomness: torch.Generator) -> torch.Tensor:
        """The labels attackers train on (unchanged unless the attack poisons data)."""
        return labels

    def message(self, now: AttackRound) -> torch.Tensor:
        """The parameters each attacker sends this round ([A, D])."""
        return now.trained


ATTACKS: Registry[Attack] = Registry("attack")


def attacker_count(n_peers: int, fraction: float) -> int:
    """⌊fraction · n + ½⌋: the share of peers rounded half up."""
    return math.floor(fraction * n_peers + 0.5)


def choose_attackers(n_peers: int, attackers: float | list[int], seed: int) -> torch.Tensor:
    """A boolean mask of the attackers: :func:`attacker_count` peers chosen by the seed for a share,
    or exactly the listed peer ids."""
    if isinstance(attackers, list):
        return torch.zeros(n_peers, dtype=torch.bool).index_fill_(
            0, torch.tensor(attackers, dtype=torch.long), True
        )
    count = attacker_count(n_peers, attackers)
    chosen = torch.randperm(n_peers, generator=generator(seed, Stream.ATTACK))[:count]
    return torch.zeros(n_peers, dtype=torch.bool).index_fill_(0, chosen, True)


@dataclass
class Adversary:
    """The attackers of one run and the memory their attack needs."""

    attack: Attack
    attackers: torch.Tensor
    initial: torch.Tensor
    seed: int
    past: deque = field(init=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the models remembered in an earlier run."""
        self.past = deque(maxlen=max(1, self.attack.memory()))

    @property
    def honest(self) -> torch.Tensor:
        return ~self.attackers

    def poison(self, labels: torch.Tensor, samples: torch.Tensor, n_classes: int) -> torch.Tensor:
        """A copy of the label vector with the attackers' own `samples` relabelled by the attack."""
        poisoned = labels.clone()
        randomness = generator(self.seed, Stream.ATTACK, 1)
        poisoned[samples] = self.attack.relabel(labels[samples], n_classes, randomness)
        return poisoned

    def trainers(self, trainers: torch.Tensor | None) -> torch.Tensor | None:
        """The rule's trainers, less the attackers when the attack does not train."""
        if self.attack.trains:
            return trainers
        base = torch.ones_like(self.attackers) if trainers is None else trainers
        return base & self.honest

    def send(self, params: torch.Tensor, held: torch.Tensor, round_: int) -> torch.Tensor:
        """Replace the attackers' rows of `params` by the messages they send this round (in place)."""
        trained = params[self.attackers]
        now = AttackRound(
            round_,
            self.attackers.nonzero().flatten(),
            trained,
            held,
            self.initial,
            tuple(self.past),
            generator(self.seed, Stream.ATTACK, 2, round_),
        )
        params[self.attackers] = self.attack.message(now)
        if self.attack.memory():
            self.past.append(trained)
        return params
