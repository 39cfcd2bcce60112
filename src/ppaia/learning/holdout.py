"""Each peer's held-out data and a batched forward pass: what rules that learn from data use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from ppaia.learning.layout import ParamLayout
from ppaia.learning.local import LocalData

__all__ = ["PeerLearning", "split_holdout"]


def split_holdout(
    parts: list[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split each peer's samples into (train, held-out); every peer keeps at least one training sample."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for part in parts:
        shuffled = rng.permutation(part)
        count = min(int(len(part) * fraction), len(part) - 1)
        held.append(np.sort(shuffled[:count]))
        train.append(np.sort(shuffled[count:]))
    return train, held


@dataclass
class PeerLearning:
    """The model and each peer's held-out samples (its training samples when nothing was held out)."""

    model: nn.Module
    holdout: LocalData

    def __post_init__(self) -> None:
        self.layout = ParamLayout.of(self.model)
        self._forward = vmap(vmap(self._logits, in_dims=(0, None)), in_dims=(0, 0))

    def _logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.layout.unflatten(flat), (x,))

    def samples(self, peers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Held-out inputs [R, H, ...], labels [R, H] and validity mask [R, H] of the given peers."""
        table, counts = self.holdout.table[peers], self.holdout.counts[peers]
        width = max(1, int(counts.max()))
        table = table[:, :width]
        mask = torch.arange(width) < counts.unsqueeze(1)
        return self.holdout.x[table], self.holdout.y[table], mask

    @torch.no_grad()
    def logits(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits [R, M, H, C] of M models per receiver ([R, M, D]) on that receiver's inputs [R, H, ...]."""
        return self._forward(params, x)

    def accuracy(self, params: torch.Tensor, peers: torch.Tensor) -> torch.Tensor:
        """Accuracy [R, M] (float64) of M models per peer ([R, M, D]) on that peer's held-out data."""
        x, y, valid = self.samples(peers)
        hits = (self.logits(params, x).argmax(-1) == y.unsqueeze(1)) & valid.unsqueeze(1)
        return hits.double().sum(-1) / valid.sum(-1, keepdim=True).clamp(min=1)
