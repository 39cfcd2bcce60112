"""Derived random streams: every random choice in a run comes from (seed, stream, *keys).

Separate streams keep choices independent of each other (adding an evaluation does not shift the data
order), and let the batched engine and the per-peer reference executor draw identical numbers.

Draws for one peer's own work (its data order, DP-SGD batches and noise, update-DP noise, EWC's Fisher
samples, an attacker's noise) are *counter-based* (:func:`peer_uniform`, :func:`peer_normal`): each number
is a hash of (derived key, peer id, position). A peer's numbers therefore depend neither on how many peers
are computed with it, nor on their order, their sample counts, or how the batch is split into chunks, so
a networked peer that holds only its own row draws exactly what the simulator draws for that row. A shared
``torch.Generator`` hands out numbers in sequence, and the numbers of row i would shift with every row
before it. Choices about the swarm as a whole (partition, topology, rule plans, attackers) keep
:func:`generator`.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import torch

__all__ = ["Stream", "derive_seed", "generator", "peer_bits", "peer_normal", "peer_uniform"]


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
    DROPOUT = 11
    EVALUATION = 12
    CHURN = 13  # who is in an open swarm each round (ppaia.churn)


def derive_seed(seed: int, stream: Stream, *keys: int) -> int:
    """A 63-bit seed that depends only on the run seed, the stream and the keys (e.g. round, peer)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, int(stream), *keys])
    return (
        int(state.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1, 2**32], np.uint64)) >> 1
    )


def generator(seed: int, stream: Stream, *keys: int) -> torch.Generator:
    """A CPU torch generator seeded from :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, stream, *keys))


# SplitMix64 (Steele, Lea & Flood 2014): a Weyl sequence state + k·γ through the mixer below. Constants as
# signed int64 (torch has no unsigned 64-bit arithmetic); multiplication and addition wrap as unsigned ones.
_GAMMA = 0x9E3779B97F4A7C15 - 2**64
_MIX = (0xBF58476D1CE4E5B9 - 2**64, 0x94D049BB133111EB - 2**64)
_BLOCK = 2**18  # elements hashed at once: small temporaries stay in cache and avoid fresh page faults


def _shift_xor(z: torch.Tensor, bits: int) -> torch.Tensor:
    """z ^= z >>> bits, in place (a logical shift: int64's copies the sign bit, so it is masked off)."""
    return z.bitwise_xor_(_shift(z, bits))


def _shift(z: torch.Tensor, bits: int) -> torch.Tensor:
    """z >>> bits: the logical right shift (the operator `z >> bits` measured several times slower)."""
    return torch.bitwise_right_shift(z, bits).bitwise_and_((1 << (64 - bits)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function, in place: a bijection of 64-bit words with full avalanche."""
    _shift_xor(z, 30).mul_(_MIX[0])
    _shift_xor(z, 27).mul_(_MIX[1])
    return _shift_xor(z, 31)


def peer_bits(key: int, peers: torch.Tensor, width: int) -> torch.Tensor:
    """64 random bits (int64) for each (peer, position): ``[len(peers), width]``.

    Entry (p, j) is a function of (`key`, ``peers[p]``, j) only: SplitMix64 number j + 1 of the peer's own
    stream, whose seed is number ``peers[p] + 1`` of the stream seeded by `key` (e.g. a
    :func:`derive_seed`). Widening the table, adding peers or computing rows apart never changes an entry.
    """
    peer_keys = _mix(peers.to(torch.long).add(1).mul_(_GAMMA).add_(key))
    positions = torch.arange(1, width + 1, dtype=torch.long).mul_(_GAMMA)
    return _mix(peer_keys.unsqueeze(1) + positions)


def _by_blocks(peers: torch.Tensor, width: int, out: torch.Tensor, fill) -> torch.Tensor:
    """Fill `out` ([P, ...]) block of rows by block: `fill(rows, out[rows])` for rows of ≈ _BLOCK entries."""
    step = max(1, _BLOCK // max(1, width))
    for start in range(0, len(peers), step):
        rows = slice(start, start + step)
        fill(peers[rows], out[rows])
    return out


def peer_uniform(
    key: int, peers: torch.Tensor, width: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Uniforms in [0, 1) for each (peer, position), ``[len(peers), width]``, keyed as :func:`peer_bits`.

    float64 gets 53 random bits, float32 24 (other dtypes are not exact): none rounds up to 1.
    """
    mantissa = 53 if dtype == torch.float64 else 24

    def fill(rows: torch.Tensor, out: torch.Tensor) -> None:
        top = _shift(peer_bits(key, rows, width), 64 - mantissa)
        torch.mul(top.to(dtype), 2.0**-mantissa, out=out)

    return _by_blocks(peers, width, torch.empty(len(peers), width, dtype=dtype), fill)


def peer_normal(
    key: int, peers: torch.Tensor, width: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normals for each (peer, position), ``[len(peers), width]``, keyed as :func:`peer_bits`.

    Box–Muller in float32 on two 23-bit uniforms from each 64-bit word (so |z| < 5.7), as fast as
    torch.randn: word j of a peer gives positions j (cosine) and j + ⌈width/2⌉ (sine). Other dtypes are
    rounded from float32.
    """
    half = (width + 1) // 2

    def fill(rows: torch.Tensor, out: torch.Tensor) -> None:
        # each word's two 32-bit halves (low first: every platform torch runs on is little-endian), their
        # top 23 bits made the mantissa of a float32 in [1, 2): no integer-to-float conversion
        halves = peer_bits(key, rows, half).view(torch.int32)
        mantissa = torch.bitwise_right_shift(halves, 9).bitwise_and_(2**23 - 1)
        unit = mantissa.bitwise_or_(_FLOAT32_ONE).view(torch.float32).view(len(rows), half, 2)
        radius = torch.rsub(unit[..., 1], 2.0).log_().mul_(-2.0).sqrt_()  # 2 − [1, 2) = (0, 1]
        angle = unit[..., 0].sub(1.0).mul_(2 * math.pi)
        torch.mul(radius, angle.cos(), out=out[:, :half])
        torch.mul(radius[:, : width - half], angle[:, : width - half].sin_(), out=out[:, half:])

    return _by_blocks(peers, half, torch.empty(len(peers), width, dtype=dtype), fill)


_FLOAT32_ONE = 0x3F800000  # the bits of 1.0f
