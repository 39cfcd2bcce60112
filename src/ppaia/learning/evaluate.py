"""Test accuracy and loss of every peer's model, batched over peers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ppaia.learning.layout import ParamLayout
from ppaia.learning.local import activation_size, peer_chunks

__all__ = ["BatchedEvaluator"]

TEST_CHUNK = 2048


class BatchedEvaluator:
    """Evaluates stacked parameters ``[N, D]`` on one shared test set, in memory-bounded chunks."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.layout, self.x, self.y = model, ParamLayout.of(model), x, y
        self.per_sample = activation_size(model, tuple(x.shape[1:]))
        self._forward = vmap(self._logits, in_dims=(0, None))

    def _logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.layout.unflatten(flat), (x,))

    @torch.no_grad()
    def __call__(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-peer (accuracy, mean cross-entropy loss) on the test set."""
        n_test = self.y.numel()
        correct = torch.zeros(params.shape[0])
        loss = torch.zeros(params.shape[0], dtype=torch.float64)
        for start in range(0, n_test, TEST_CHUNK):
            x, y = self.x[start : start + TEST_CHUNK], self.y[start : start + TEST_CHUNK]
            for chunk in peer_chunks(params.shape[0], y.numel(), self.per_sample):
                logits = self._forward(params[chunk], x)
                correct[chunk] += (logits.argmax(-1) == y).sum(1).float()
                targets = y.expand(logits.shape[0], -1)
                loss[chunk] += (
                    F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
                    .view(logits.shape[:2])
                    .sum(1, dtype=torch.float64)
                )
        return correct / n_test, (loss / n_test).float()
