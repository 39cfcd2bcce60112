"""Churn: who is in an open swarm in each round, and whom each peer samples as partners.

``churn`` in a config gives a join/leave schedule, either explicitly per peer (``joins``, ``leaves``,
``returns``: the round each event takes effect) or as rates (``arrival``: each peer not yet in arrives
in a round with this probability; ``departure``: each peer in leaves with this one), or both (the
explicit rounds win for the peers they name). :meth:`Churn.alive` draws the whole schedule from the
seed once, so the simulator and ``ppaia launch --open`` run the same one.

In the simulator a peer out of the swarm neither trains nor mixes (its model stays as it was); one that
joins takes the mean of the live peers' models, as a joining peer of an open swarm starts from its
partners' models; one that comes back continues from the model it had, as a peer restarted with its data
directory resumes its checkpoint. Partners are sampled each round as an open swarm's peer samples its
view: every live peer picks ``partners`` random live peers, and the round's graph is the union of those
links (:func:`sampled_graph`), whatever the config's topology.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from ppaia.seeding import Stream, generator
from ppaia.topology.graphs import PeerGraph

if TYPE_CHECKING:  # the rules import the config, which imports this module
    from ppaia.rules import RoundContext, RoundPlan

__all__ = ["Churn", "ChurnRun", "adopt_joiners", "sampled_graph"]

Round = Annotated[int, Field(ge=1)]
Peer = Annotated[int, Field(ge=0)]


class Churn(BaseModel):
    """A join/leave schedule (see the module docstring). Peers named nowhere are in from round 1 unless
    the rates say otherwise; ``initial`` is the share of the other peers in at round 1 (the rest arrive
    at ``arrival``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    joins: dict[Peer, Round] = Field(default_factory=dict, description="peer -> the round it joins")
    leaves: dict[Peer, Round] = Field(default_factory=dict, description="peer -> the first round it is gone")
    returns: dict[Peer, Round] = Field(default_factory=dict, description="peer -> the round it comes back")
    initial: float = Field(default=1.0, ge=0, le=1, description="share of unnamed peers in at round 1")
    arrival: float = Field(default=0.0, ge=0, le=1, description="per round: chance a peer not yet in joins")
    departure: float = Field(default=0.0, ge=0, le=1, description="per round: chance a peer in leaves")
    partners: int = Field(default=3, ge=1, description="random live partners each peer samples a round")

    @field_serializer("joins", "leaves", "returns")
    def _keys_as_text(self, rounds: dict[int, int]) -> dict[str, int]:
        """Peer ids as TOML keys (text), read back as integers."""
        return {str(peer): round_ for peer, round_ in sorted(rounds.items())}

    @model_validator(mode="after")
    def _ordered(self) -> Churn:
        for peer, back in self.returns.items():
            gone = self.leaves.get(peer)
            if gone is None or back <= gone:
                raise ValueError(f"churn: peer {peer} returns in round {back} but leaves {gone} before it")
        for peer, gone in self.leaves.items():
            if gone <= self.joins.get(peer, 1):
                raise ValueError(f"churn: peer {peer} leaves in round {gone}, not after it joins")
        return self

    def check(self, peers: int) -> None:
        """ValueError naming a peer the schedule names beyond `peers`."""
        named = set(self.joins) | set(self.leaves) | set(self.returns)
        if named and max(named) >= peers:
            raise ValueError(f"churn: peer {max(named)} named, but there are {peers} peers")

    def alive(self, peers: int, rounds: int, seed: int) -> torch.Tensor:
        """Who is in the swarm in each round: bool [rounds + 1, peers], row r for round r (row 0, the
        start, equals row 1). By the rates: ``initial`` decides round 1, then each round every peer out
        arrives with probability ``arrival`` and every peer in leaves with ``departure``; a peer the
        explicit rounds name follows them instead."""
        self.check(peers)
        g = generator(seed, Stream.CHURN)
        alive = torch.zeros(rounds + 1, peers, dtype=torch.bool)
        alive[1] = torch.rand(peers, generator=g) < self.initial
        for round_ in range(2, rounds + 1):
            before = alive[round_ - 1]
            arrive = torch.rand(peers, generator=g) < self.arrival
            depart = torch.rand(peers, generator=g) < self.departure
            alive[round_] = (before & ~depart) | (~before & arrive)
        rows = torch.arange(rounds + 1).clamp(min=1)
        for peer in set(self.joins) | set(self.leaves) | set(self.returns):
            gone, back = self.leaves.get(peer, rounds + 2), self.returns.get(peer, rounds + 2)
            alive[:, peer] = (rows >= self.joins.get(peer, 1)) & ((rows < gone) | (rows >= back))
        alive[0] = alive[1]
        return alive


def sampled_graph(alive: torch.Tensor, partners: int, g: torch.Generator) -> PeerGraph:
    """This round's links: each live peer picks `partners` random other live peers (with replacement,
    so now and then fewer); the union of the picks, undirected. A peer never picks more often than there
    are others alive (more picks could only repeat them), so memory ∝ live peers × min(`partners`, live
    peers − 1), whatever the option says."""
    n = alive.numel()
    live = alive.nonzero().flatten()
    m = live.numel()
    if m < 2:
        return PeerGraph(n, torch.zeros(2, 0, dtype=torch.long))
    partners = min(partners, m - 1)
    offsets = torch.randint(1, m, (m, partners), generator=g)  # never oneself
    chosen = live[(torch.arange(m).unsqueeze(1) + offsets) % m].flatten()
    mine = live.repeat_interleave(partners)
    pairs = torch.stack([torch.minimum(mine, chosen), torch.maximum(mine, chosen)])
    return PeerGraph(n, torch.unique(pairs, dim=1))


def adopt_joiners(params: torch.Tensor, alive: torch.Tensor, was: torch.Tensor, ever: torch.Tensor) -> None:
    """Peers in now that were never in before (`ever`) start, in place, from the mean model of the peers
    in both now and last round (`was`): what a joining peer fetches from its partners. A peer coming
    back keeps its own (it resumes its checkpoint)."""
    joiners = alive & ~ever
    staying = alive & was
    if bool(joiners.any()) and bool(staying.any()):
        params[joiners] = params[staying].mean(0)


class ChurnRun:
    """A run's schedule, applied round by round by the simulator (see the module docstring)."""

    def __init__(self, churn: Churn, peers: int, rounds: int, seed: int) -> None:
        self.churn = churn
        self.seed = seed
        self.alive = churn.alive(peers, rounds, seed)
        self.ever = torch.zeros(peers, dtype=torch.bool)

    def enter(self, round_: int, ctx: RoundContext, params: torch.Tensor) -> RoundContext:
        """Round `round_` begins: joiners adopt the live peers' mean model (in `params`, in place), and
        the rule sees this round's sampled partners as its graph."""
        alive = self.alive[round_]
        was = self.alive[round_ - 1] if round_ > 1 else torch.zeros_like(alive)
        device = params.device
        adopt_joiners(params, alive.to(device), was.to(device), self.ever.to(device))
        self.ever |= alive
        graph = sampled_graph(alive, self.churn.partners, generator(self.seed, Stream.CHURN, round_))
        return dataclasses.replace(ctx, graph=graph)

    def restrict(self, plan: RoundPlan, round_: int) -> RoundPlan:
        """`plan` with only the peers in the swarm training (the others have no links to mix over)."""
        alive = self.alive[round_]
        if plan.trainers is not None:
            alive = plan.trainers & alive.to(plan.trainers.device)
        return dataclasses.replace(plan, trainers=alive)
