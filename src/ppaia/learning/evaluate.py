"""Test accuracy and loss of every peer's model, batched over peers.

Evaluation is N models × the whole test set: at 10,000 peers it costs far more than a round of training.
Two things make it cheap, with the same arithmetic per peer whatever the chunk:

- Scores are computed with the classes in the middle (logits ``[P, C, S]``, ``F.cross_entropy``'s
  K-dimensional form): the argmax and the log-softmax over classes then run along the contiguous sample
  axis, about twice as fast on CPU as over ten-element rows (``[P·S, C]``).
- A plain MLP (``nn.Sequential`` of ``Flatten``, ``Linear`` and ``ReLU``, as the built-in ``mlp`` and
  ``logistic`` models are) runs as one batched GEMM per layer with its bias fused and ReLU in place, on
  chunks of peers small enough for each thread's share of their activations to stay in cache. Any other
  model runs under ``torch.func.vmap`` as it trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ppaia.learning.layout import ParamLayout
from ppaia.learning.local import activation_size, peer_chunks

__all__ = ["BatchedEvaluator", "DenseLayer", "dense_layers", "score"]

TEST_CHUNK = 2048
CACHE_BUDGET = 2**22  # activations of one thread's share of a chunk of the MLP path (16 MiB of floats)


@dataclass(frozen=True)
class DenseLayer:
    """One ``nn.Linear`` of a plain MLP: its parameters' names in the layout, and a ReLU after it or not."""

    weight: str
    bias: str | None
    relu: bool


def dense_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[DenseLayer] | None:
    """The layers of `model` on inputs of `input_shape` (one sample's) if it is a plain MLP: an
    ``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU`` only, after an ``nn.Flatten`` unless the input is
    a vector. Else None. Exact types: a subclass may compute something else."""
    if type(model) is not nn.Sequential:
        return None
    children = list(model.named_children())
    if children and type(children[0][1]) is nn.Flatten:
        flatten = children.pop(0)[1]
        if (flatten.start_dim, flatten.end_dim) != (1, -1):
            return None
    elif len(input_shape) != 1:
        return None
    layers: list[DenseLayer] = []
    for name, child in children:
        if type(child) is nn.Linear:
            layers.append(DenseLayer(f"{name}.weight", None if child.bias is None else f"{name}.bias", False))
        elif type(child) is nn.ReLU and layers and not layers[-1].relu:
            layers[-1] = DenseLayer(layers[-1].weight, layers[-1].bias, True)
        else:
            return None
    return layers or None


def score(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-peer (correct predictions, summed cross-entropy in float64) of logits ``[P, C, S]`` for labels
    ``y [S]`` (the first of tied maxima is the prediction, as ``argmax`` has it)."""
    predicted = logits.max(1).indices  # as argmax has it, several times faster along a middle axis
    loss = F.cross_entropy(logits, y.expand(logits.shape[0], -1), reduction="none")
    return (predicted == y).sum(1), loss.sum(1, dtype=torch.float64)


class BatchedEvaluator:
    """Evaluates stacked parameters ``[N, D]`` on one shared test set, in memory-bounded chunks."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.layout, self.x, self.y = model, ParamLayout.of(model), x, y
        self.per_sample = activation_size(model, tuple(x.shape[1:]))
        self.layers = dense_layers(model, tuple(x.shape[1:]))
        self._forward = vmap(self._logits, in_dims=(0, None))

    def to(self, device: torch.device) -> BatchedEvaluator:
        """The test set moved to `device` (in place: the evaluator is this executor's own)."""
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self

    def _logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.layout.unflatten(flat), (x,))

    def _dense(self, layers: list[DenseLayer], params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[P, C, S]`` of a plain MLP: each layer ``W h + b`` on activations ``[P, features, S]``."""
        named = self.layout.unflatten(params)
        hidden = x.flatten(1).T.expand(params.shape[0], -1, -1)
        for layer in layers:
            weight = named[layer.weight]
            if layer.bias is None:
                hidden = torch.bmm(weight, hidden)
            else:
                hidden = torch.baddbmm(named[layer.bias].unsqueeze(-1), weight, hidden)
            if layer.relu:
                hidden.relu_()
        return hidden

    @torch.no_grad()
    def __call__(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-peer (accuracy, mean cross-entropy loss) on the test set."""
        n_test = self.y.numel()
        correct = torch.zeros(params.shape[0], dtype=torch.long, device=params.device)
        loss = torch.zeros(params.shape[0], dtype=torch.float64, device=params.device)
        layers = self.layers
        budget = CACHE_BUDGET * torch.get_num_threads() if layers is not None else None
        for start in range(0, n_test, TEST_CHUNK):
            x, y = self.x[start : start + TEST_CHUNK], self.y[start : start + TEST_CHUNK]
            for chunk in peer_chunks(params.shape[0], y.numel(), self.per_sample, budget):
                if layers is not None:
                    logits = self._dense(layers, params[chunk], x)
                else:
                    logits = self._forward(params[chunk], x).transpose(1, 2)
                hits, total = score(logits, y)
                correct[chunk] += hits
                loss[chunk] += total
        return correct.float() / n_test, (loss / n_test).float()
