"""Local training for many peers at once: peers are a batch dimension (torch.func vmap over grad)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ppaia.learning.layout import ParamLayout
from ppaia.learning.optim import OptimizerSpec
from ppaia.seeding import Stream, generator

__all__ = ["BatchedTrainer", "LocalData", "activation_size", "epoch_order", "peer_chunks"]

ELEMENT_BUDGET = 2**25  # activations held at once by a batched forward/backward (~128 MiB of floats)


@dataclass(frozen=True)
class LocalData:
    """Every peer's training samples: row i of `table` lists peer i's sample ids (padded past counts[i])."""

    x: torch.Tensor
    y: torch.Tensor
    table: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def from_parts(cls, x: torch.Tensor, y: torch.Tensor, parts: list[np.ndarray]) -> LocalData:
        counts = torch.tensor([len(p) for p in parts], dtype=torch.long)
        table = torch.zeros(len(parts), int(counts.max()), dtype=torch.long)
        for row, part in enumerate(parts):
            table[row, : len(part)] = torch.as_tensor(part, dtype=torch.long)
        return cls(x, y, table, counts)

    def peer_samples(self, peer: int) -> torch.Tensor:
        return self.table[peer, : self.counts[peer]]


def epoch_order(counts: torch.Tensor, seed: int, round_: int, epoch: int) -> torch.Tensor:
    """Each peer's shuffled sample positions for one epoch ([N, max count]; padding positions last).

    Shared by the batched engine and the reference executor so both see the same batches.
    """
    width = int(counts.max())
    keys = torch.rand(counts.numel(), width, generator=generator(seed, Stream.DATA_ORDER, round_, epoch))
    keys.masked_fill_(torch.arange(width) >= counts.unsqueeze(1), 2.0)
    return keys.argsort(dim=1, stable=True)


def activation_size(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of activation values one sample produces in a forward pass (sum over all modules)."""
    total = math.prod(input_shape)

    def count(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return total


def peer_chunks(n_peers: int, samples: int, per_sample: int, budget: int = ELEMENT_BUDGET) -> list[slice]:
    """Split peers into chunks whose batched forward pass stays within the activation budget."""
    size = max(1, min(n_peers, budget // max(1, samples * per_sample)))
    return [slice(start, min(start + size, n_peers)) for start in range(0, n_peers, size)]


class BatchedTrainer:
    """Runs E local epochs of mini-batch training for a set of peers in one batched computation.

    Peers with fewer samples finish their epoch earlier and are masked (no update) until the longest
    peer's epoch ends, so every peer does exactly `epochs` passes over its own data.
    """

    def __init__(
        self,
        model: nn.Module,
        data: LocalData,
        *,
        batch_size: int,
        epochs: int,
        optimizer: OptimizerSpec,
        lr: float,
        seed: int,
    ) -> None:
        self.model, self.data, self.layout = model, data, ParamLayout.of(model)
        self.batch_size, self.epochs, self.optimizer, self.lr, self.seed = (
            batch_size,
            epochs,
            optimizer,
            lr,
            seed,
        )
        self.per_sample = activation_size(model, tuple(data.x.shape[1:]))
        self._grad = vmap(grad(self._loss))

    def _loss(
        self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        logits = functional_call(self.model, self.layout.unflatten(flat), (x,))
        # cross-entropy spelled out: under vmap it is faster than F.cross_entropy's decomposition
        losses = -logits.log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return (losses * valid).sum() / valid.sum().clamp(min=1)

    def warm_up(self, params: torch.Tensor) -> None:
        """One gradient evaluation for one peer, discarded: triggers torch.func's one-time set-up."""
        samples = self.data.table[:1, : min(self.batch_size, int(self.data.counts[0]))]
        self._grad(params[:1], self.data.x[samples], self.data.y[samples], torch.ones(samples.shape))

    def train(self, params: torch.Tensor, round_: int, peers: torch.Tensor | None = None) -> torch.Tensor:
        """Train `peers` (all when None) from their rows of `params`, updating `params` in place."""
        ids = torch.arange(params.shape[0]) if peers is None else peers.nonzero().flatten()
        if ids.numel() == 0:
            return params
        orders = [epoch_order(self.data.counts, self.seed, round_, e) for e in range(self.epochs)]
        chunks = peer_chunks(ids.numel(), 3 * self.batch_size, self.per_sample)
        if len(chunks) == 1 and ids.numel() == params.shape[0]:
            return self._train_rows(params, ids, orders)  # everyone at once, in place
        for chunk in chunks:
            rows = ids[chunk]
            params[rows] = self._train_rows(params[rows], rows, [o[rows] for o in orders])
        return params

    def _train_rows(
        self, params: torch.Tensor, rows: torch.Tensor, orders: list[torch.Tensor]
    ) -> torch.Tensor:
        counts = self.data.counts[rows]
        table = self.data.table[rows]
        state = self.optimizer.init_state(params)
        steps = math.ceil(int(counts.max()) / self.batch_size)
        for order in orders:
            for step in range(steps):
                window = slice(step * self.batch_size, (step + 1) * self.batch_size)
                positions = order[:, window]
                valid = positions < counts.unsqueeze(1)
                samples = table.gather(1, positions.clamp(max=table.shape[1] - 1))
                grads = self._grad(params, self.data.x[samples], self.data.y[samples], valid.float())
                active = valid.any(dim=1, keepdim=True).float()
                self.optimizer.step(params, grads, state, active, self.lr)
        return params
