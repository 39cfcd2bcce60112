"""A model's parameters as one flat vector, so N peers are one ``[N, D]`` tensor."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ParamLayout"]


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of a module's parameters inside a flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        named = list(module.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    @property
    def size(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)

    def flatten(self, module: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).float()

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat vector (``[..., D]``) shaped like the parameters.

        `split` rather than slicing: its backward is one concatenation instead of a full-size zero
        gradient per parameter, which matters when this runs for thousands of peers at once.
        """
        pieces = flat.split([math.prod(shape) for shape in self.shapes], dim=-1)
        lead = flat.shape[:-1]
        return {
            name: piece.reshape(*lead, *shape)
            for name, shape, piece in zip(self.names, self.shapes, pieces, strict=True)
        }

    def join(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The flat vector of named tensors (the inverse of :meth:`unflatten`)."""
        return torch.cat([tensors[name].reshape(-1) for name in self.names])

    def expected(self) -> dict[str, tuple[torch.Size, torch.dtype]]:
        """Name -> (shape, dtype) of every parameter: what a received model must be exactly."""
        return {name: (shape, torch.float32) for name, shape in zip(self.names, self.shapes, strict=True)}

    def load(self, module: nn.Module, flat: torch.Tensor) -> nn.Module:
        """Copy a flat vector into the module's parameters."""
        with torch.no_grad():
            for param, value in zip(module.parameters(), self.unflatten(flat).values(), strict=True):
                param.copy_(value)
        return module
