"""Derived random streams: every random choice in a run comes from (seed, stream, *keys).

Separate streams keep choices independent of each other (adding an evaluation does not shift the data
order), and let the batched engine and the per-peer reference executor draw identical numbers.
"""

from __future__ import annotations

import enum

import numpy as np
import torch

__all__ = ["Stream", "derive_seed", "generator"]


class Stream(enum.IntEnum):
    """Independent purposes for randomness within one run."""

    INIT = 1
    DATA_ORDER = 2
    RULE = 3
    PARTITION = 5
    TOPOLOGY = 6
    ATTACK = 7
    HOLDOUT = 8
    PRIVACY = 9
    FISHER = 10


def derive_seed(seed: int, stream: Stream, *keys: int) -> int:
    """A 63-bit seed that depends only on the run seed, the stream and the keys (e.g. round, peer)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, int(stream), *keys])
    return (
        int(state.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1, 2**32], np.uint64)) >> 1
    )


def generator(seed: int, stream: Stream, *keys: int) -> torch.Generator:
    """A CPU torch generator seeded from :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, stream, *keys))
