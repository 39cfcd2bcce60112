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
    parts: list[np.ndarray], fraction: float, seed: int, ids: list[int] | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split each peer's samples into (train, held-out); every peer keeps at least one training sample.

    Part k belongs to peer ``ids[k]`` (k when None); each peer's split is drawn from its own stream, so a
    networked peer that holds only its own part splits it as the simulator does.
    """
    train, held = [], []
    for peer, part in zip(range(len(parts)) if ids is None else ids, parts, strict=True):
        shuffled = np.random.default_rng([seed, peer]).permutation(part)
        count = min(int(len(part) * fraction), len(part) - 1)
        held.append(np.sort(shuffled[:count]))
        train.append(np.sort(shuffled[count:]))
    return train, held


@dataclass
class PeerLearning:
    """The model and each peer's held-out samples (its training samples when nothing was held out).

    Row k of `holdout` is peer ``ids[k]``'s (k when None, as in the simulator): a networked peer holds
    only its own row, and rules still name peers by id.
    """

    model: nn.Module
    holdout: LocalData
    ids: torch.Tensor | None = None  # sorted peer ids of the rows

    def __post_init__(self) -> None:
        self.layout = ParamLayout.of(self.model)
        self._forward = vmap(vmap(self._logits, in_dims=(0, None)), in_dims=(0, 0))

    def _logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.layout.unflatten(flat), (x,))

    def samples(self, peers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Held-out inputs [R, H, ...], labels [R, H] and validity mask [R, H] of the given peers (ids,
        on the host), on the held-out data's device; which samples is worked out on the host."""
        rows = peers if self.ids is None else torch.searchsorted(self.ids, peers)
        if self.ids is not None and not bool((self.ids[rows.clamp(max=len(self.ids) - 1)] == peers).all()):
            raise KeyError(
                f"held-out data of peers {peers.tolist()}: this executor holds {self.ids.tolist()}"
            )
        table, counts = self.holdout.table[rows], self.holdout.counts[rows]
        width = max(1, int(counts.max()))
        table = table[:, :width]
        mask = torch.arange(width) < counts.unsqueeze(1)
        device = self.holdout.x.device
        table = table.to(device)
        return self.holdout.x[table], self.holdout.y[table], mask.to(device)

    def _rows(self, peers: torch.Tensor) -> torch.Tensor:
        rows = torch.searchsorted(self.ids, peers)
        if not bool((self.ids[rows.clamp(max=len(self.ids) - 1)] == peers).all()):
            raise KeyError(f"held-out data of peers {peers.tolist()}: here only of {self.ids.tolist()}")
        return rows

    @torch.no_grad()
    def logits(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits [R, M, H, C] of M models per receiver ([R, M, D]) on that receiver's inputs [R, H, ...]."""
        return self._forward(params, x)

    def accuracy(self, params: torch.Tensor, peers: torch.Tensor) -> torch.Tensor:
        """Accuracy [R, M] (float64) of M models per peer ([R, M, D]) on that peer's held-out data."""
        x, y, valid = self.samples(peers)
        hits = (self.logits(params, x).argmax(-1) == y.unsqueeze(1)) & valid.unsqueeze(1)
        return hits.double().sum(-1) / valid.sum(-1, keepdim=True).clamp(min=1)
