"""Initial parameters for all peers: one shared model, or each peer its own."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ppaia.learning.layout import ParamLayout
from ppaia.registry import Component, Registry
from ppaia.seeding import Stream, derive_seed
from ppaia.topology.graphs import PeerGraph

__all__ = ["INIT_POLICIES", "InitPolicy", "seeded_model"]


def seeded_model(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model with torch's default init drawn from `seed`, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class InitPolicy(Component):
    """Chooses the ``[N, D]`` initial parameters of the peers."""

    def initial_params(
        self, build: Callable[[], nn.Module], n: int, seed: int, graph: PeerGraph | None
    ) -> torch.Tensor:
        raise NotImplementedError


INIT_POLICIES: Registry[InitPolicy] = Registry("init policy")


@INIT_POLICIES.register("common")
class Common(InitPolicy):
    """Every peer starts from the same model, drawn from the run seed."""

    def initial_params(self, build, n, seed, graph):
        model = seeded_model(build, derive_seed(seed, Stream.INIT))
        return ParamLayout.of(model).flatten(model).expand(n, -1).clone()


@INIT_POLICIES.register("independent")
class Independent(InitPolicy):
    """Each peer draws its own initial model (seeded per peer)."""

    def initial_params(self, build, n, seed, graph):
        models = [seeded_model(build, derive_seed(seed, Stream.INIT, peer)) for peer in range(n)]
        layout = ParamLayout.of(models[0])
        return torch.stack([layout.flatten(model) for model in models])
