"""Dropout with keyed masks: each mask is a hash of (seed, round, epoch, step, peer id, call, position).

The batched trainer runs every peer's forward pass under one ``torch.func.vmap``. vmap's own randomness
(``randomness="different"``) draws the whole batch's masks from the global generator in one block, so a
peer's mask would depend on which peers, and how many, are batched with it, and a networked peer training
its own row alone would not draw what the simulator draws for that row. Here each peer's forward pass gets
a 0-d int64 key (:func:`dropout_keys`, counter-based like every per-peer draw in :mod:`ppaia.seeding`);
each dropout call mixes it with its call number (so a layer called twice, or two layers, draw apart) and
hashes it with the positions of its input's elements, all in SplitMix64's elementwise int64 ops, which
vmap batches.

Positions are row-major with the batch first, so an element's mask depends on its sample's place in the
batch and nothing else: a peer's real samples (first; padding rows come after) get the same masks whether
its batch was padded to the widest peer's or not, and DP-SGD's one-sample forward passes (``offset`` = the
sample's place in the batch) draw what the whole batch's pass would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ppaia.seeding import _GAMMA, Stream, _mix, _shift, derive_seed, peer_bits

__all__ = ["DropoutKey", "KeyedDropout", "dropout_keys", "keyed_dropout"]

_ALPHA = 1.7580993408473766  # SELU's −λα: what alpha dropout sets a dropped unit to (as torch)
_BITS = 53  # uniform bits compared against p (as many as a float64 holds)

# torch.nn's dropout layers: (one mask per channel rather than per element, alpha dropout)
_KINDS: dict[type[nn.Module], tuple[bool, bool]] = {
    nn.Dropout: (False, False),
    nn.Dropout1d: (True, False),
    nn.Dropout2d: (True, False),
    nn.Dropout3d: (True, False),
    nn.AlphaDropout: (False, True),
    nn.FeatureAlphaDropout: (True, True),
}


def _int64(value: int) -> int:
    """`value` wrapped to a signed 64-bit integer (as torch's int64 arithmetic wraps)."""
    return (value + 2**63) % 2**64 - 2**63


def dropout_keys(seed: int, round_: int, epoch: int, step: int, ids: torch.Tensor) -> torch.Tensor:
    """The dropout key ([P] int64) of each peer in `ids` for one optimizer step: its own, whatever else
    is computed with it (:func:`ppaia.seeding.peer_bits`)."""
    return peer_bits(derive_seed(seed, Stream.DROPOUT, round_, epoch, step), ids, 1)[:, 0]


class DropoutKey:
    """The key a model's keyed dropout layers read during one forward pass; none (evaluation) makes them
    the identity, as `nn.Dropout` is in eval mode."""

    def __init__(self) -> None:
        self.key: torch.Tensor | None = None
        self.offset: torch.Tensor | int = 0
        self.calls = 0

    @contextmanager
    def __call__(self, key: torch.Tensor, offset: torch.Tensor | int = 0) -> Iterator[None]:
        """Dropout on, with `key` (0-d int64, or vmapped), for the forward pass run inside; `offset` is
        the place in the batch of the pass's first sample."""
        self.key, self.offset, self.calls = key, offset, 0
        try:
            yield
        finally:
            self.key, self.offset = None, 0

    def bits(self, size: int) -> torch.Tensor | None:
        """64 random bits (int64) for each of the next dropout call's `size` mask entries, None when off."""
        if self.key is None:
            return None
        self.calls += 1
        call_key = _mix(self.key + _int64(self.calls * _GAMMA))
        positions = torch.arange(1, size + 1, device=self.key.device) + self.offset * size
        return _mix(positions * _GAMMA + call_key)


class KeyedDropout(nn.Module):
    """A torch dropout layer (plain, channel-wise or alpha) whose mask comes from a :class:`DropoutKey`.

    It has no parameters nor buffers, so swapping it in leaves a model's parameter layout as it was.
    """

    def __init__(self, p: float, source: DropoutKey, *, channels: bool = False, alpha: bool = False) -> None:
        super().__init__()
        self.p, self.source, self.channels, self.alpha = p, source, channels, alpha
        self._threshold = round(p * 2**_BITS)  # keep an entry when its top 53 bits reach this

    def extra_repr(self) -> str:
        return f"p={self.p}, channels={self.channels}, alpha={self.alpha}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channel-wise: one draw per (sample, channel), as torch's feature dropout
        shape = (*x.shape[:2], *[1] * (x.dim() - 2)) if self.channels else tuple(x.shape)
        bits = self.source.bits(math.prod(shape))
        if bits is None:
            return x
        if self.p == 1:
            return x * 0.0  # as torch: every unit dropped, whatever the variant
        keep = (_shift(bits, 64 - _BITS) >= self._threshold).view(shape).to(x.dtype)
        if not self.alpha:
            return x * keep * (1.0 / (1.0 - self.p))
        # torch's alpha dropout: kept units a·x, dropped ones a·(−λα); then shifted back to mean zero
        a = 1.0 / math.sqrt((_ALPHA**2 * self.p + 1) * (1 - self.p))
        return x * keep * a + (keep - 1) * (_ALPHA * a) + _ALPHA * a * self.p


def keyed_dropout(model: nn.Module) -> DropoutKey | None:
    """Swap, in place, each of torch.nn's dropout layers in `model` for a :class:`KeyedDropout`; the key
    they all read, or None when `model` has none. A layer registered at several places stays one layer."""
    source, swapped = DropoutKey(), {}
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            kind = _KINDS.get(type(child))
            if kind is None:
                continue
            if id(child) not in swapped:
                swapped[id(child)] = KeyedDropout(child.p, source, channels=kind[0], alpha=kind[1])
            setattr(parent, name, swapped[id(child)])
    return source if swapped else None
