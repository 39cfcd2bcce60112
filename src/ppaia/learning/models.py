"""Model builders by name, plus any user `torch.nn.Module` factory given as ``"package.module:factory"``."""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable

from pydantic import Field
from torch import nn

from ppaia.plugins import import_target
from ppaia.registry import Component, Registry

__all__ = ["MODELS", "ImportedModel", "ModelError", "ModelSpec"]


class ModelError(ValueError):
    """A model that cannot be built or cannot be run by the batched engine."""


class ModelSpec(Component):
    """Builds a fresh `nn.Module` for inputs of `input_shape` and `n_classes` outputs (logits)."""

    def build(self, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        raise NotImplementedError


MODELS: Registry[ModelSpec] = Registry("model")


def _mlp(sizes: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Flatten()]
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return layers


@MODELS.register("logistic")
class Logistic(ModelSpec):
    """Multinomial logistic regression: one linear layer on the flattened input."""

    def build(self, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        return nn.Sequential(*_mlp([math.prod(input_shape), n_classes]))


@MODELS.register("mlp")
class MLP(ModelSpec):
    """Fully connected ReLU network on the flattened input, with the given hidden widths."""

    hidden: list[int] = Field(default=[64], min_length=1)

    def build(self, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        if min(self.hidden) < 1:
            raise ModelError(f"mlp: hidden widths must be positive, got {self.hidden}")
        return nn.Sequential(*_mlp([math.prod(input_shape), *self.hidden, n_classes]))


@MODELS.register("cnn")
class CNN(ModelSpec):
    """Small conv net for (channels, height, width) images: conv-ReLU-maxpool blocks, then a linear head."""

    channels: list[int] = Field(default=[16, 32], min_length=1)
    kernel: int = Field(default=3, ge=1)

    def build(self, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        if len(input_shape) != 3:
            raise ModelError(f"cnn: needs image inputs (channels, height, width), got shape {input_shape}")
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for out in self.channels:
            layers += [nn.Conv2d(channels, out, self.kernel, padding=self.kernel // 2), nn.ReLU()]
            channels = out
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * height * width, n_classes))


@MODELS.register("import")
class ImportedModel(ModelSpec):
    """A user factory ``"package.module:factory"``; called with `input_shape`/`n_classes` if it takes them."""

    target: str = Field(pattern=r"^[\w.]+:[\w.]+$")

    def factory(self) -> Callable[..., nn.Module]:
        return import_target(self.target, f"model {self.target!r}", ModelError)

    def modules(self) -> list[str]:
        return [*super().modules(), self.target.split(":")[0]]

    def build(self, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
        factory = self.factory()
        offered = {"input_shape": input_shape, "n_classes": n_classes}
        accepted = inspect.signature(factory).parameters
        model = factory(**{k: v for k, v in offered.items() if k in accepted})
        if not isinstance(model, nn.Module):
            raise ModelError(f"model {self.target!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
