"""Initial parameters for all peers: one shared model, or each peer its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ppaia.learning.layout import ParamLayout
from ppaia.registry import Component, Registry
from ppaia.seeding import Stream, derive_seed
from ppaia.topology.graphs import PeerGraph

__all__ = ["INIT_POLICIES", "InitPolicy", "Initialization", "independent_params", "seeded_model"]


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
        self, build: Callable[[], nn.Module], n: int, seed: int, graph: PeerGraph | None
    ) -> Initialization:
        raise NotImplementedError


INIT_POLICIES: Registry[InitPolicy] = Registry("init policy")


@INIT_POLICIES.register("common")
class Common(InitPolicy):
    """Every peer starts from the same model, drawn from the run seed."""

    def initial_params(self, build, n, seed, graph):
        model = seeded_model(build, derive_seed(seed, Stream.INIT))
        return Initialization(ParamLayout.of(model).flatten(model).expand(n, -1).clone())


@INIT_POLICIES.register("independent")
class Independent(InitPolicy):
    """Each peer draws its own initial model (seeded per peer)."""

    def initial_params(self, build, n, seed, graph):
        return Initialization(independent_params(build, n, seed))


def independent_params(build: Callable[[], nn.Module], n: int, seed: int) -> torch.Tensor:
    """Each peer's own default initialisation, drawn from a per-peer seed."""
    models = [seeded_model(build, derive_seed(seed, Stream.INIT, peer)) for peer in range(n)]
    layout = ParamLayout.of(models[0])
    return torch.stack([layout.flatten(model) for model in models])
