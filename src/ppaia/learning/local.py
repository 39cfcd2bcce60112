"""Local training for many peers at once: peers are a batch dimension (torch.func vmap over grad)."""

from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ppaia.learning.dropout import dropout_keys, keyed_dropout
from ppaia.learning.layout import ParamLayout
from ppaia.learning.optim import OptimizerSpec
from ppaia.seeding import Stream, derive_seed, peer_normal, peer_uniform

if TYPE_CHECKING:
    from ppaia.learning.ewc import Anchor

__all__ = [
    "BatchedTrainer",
    "LocalData",
    "PrivateSteps",
    "activation_size",
    "clip_rows",
    "epoch_order",
    "peer_chunks",
    "poisson_rate",
    "steps_per_epoch",
]

ELEMENT_BUDGET = 2**25  # activations held at once by a batched forward/backward (~128 MiB of floats)


@dataclass(frozen=True)
class LocalData:
    """Training samples of some peers: row k of `table` lists the sample ids of peer ``ids[k]`` (padded past
    ``counts[k]``).

    The simulator holds every peer (``ids = 0..N-1``); a networked peer holds its own row only. Every random
    draw about a row's training is keyed by its peer id, so a row trains the same in either.
    """

    x: torch.Tensor
    y: torch.Tensor
    table: torch.Tensor
    counts: torch.Tensor
    ids: torch.Tensor

    @classmethod
    def from_parts(
        cls, x: torch.Tensor, y: torch.Tensor, parts: list[np.ndarray], ids: torch.Tensor | None = None
    ) -> LocalData:
        """Part k is the samples of peer ``ids[k]`` (k when None)."""
        counts = torch.tensor([len(p) for p in parts], dtype=torch.long)
        ids = torch.arange(len(parts)) if ids is None else torch.as_tensor(ids, dtype=torch.long)
        if ids.shape != counts.shape:
            raise ValueError(f"{len(parts)} parts but {ids.numel()} peer ids")
        table = torch.zeros(len(parts), int(counts.max()), dtype=torch.long)
        for row, part in enumerate(parts):
            table[row, : len(part)] = torch.as_tensor(part, dtype=torch.long)
        return cls(x, y, table, counts, ids)

    def to(self, device: torch.device) -> LocalData:
        """The samples on `device`; the sample table, counts and ids (bookkeeping) stay where they are."""
        return dataclasses.replace(self, x=self.x.to(device), y=self.y.to(device))

    def peer_samples(self, row: int) -> torch.Tensor:
        """The sample ids of row `row` (peer ``ids[row]``)."""
        return self.table[row, : self.counts[row]]


def clip_rows(values: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale each vector (the last dimension) to ℓ2 norm at most `clip` (DP clipping)."""
    norms = values.norm(dim=-1, keepdim=True)
    return values * (clip / (norms + 1e-12)).clamp(max=1.0)


def steps_per_epoch(counts: torch.Tensor, batch_size: int) -> torch.Tensor:
    """ceil(n / B) per peer: the optimizer steps of one local epoch (also what the accountant counts)."""
    return (counts + batch_size - 1) // batch_size


def poisson_rate(counts: torch.Tensor, batch_size: int) -> torch.Tensor:
    """DP-SGD's per-step sampling rate B / n for each peer (1 when it holds B samples or fewer)."""
    return (batch_size / counts.clamp(min=1).double()).clamp(max=1.0)


def epoch_order(counts: torch.Tensor, ids: torch.Tensor, seed: int, round_: int, epoch: int) -> torch.Tensor:
    """Shuffled sample positions for one epoch of the peers `ids` holding `counts` samples ([P, max count];
    padding positions last).

    Peer p's order depends only on (seed, round, epoch, p, its count), so the batched engine, the reference
    executor and a networked peer computing its own row alone all see the same batches.
    """
    width = int(counts.max()) if counts.numel() else 0
    keys = peer_uniform(derive_seed(seed, Stream.DATA_ORDER, round_, epoch), ids, width)
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
    device = next(model.parameters(), torch.empty(0)).device  # "meta": sizes only, nothing allocated
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total


def peer_chunks(n_peers: int, samples: int, per_sample: int, budget: int | None = None) -> list[slice]:
    """Split peers into chunks whose batched forward pass stays within the activation budget
    (:data:`ELEMENT_BUDGET` when None, read at each call)."""
    budget = ELEMENT_BUDGET if budget is None else budget
    size = max(1, min(n_peers, budget // max(1, samples * per_sample)))
    return [slice(start, min(start + size, n_peers)) for start in range(0, n_peers, size)]


@dataclass(frozen=True)
class PrivateSteps:
    """DP-SGD for one round: per-sample clipping to `clip`, noise `noise[p]`·clip, batches by `sampling`."""

    clip: float
    noise: torch.Tensor
    sampling: str
    seed: int


class BatchedTrainer:
    """Runs E local epochs of mini-batch training for a set of peers in one batched computation.

    Peers with fewer samples finish their epoch earlier and are masked (no update) until the longest
    peer's epoch ends, so every peer does exactly `epochs` passes over its own data (ceil(n/B) steps
    each). Optionally: an EWC penalty (its gradient is added to each peer's), and DP-SGD (per-sample
    gradients clipped and noised, batches drawn by Poisson sampling or by shuffling).

    It trains its own copy of `model`, in training mode, whose dropout layers draw keyed masks
    (:mod:`ppaia.learning.dropout`): each peer's, per step, is its own, whatever it is batched with.
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
        self.model, self.data, self.layout = copy.deepcopy(model).train(), data, ParamLayout.of(model)
        self._dropout = keyed_dropout(self.model)
        self.batch_size, self.epochs, self.optimizer, self.lr, self.seed = (
            batch_size,
            epochs,
            optimizer,
            lr,
            seed,
        )
        self.per_sample = activation_size(model, tuple(data.x.shape[1:]))
        self._grad = vmap(grad(self._loss))
        # per peer (flat, x, y, dropout key), then per sample (x, y, its place in the batch)
        self._sample_grads = vmap(
            vmap(grad(self._sample_loss), in_dims=(None, 0, 0, None, 0)), in_dims=(0, 0, 0, 0, None)
        )

    def _keyed(self, key: torch.Tensor, offset: torch.Tensor | int = 0) -> AbstractContextManager:
        """Dropout with `key` for a forward pass run inside (nothing to do for a model without)."""
        return nullcontext() if self._dropout is None else self._dropout(key, offset)

    def _loss(
        self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, key: torch.Tensor
    ) -> torch.Tensor:
        with self._keyed(key):
            logits = functional_call(self.model, self.layout.unflatten(flat), (x,))
        # cross-entropy spelled out: under vmap it is faster than F.cross_entropy's decomposition
        losses = -logits.log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return (losses * valid).sum() / valid.sum().clamp(min=1)

    def _sample_loss(
        self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, key: torch.Tensor, place: torch.Tensor
    ) -> torch.Tensor:
        with self._keyed(key, place):  # the sample's masks are those it gets in its batch's forward pass
            logits = functional_call(self.model, self.layout.unflatten(flat), (x.unsqueeze(0),))[0]
        return -logits.log_softmax(-1).gather(0, y.unsqueeze(0))[0]  # indexing by a tensor breaks vmap

    def steps_per_epoch(self, peers: torch.Tensor | None = None) -> torch.Tensor:
        """ceil(n / B) for each peer: the optimizer steps one epoch takes."""
        counts = self.data.counts if peers is None else self.data.counts[peers]
        return steps_per_epoch(counts, self.batch_size)

    def warm_up(self, params: torch.Tensor) -> None:
        """One gradient evaluation for one peer, discarded: triggers torch.func's one-time set-up."""
        samples = self.data.table[:1, : min(self.batch_size, int(self.data.counts[0]))]
        keys = dropout_keys(self.seed, 0, 0, 0, self.data.ids[:1])
        device = params.device
        x, y = self.data.x[samples.to(device)], self.data.y[samples.to(device)]
        self._grad(params[:1], x, y, torch.ones(samples.shape, device=device), keys.to(device))

    def train(
        self,
        params: torch.Tensor,
        round_: int,
        peers: torch.Tensor | None = None,
        *,
        anchor: Anchor | None = None,
        private: PrivateSteps | None = None,
    ) -> torch.Tensor:
        """Train the rows where the mask `peers` is set (all when None), updating `params` in place."""
        rows = torch.arange(params.shape[0]) if peers is None else peers.nonzero().flatten()
        if rows.numel() == 0 or int(self.data.counts[rows].max()) == 0:
            return params
        footprint = self.per_sample + (
            self.layout.size if private else 0
        )  # DP-SGD holds per-sample gradients
        chunks = peer_chunks(rows.numel(), 3 * self.batch_size, footprint)
        if len(chunks) == 1 and rows.numel() == params.shape[0]:
            return self._train_rows(params, rows, round_, anchor, private)  # everyone, in place
        for chunk in chunks:
            params[rows[chunk]] = self._train_rows(params[rows[chunk]], rows[chunk], round_, anchor, private)
        return params

    def _train_rows(self, params, rows, round_, anchor, private) -> torch.Tensor:
        """Train data rows `rows` from `params` (their parameters, updated in place).

        The batches are chosen on the host (sample tables and counts live there) and sent to the
        parameters' device as indices and masks; nothing comes back until the round is evaluated."""
        counts, table, ids = self.data.counts[rows], self.data.table[rows], self.data.ids[rows]
        own_steps = self.steps_per_epoch(rows).unsqueeze(1)
        device = params.device
        state = self.optimizer.init_state(params)
        shuffled = private is None or private.sampling == "shuffle"  # Poisson batches need no epoch order
        for epoch in range(self.epochs):
            order = epoch_order(counts, ids, self.seed, round_, epoch) if shuffled else None
            for step in range(int(own_steps.max())):
                masks = dropout_keys(self.seed, round_, epoch, step, ids).to(device)
                if private is None:
                    positions = order[:, step * self.batch_size : (step + 1) * self.batch_size]
                    valid = positions < counts.unsqueeze(1)
                    samples = table.gather(1, positions.clamp(max=table.shape[1] - 1)).to(device)
                    x, y = self.data.x[samples], self.data.y[samples]
                    grads = self._grad(params, x, y, valid.float().to(device), masks)
                else:
                    keys = (round_, epoch, step)
                    grads = self._private_gradients(params, rows, counts, table, order, keys, masks, private)
                if anchor is not None:
                    grads = grads + anchor.gradient(params, rows)
                active = (step < own_steps).float().to(device)
                self.optimizer.step(params, grads, state, active, self.lr)
        return params

    def _private_gradients(self, params, rows, counts, table, order, keys, masks, private) -> torch.Tensor:
        """DP-SGD: Σ clip(per-sample gradient) + N(0, (z·C)²), divided by the (expected) batch size.

        `keys` are (round, epoch, step); the batch and the noise of each peer are drawn from its own
        counter-based stream (:func:`ppaia.seeding.peer_uniform`), whatever else is trained with it.
        `masks` are the peers' dropout keys: sample k of a batch draws the masks it would in the batch.
        The batches and the noise are drawn on the host, as every keyed draw is (a seed gives the same
        run on any device), and sent to the parameters' device.
        """
        ids, step = self.data.ids[rows], keys[-1]
        if private.sampling == "poisson":  # each sample joins with probability B/n, independently
            rate = poisson_rate(counts, self.batch_size)
            draws = peer_uniform(derive_seed(private.seed, Stream.PRIVACY, *keys, 0), ids, table.shape[1])
            joined = (draws < rate.unsqueeze(1)) & (torch.arange(table.shape[1]) < counts.unsqueeze(1))
            sizes = joined.sum(1)
            width = max(1, int(sizes.max()))
            positions = (~joined).byte().argsort(dim=1, stable=True)[:, :width]  # members first, in order
            valid = torch.arange(width) < sizes.unsqueeze(1)
            denominator = (rate * counts).clamp(min=1).unsqueeze(1)  # expected batch size
        else:
            positions = order[:, step * self.batch_size : (step + 1) * self.batch_size]
            valid = positions < counts.unsqueeze(1)
            denominator = valid.sum(1, keepdim=True).clamp(min=1)
        device = params.device
        samples = table.gather(1, positions.clamp(max=table.shape[1] - 1)).to(device)
        x, y = self.data.x[samples], self.data.y[samples]
        places = torch.arange(samples.shape[1], device=device)
        per_sample = self._sample_grads(params, x, y, masks, places)  # [M, B, D]
        clipped = (clip_rows(per_sample, private.clip) * valid.to(device).unsqueeze(-1)).sum(1)
        noise_key = derive_seed(private.seed, Stream.PRIVACY, *keys, 1)
        noise = peer_normal(noise_key, ids, clipped.shape[1], clipped.dtype)
        noise = private.noise[rows].unsqueeze(1) * private.clip * noise
        return (clipped + noise.to(device)) / denominator.to(device, clipped.dtype)  # Poisson's is float64
