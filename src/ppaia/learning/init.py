"""Initial parameters: one shared model, each peer its own, or the largest-norm one.

A policy gives the rows of any set of peers without drawing the others' (a networked peer asks for its
own row only); the rows always equal those rows of the whole swarm's result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ppaia.learning.layout import ParamLayout
from ppaia.registry import Component, Registry
from ppaia.seeding import Stream, derive_seed
from ppaia.topology.graphs import PeerGraph
from ppaia.topology.mixing import MIXINGS, Mixing, mixing_step

__all__ = [
    "INIT_POLICIES",
    "InitPolicy",
    "Initialization",
    "adopt_smallest",
    "independent_params",
    "max_norm_sync",
    "norm_ranks",
    "seeded_model",
]


def seeded_model(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model with torch's default init drawn from `seed`, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@dataclass(frozen=True)
class Initialization:
    """The peers' initial parameters ``[N, D]`` and what agreeing on them cost (steps, models sent)."""

    params: torch.Tensor
    steps: int = 0
    models_sent: int = 0


class InitPolicy(Component):
    """Chooses the initial parameters of the peers."""

    def initial_params(
        self,
        build: Callable[[], nn.Module],
        n: int,
        seed: int,
        graph: PeerGraph | None,
        ids: torch.Tensor | None = None,
    ) -> Initialization:
        """The initial rows ``[len(ids), D]`` of peers `ids` of `n` (all n when None), and the cost of
        agreeing on them for the whole swarm."""
        raise NotImplementedError


def _peers(n: int, ids: torch.Tensor | None) -> list[int]:
    return list(range(n)) if ids is None else ids.tolist()


INIT_POLICIES: Registry[InitPolicy] = Registry("init policy")


@INIT_POLICIES.register("common")
class Common(InitPolicy):
    """Every peer starts from the same model, drawn from the run seed."""

    def initial_params(self, build, n, seed, graph, ids=None):
        model = seeded_model(build, derive_seed(seed, Stream.INIT))
        rows = len(_peers(n, ids))
        return Initialization(ParamLayout.of(model).flatten(model).expand(rows, -1).clone())


@INIT_POLICIES.register("independent")
class Independent(InitPolicy):
    """Each peer draws its own initial model (seeded per peer)."""

    def initial_params(self, build, n, seed, graph, ids=None):
        return Initialization(independent_params(build, _peers(n, ids), seed))


def own_draw(build: Callable[[], nn.Module], peer: int, seed: int) -> torch.Tensor:
    """Peer `peer`'s own default initialisation, drawn from its per-peer seed, flattened."""
    model = seeded_model(build, derive_seed(seed, Stream.INIT, peer))
    return ParamLayout.of(model).flatten(model)


def independent_params(build: Callable[[], nn.Module], peers: list[int], seed: int) -> torch.Tensor:
    """The listed peers' own default initialisations, one row each."""
    return torch.stack([own_draw(build, peer, seed) for peer in peers])


@INIT_POLICIES.register("max_norm")
class MaxNorm(InitPolicy):
    """Each peer draws its own model, then all adopt the largest-norm one by max-consensus (P2PL).

    Cost model (flooding): in step t every peer whose model changed in step t-1 (every peer in step 1)
    sends its parameters to each of its neighbours; the last step, in which nobody changes, tells the
    peers they agree. `steps` counts the steps in which some peer changed (at most the graph's
    diameter), `models_sent` the parameters sent over all steps. Without links nobody sends or changes.
    """

    def initial_params(self, build, n, seed, graph, ids=None):
        if ids is None:
            return max_norm_sync(independent_params(build, list(range(n)), seed), graph)
        # A few peers' rows: every draw is made once for its norm and dropped (memory of one model, not
        # n), then the owners of the adopted ranks are drawn again.
        norms = torch.stack([own_draw(build, peer, seed).double().norm() for peer in range(n)])
        adopted, steps, sent = max_norm_consensus(norm_ranks_of(norms), graph)
        owner = torch.argsort(norm_ranks_of(norms))
        return Initialization(independent_params(build, owner[adopted[ids]].tolist(), seed), steps, sent)


def norm_ranks(params: torch.Tensor) -> torch.Tensor:
    """Each peer's place when ordered by parameter ℓ2 norm, largest first (equal norms: smaller id first)."""
    return norm_ranks_of(params.double().norm(dim=1))


def norm_ranks_of(norms: torch.Tensor) -> torch.Tensor:
    """:func:`norm_ranks` from the peers' norms."""
    order = torch.argsort(norms, descending=True, stable=True)
    return torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))


def adopt_smallest(ranks: torch.Tensor, step: Mixing) -> torch.Tensor:
    """One max-consensus step: each of the step's rows takes the smallest rank among its senders.

    `ranks` are those of the stacked models the step reads: every peer's in the simulator, or in a
    single peer those it received (its own among them) with ``step.for_peer(peer)``.
    """
    out = ranks.new_full((step.n_rows,), torch.iinfo(ranks.dtype).max)
    return out.scatter_reduce(0, step.rows, ranks[step.senders], "amin")


def max_norm_sync(params: torch.Tensor, graph: PeerGraph | None) -> Initialization:
    """Max-consensus on parameter norm over `graph` until no peer changes (cost model: :class:`MaxNorm`).

    Each peer ends with the largest-norm model it can reach: the global one on a connected graph.
    """
    if graph is None:
        return Initialization(params)
    ranks = norm_ranks(params)
    adopted, steps, sent = max_norm_consensus(ranks, graph)
    owner = torch.argsort(ranks)  # the peer whose own draw has each rank
    return Initialization(params[owner[adopted]], steps, sent)


def max_norm_consensus(ranks: torch.Tensor, graph: PeerGraph | None) -> tuple[torch.Tensor, int, int]:
    """The rank each peer adopts by max-consensus over `graph`, the steps it took and models sent."""
    if graph is None:
        return ranks, 0, 0
    step = mixing_step(MIXINGS.create("uniform"), graph, torch.ones(graph.n))  # closed neighbourhoods
    degree = graph.degree()
    changed = torch.ones(graph.n, dtype=torch.bool)
    steps = sent = 0
    while True:
        sent += int(degree[changed].sum())
        adopted = adopt_smallest(ranks, step)
        changed = adopted != ranks
        if not changed.any():
            return ranks, steps, sent
        ranks, steps = adopted, steps + 1
