"""Counter-based per-peer randomness: SplitMix64 bit for bit, keyed only by (key, peer, position)."""

import math

import pytest
import torch

from ppaia.seeding import Stream, derive_seed, peer_bits, peer_normal, peer_uniform

MASK = 2**64 - 1
GAMMA = 0x9E3779B97F4A7C15


def splitmix64(state: int) -> int:
    """The published SplitMix64 output function, on Python integers."""
    z = state & MASK
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & MASK
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & MASK
    return z ^ (z >> 31)


def reference_bits(key: int, peer: int, position: int) -> int:
    """Word `position` of peer `peer`'s stream, as a signed 64-bit integer."""
    peer_key = splitmix64(key + (peer + 1) * GAMMA)
    word = splitmix64(peer_key + (position + 1) * GAMMA)
    return word - 2**64 if word >= 2**63 else word


KEYS = [0, 1, 2**62 + 12345, 2**63 - 1, derive_seed(7, Stream.PRIVACY, 3, 1)]
PEERS = torch.tensor([0, 1, 5, 999, 2**40 + 3])


@pytest.mark.parametrize("key", KEYS)
def test_bits_are_splitmix64_of_key_peer_and_position(key):
    bits = peer_bits(key, PEERS, 9)
    for row, peer in enumerate(PEERS.tolist()):
        assert bits[row].tolist() == [reference_bits(key, peer, j) for j in range(9)]


@pytest.mark.parametrize("key", KEYS)
def test_a_peers_draws_ignore_the_other_rows_and_the_width(key):
    for draw in (peer_bits, peer_uniform, peer_normal):
        wide = draw(key, PEERS, 40)
        for row, peer in enumerate(PEERS.tolist()):
            alone = draw(key, torch.tensor([peer]), 40)[0]
            torch.testing.assert_close(alone, wide[row], rtol=0, atol=0)
        if draw is not peer_normal:  # a normal's sine half starts at ⌈width / 2⌉
            assert torch.equal(draw(key, PEERS.flip(0), 17), wide.flip(0)[:, :17])


def test_blocks_do_not_change_the_draws(monkeypatch):
    """Many rows are drawn block by block; a draw does not depend on which block its row falls in."""
    peers = torch.arange(50) * 7
    whole = peer_normal(3, peers, 101), peer_uniform(3, peers, 101)
    monkeypatch.setattr("ppaia.seeding._BLOCK", 64)
    for before, after in zip(whole, (peer_normal(3, peers, 101), peer_uniform(3, peers, 101)), strict=True):
        torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniforms_are_uniform_on_the_half_open_unit_interval(dtype):
    draws = peer_uniform(11, torch.arange(200), 1000, dtype)
    assert draws.dtype == dtype and draws.min() >= 0 and draws.max() < 1
    counts = torch.histc(draws.double(), bins=20, min=0, max=1)
    expected = draws.numel() / 20
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 45  # 19 degrees of freedom: P(χ² > 45) ≈ 7e-4
    assert not torch.equal(draws, peer_uniform(12, torch.arange(200), 1000, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [1, 2, 999])
def test_normals_are_standard_normal(dtype, width):
    rows = max(1, 200_000 // width)
    draws = peer_normal(5, torch.arange(rows), width, dtype)
    assert draws.shape == (rows, width) and draws.dtype == dtype
    flat = draws.double().flatten().sort().values
    n = flat.numel()
    cdf = torch.special.ndtr(flat)
    ks = torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(n) / n).max().item()
    assert ks < 1.95 / math.sqrt(n)  # Kolmogorov–Smirnov at the 0.1 % level
    if width > 1:  # the cosine and sine halves of one word are uncorrelated
        half = (width + 1) // 2
        pairs = torch.stack([draws[:, : width - half].flatten(), draws[:, half:].flatten()]).double()
        assert abs(torch.corrcoef(pairs)[0, 1].item()) < 4 / math.sqrt(pairs.shape[1])


def test_no_rows_and_no_width_give_empty_draws():
    assert peer_uniform(1, torch.zeros(0, dtype=torch.long), 5).shape == (0, 5)
    assert peer_normal(1, torch.arange(3), 0).shape == (3, 0)
