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
from ppaia.seeding import Stream, derive_seed, generator, peer_normal

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
    key: int  # this round's draws: each attacker's come from its own stream under it (see `normal`)

    def normal(self) -> torch.Tensor:
        """Standard normals ``[A, D]``, row k from attacker ``peers[k]``'s own counter-based stream: an
        attacker draws the same alone (a networked peer) as among all attackers (the simulator). Drawn
        on the host, as every keyed draw is, so a seed sends the same noise from any device."""
        trained = self.trained
        return peer_normal(self.key, self.peers, trained.shape[1], trained.dtype).to(trained.device)


class Attack(Component):
    """What attackers send (and, optionally, train on) instead of following the protocol."""

    trains: ClassVar[bool] = True  # False: attackers skip local training

    def memory(self) -> int:
        """How many past rounds of trained parameters the attack needs to remember."""
        return 0

    def relabel(self, labels: torch.Tensor, n_classes: int, randomness: torch.Generator) -> torch.Tensor:
        """The labels attackers train on (unchanged unless the attack poisons data).

        `randomness` is the run's one attack stream, the same for every attacker and for any set of them
        poisoned together: draw from it only choices the attackers share (LabelFlip's shift), never one
        number per label, or an attacker's labels would depend on which others are relabelled with it.
        """
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
    peers: torch.Tensor | None = None  # the attackers' peer ids in row order (their rows when None)
    past: deque = field(init=False)

    def __post_init__(self) -> None:
        if self.peers is None:
            self.peers = self.attackers.nonzero().flatten()
        self.reset()

    def reset(self) -> None:
        """Forget the models remembered in an earlier run."""
        self.past = deque(maxlen=max(1, self.attack.memory()))

    def to(self, device: torch.device) -> Adversary:
        """The attackers' initial models (what a stale attacker may send) moved to `device`, in place; the
        mask and ids stay on the host, with the rest of the round's plan."""
        self.initial = self.initial.to(device)
        return self

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
        rows = self.attackers.to(params.device)
        trained = params[rows]
        now = AttackRound(
            round_,
            self.peers,
            trained,
            held,
            self.initial,
            tuple(self.past),
            derive_seed(self.seed, Stream.ATTACK, 2, round_),
        )
        params[rows] = self.attack.message(now)
        if self.attack.memory():
            self.past.append(trained)
        return params
