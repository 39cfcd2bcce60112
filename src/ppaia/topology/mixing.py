"""Mixing weights over a graph, and `Mixing`: one sparse averaging step over the peer axis.

Weights are computed per directed link from what a peer can know locally (its own and its neighbours'
degree and sample count), so a networked peer computes its own row with the same function the simulator
uses for all rows at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ppaia.registry import Component, Registry
from ppaia.topology.graphs import PeerGraph

__all__ = ["MIXINGS", "Mixing", "MixingWeights", "Neighbourhoods", "mixing_step", "rank_within"]


@dataclass(frozen=True)
class Mixing:
    """One step ``out[r] = Σ_e weights[e] · params[senders[e]]`` over entries e with ``rows[e] = r``.

    `rows` index the step's local receiver rows (0..n_rows-1); `senders` index the stacked parameters the
    step reads, whose peer ids are `sender_ids` (None: stacked row s is peer s). Row `target_rows[t]` of
    the result is written to peer `targets[t]`; peers that are not targets keep their parameters. In the
    simulator the stacked parameters are all peers; a networked peer runs the same step restricted to its
    own row (:meth:`for_peer`) over what it received.
    """

    rows: torch.Tensor
    senders: torch.Tensor
    weights: torch.Tensor
    n_rows: int
    targets: torch.Tensor
    target_rows: torch.Tensor
    sender_ids: torch.Tensor | None = None

    @classmethod
    def square(cls, rows: torch.Tensor, senders: torch.Tensor, weights: torch.Tensor, n: int) -> Mixing:
        """A step in which every peer r receives row r (consensus-style)."""
        every = torch.arange(n)
        return cls(rows, senders, weights, n, every, every)

    def weighted_sum(self, params: torch.Tensor) -> torch.Tensor:
        """The linear combination ``W @ params`` ([n_rows, D]); dense BLAS when W is dense enough."""
        shape, device = (self.n_rows, params.shape[0]), params.device
        weights = self.weights.to(device, params.dtype)  # a plan is drawn on the host; its weights go here
        rows, senders = self.rows.to(device), self.senders.to(device)
        if self.rows.numel() * 4 >= shape[0] * shape[1]:
            dense = torch.zeros(shape, dtype=params.dtype, device=device).index_put_(
                (rows, senders), weights, True
            )
            return dense @ params
        matrix = torch.sparse_coo_tensor(torch.stack([rows, senders]), weights, shape, check_invariants=False)
        return torch.sparse.mm(matrix.coalesce(), params)

    def write(self, params: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Store the step's result rows into the peers they belong to (in place when partial)."""
        n = params.shape[0]
        if self.n_rows == n == self.targets.numel() and torch.equal(self.targets, self.target_rows):
            return out
        device = params.device
        return params.index_copy_(0, self.targets.to(device), out[self.target_rows.to(device)])

    def for_peer(self, peer: int) -> Mixing | None:
        """This step as the single peer `peer` sees it: its own row over the k senders it hears from.

        The returned one-row step reads a stack of those k senders' parameters (their peer ids are its
        `sender_ids`); None when the step does not write to `peer`.
        """
        hit = (self.targets == peer).nonzero()
        if hit.numel() == 0:
            return None
        mine = self.rows == self.target_rows[hit[0, 0]]
        senders, local = torch.unique(self.sender_peers()[mine], return_inverse=True)
        zero = torch.zeros(1, dtype=torch.long)
        return Mixing(
            torch.zeros_like(local), local, self.weights[mine], 1, torch.tensor([peer]), zero, senders
        )

    def restricted(self, available: torch.Tensor, peer: int) -> Mixing:
        """This one-row step (from :meth:`for_peer`) over only the senders marked `available`.

        `available` is a mask over ``sender_ids``. The weight of the missing senders moves to `peer`'s own
        entry when it is a sender (a missing neighbour counts as an unchanged one), else the remaining
        weights are rescaled to the row's total; a rule that learns its weights ignores them anyway.
        """
        if self.n_rows != 1 or self.sender_ids is None:
            raise ValueError("restricted: only a single peer's row (Mixing.for_peer) can lose senders")
        kept = available[self.senders]
        position = torch.cumsum(available.long(), 0) - 1
        senders, weights = position[self.senders[kept]], self.weights[kept].clone()
        ids = self.sender_ids[available]
        own = (ids == peer).nonzero().flatten()
        total, remaining = self.weights.sum(), weights.sum()
        if own.numel():
            weights[senders == own[0]] += total - remaining
        elif bool(remaining > 0):
            weights = weights * (total / remaining)
        return Mixing(self.rows[kept], senders, weights, 1, self.targets, self.target_rows, ids)

    def sender_peers(self) -> torch.Tensor:
        """Peer id of each entry's sender."""
        return self.senders if self.sender_ids is None else self.sender_ids[self.senders]

    def receiver_ids(self) -> torch.Tensor:
        """Peer receiving each result row (-1 for none; a row broadcast to several peers gives the last)."""
        receivers = torch.full((self.n_rows,), -1, dtype=torch.long)
        receivers[self.target_rows] = self.targets
        return receivers

    def transfers(self) -> int:
        """Models sent by one peer to another in this step (an entry whose sender is not the receiver)."""
        return int((self.sender_peers() != self.receiver_ids()[self.rows]).sum())

    def gather(self, params: torch.Tensor, rows: slice | None = None) -> Neighbourhoods:
        """Each result row's senders side by side, padded: the input of a non-linear (robust) rule."""
        keep = slice(None) if rows is None else (self.rows >= rows.start) & (self.rows < rows.stop)
        first = 0 if rows is None else rows.start
        n_rows = self.n_rows if rows is None else rows.stop - rows.start
        row, sender, weight = self.rows[keep] - first, self.senders[keep], self.weights[keep]
        order = torch.argsort(row, stable=True)
        row, sender, weight = row[order], sender[order], weight[order]
        slot = rank_within(row, n_rows)
        width = int(slot.max()) + 1 if row.numel() else 0
        device = params.device  # the layout is worked out on the host, where the plan was drawn
        values = params.new_zeros(n_rows, width, params.shape[1])
        values[row.to(device), slot.to(device)] = params[sender.to(device)]
        mask = torch.zeros(n_rows, width, dtype=torch.bool)
        mask[row, slot] = True
        weights = torch.zeros(n_rows, width, dtype=torch.float64)
        weights[row, slot] = weight.double()
        ids = torch.full((n_rows, width), -1, dtype=torch.long)
        ids[row, slot] = self.sender_peers()[keep][order]
        return Neighbourhoods(values, mask.to(device), weights.to(device), ids.to(device))


@dataclass(frozen=True)
class Neighbourhoods:
    """What each receiver heard in one step, padded to the widest row: values [R, M, D], mask [R, M]; all
    on the parameters' device. (A sender's id is -1 exactly where the mask is False.)"""

    values: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor
    ids: torch.Tensor


def rank_within(groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Position of each entry inside its group, for entries sorted by group (0, 1, 2, ... per group)."""
    counts = torch.bincount(groups, minlength=n_groups)
    return torch.arange(groups.numel()) - (counts.cumsum(0) - counts)[groups]


class MixingWeights(Component):
    """Weights a receiver gives to each live neighbour; the self weight is 1 minus their sum."""

    def link_weights(
        self, receivers: torch.Tensor, senders: torch.Tensor, degree: torch.Tensor, n_samples: torch.Tensor
    ) -> torch.Tensor:
        """Weight of `senders[e]` at `receivers[e]` for each directed link e (no self links)."""
        raise NotImplementedError


MIXINGS: Registry[MixingWeights] = Registry("mixing")


@MIXINGS.register("metropolis")
class Metropolis(MixingWeights):
    """Metropolis–Hastings: 1 / (1 + max(deg_i, deg_j)); symmetric, so doubly stochastic."""

    def link_weights(self, receivers, senders, degree, n_samples):
        return 1.0 / (1.0 + torch.maximum(degree[receivers], degree[senders]).double())


@MIXINGS.register("uniform")
class Uniform(MixingWeights):
    """Equal weight 1 / (deg_i + 1) over self and neighbours; row-stochastic."""

    def link_weights(self, receivers, senders, degree, n_samples):
        return 1.0 / (1.0 + degree[receivers].double())


@MIXINGS.register("data_size")
class DataSize(MixingWeights):
    """Weight proportional to each neighbour's sample count over self and neighbours; row-stochastic."""

    def link_weights(self, receivers, senders, degree, n_samples):
        sizes = n_samples.double()
        total = sizes.clone().index_add_(0, receivers, sizes[senders])
        return sizes[senders] / total[receivers]


def mixing_step(weights: MixingWeights, graph: PeerGraph, n_samples: torch.Tensor) -> Mixing:
    """The full averaging step W over `graph`'s links (plus self weights) for every peer."""
    receivers, senders = graph.directed()
    link = weights.link_weights(receivers, senders, graph.degree(), n_samples)
    self_weight = 1.0 - torch.zeros(graph.n, dtype=torch.float64).index_add_(0, receivers, link)
    peers = torch.arange(graph.n)
    return Mixing.square(
        torch.cat([receivers, peers]), torch.cat([senders, peers]), torch.cat([link, self_weight]), graph.n
    )
