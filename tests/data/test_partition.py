"""Partitioners: disjointness, minimum sizes, determinism, skew and scale."""

import time

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from ppaia.data import PARTITIONERS, Partitioner, PartitionError, label_histogram

SPECS = ["iid", "dirichlet(0.5)", "dirichlet(0.05)", "shards", "shards(k=3)", "quantity", "quantity(0.2)"]


def random_labels(n: int = 2000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    hist = label_histogram(labels, parts, int(labels.max()) + 1).astype(float)
    p = hist / hist.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nansum(-p * np.log(p), axis=1).mean())


def test_registry_has_every_partitioner() -> None:
    assert set(PARTITIONERS.names()) >= {"iid", "dirichlet", "shards", "quantity"}
    for _, cls in PARTITIONERS:
        assert issubclass(cls, Partitioner) and cls.__doc__


@pytest.mark.parametrize(
    ("spec", "option"), [("dirichlet(alpha=0)", "alpha"), ("shards(0)", "k"), ("quantity(-1)", "alpha")]
)
def test_bad_options_name_the_option(spec: str, option: str) -> None:
    with pytest.raises(ValidationError, match=option):
        PARTITIONERS.create(spec)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("min_samples", [1, 10])
def test_parts_are_valid_and_deterministic(spec: str, min_samples: int) -> None:
    labels = random_labels()
    partitioner = PARTITIONERS.create(spec)
    parts = partitioner.split(labels, n_peers=20, seed=1, min_samples=min_samples)
    assert len(parts) == 20
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined) <= len(labels)  # disjoint, covers at most n
    assert joined.min() >= 0 and joined.max() < len(labels)
    assert min(len(p) for p in parts) >= min_samples
    again = partitioner.split(labels, n_peers=20, seed=1, min_samples=min_samples)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partitioner.split(labels, n_peers=20, seed=2, min_samples=min_samples)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


@pytest.mark.parametrize("spec", ["iid", "dirichlet(0.3)", "quantity"])
def test_full_cover_partitioners_use_every_sample(spec: str) -> None:
    labels = random_labels(1001)
    parts = PARTITIONERS.create(spec).split(labels, n_peers=7, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1001))


def test_iid_sizes_are_near_equal() -> None:
    sizes = [len(p) for p in PARTITIONERS.create("iid").split(random_labels(1003), 10, seed=0)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1003


def test_dirichlet_skew_follows_alpha() -> None:
    labels = random_labels(5000)
    entropy = {
        spec: mean_label_entropy(labels, PARTITIONERS.create(spec).split(labels, 50, seed=0))
        for spec in ("iid", "dirichlet(0.1)", "dirichlet(1.0)", "dirichlet(100)")
    }
    assert entropy["dirichlet(0.1)"] < 0.5 * entropy["iid"]
    assert entropy["dirichlet(0.1)"] < entropy["dirichlet(1.0)"] < entropy["dirichlet(100)"]
    assert entropy["dirichlet(100)"] > 0.9 * entropy["iid"]


def test_dirichlet_repair_tops_up_small_peers_from_large_ones() -> None:
    labels = random_labels(1000)
    partitioner = PARTITIONERS.create("dirichlet(0.05)")
    raw = [len(p) for p in partitioner.split(labels, 20, seed=0, min_samples=0)]
    repaired = [len(p) for p in partitioner.split(labels, 20, seed=0, min_samples=40)]
    assert min(raw) < 40 <= min(repaired) and sum(repaired) == 1000
    assert max(repaired) < max(raw)  # the surplus came from the largest peer(s)


def test_shards_give_few_labels_per_peer() -> None:
    aligned = np.repeat(np.arange(10), 100)  # sorted, 100 per class -> shards of 10 never straddle classes
    hist = label_histogram(aligned, PARTITIONERS.create("shards(k=2)").split(aligned, 50, seed=0), 10)
    assert (hist > 0).sum(1).max() <= 2
    ragged = np.repeat(np.arange(10), 97)
    parts = PARTITIONERS.create("shards(k=2)").split(ragged, 30, seed=0)
    distinct = (label_histogram(ragged, parts, 10) > 0).sum(1)
    assert distinct.max() <= 4 and distinct.mean() <= 3
    assert {len(p) for p in parts} == {2 * (970 // 60)}  # leftover samples are dropped


def test_quantity_gives_unequal_sizes_with_iid_labels() -> None:
    labels = random_labels(5000)
    parts = PARTITIONERS.create("quantity(0.5)").split(labels, 20, seed=0, min_samples=5)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 5 and sizes.max() > 4 * sizes.min() and sizes.sum() == 5000
    big = [p for p in parts if len(p) >= 200]
    assert mean_label_entropy(labels, big) > 0.9 * np.log(10)


@pytest.mark.parametrize("spec", SPECS)
def test_impossible_minimum_raises_with_numbers(spec: str) -> None:
    with pytest.raises(PartitionError, match=r"100 samples .* 30 peers"):
        PARTITIONERS.create(spec).split(random_labels(100), n_peers=30, seed=0, min_samples=4)


def test_shards_too_small_raise() -> None:
    with pytest.raises(PartitionError, match="0 samples per shard"):
        PARTITIONERS.create("shards(k=4)").split(random_labels(100), n_peers=30, seed=0)
    with pytest.raises(PartitionError, match="8 per peer; need at least 10"):
        PARTITIONERS.create("shards(k=4)").split(random_labels(119), n_peers=10, seed=0, min_samples=10)


def test_bad_arguments_raise() -> None:
    with pytest.raises(PartitionError, match="1-D integer"):
        PARTITIONERS.create("iid").split(np.zeros((4, 2), dtype=int), n_peers=2, seed=0)
    with pytest.raises(PartitionError, match="n_peers"):
        PARTITIONERS.create("iid").split(random_labels(10), n_peers=0, seed=0)


def test_accepts_torch_labels() -> None:
    labels = torch.from_numpy(random_labels(200))
    parts = PARTITIONERS.create("dirichlet").split(labels, 5, seed=0)
    assert sum(len(p) for p in parts) == 200


def test_dirichlet_scales_to_10000_peers() -> None:
    labels = random_labels(200_000)
    start = time.perf_counter()
    parts = PARTITIONERS.create("dirichlet(0.5)").split(labels, n_peers=10_000, seed=0, min_samples=2)
    elapsed = time.perf_counter() - start
    sizes = np.array([len(p) for p in parts])
    assert len(parts) == 10_000 and sizes.min() >= 2 and sizes.sum() == 200_000
    assert len(np.unique(np.concatenate(parts))) == 200_000
    assert elapsed < 5.0  # takes well under a second; generous for slow CI machines


def test_label_histogram_rows_sum_to_part_sizes() -> None:
    labels = random_labels(500, classes=4)
    parts = PARTITIONERS.create("dirichlet(0.2)").split(labels, 6, seed=0)
    hist = label_histogram(labels, parts, 4)
    assert hist.shape == (6, 4) and np.issubdtype(hist.dtype, np.integer)
    np.testing.assert_array_equal(hist.sum(1), [len(p) for p in parts])
    np.testing.assert_array_equal(hist.sum(0), np.bincount(labels, minlength=4))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        label_histogram(labels, parts, 3)


# --------------------------------------------------------------------------------------------------
# by_group: natural partitions (one writer, user or site per peer)


def random_groups(n: int = 1000, n_groups: int = 12, seed: int = 0) -> np.ndarray:
    """Group ids of uneven sizes, every group present."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, n - n_groups) ** 2 % n_groups])


def test_by_group_with_one_peer_per_group_gives_peer_i_group_i() -> None:
    groups = random_groups()
    labels = random_labels(len(groups))
    parts = PARTITIONERS.create("by_group").split(labels, 12, seed=3, groups=groups)
    for peer, part in enumerate(parts):
        np.testing.assert_array_equal(part, np.flatnonzero(groups == peer))


@pytest.mark.parametrize("n_peers", [1, 5, 11])
@pytest.mark.parametrize("seed", [0, 1])
def test_by_group_with_fewer_peers_deals_whole_groups_round_robin(n_peers: int, seed: int) -> None:
    groups = random_groups(seed=seed)
    split = PARTITIONERS.create("by_group").split
    parts = split(random_labels(len(groups)), n_peers, seed=seed, groups=torch.from_numpy(groups))
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(groups)))
    held = [set(groups[part].tolist()) for part in parts]
    assert sorted(g for peer in held for g in peer) == list(range(12))  # each group on exactly one peer
    assert {len(peer) for peer in held} <= {12 // n_peers, -(-12 // n_peers)}  # round-robin counts
    again = split(random_labels(len(groups)), n_peers, seed=seed, groups=groups)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    if n_peers > 1:
        others = [split(random_labels(len(groups)), n_peers, seed=s, groups=groups) for s in range(10, 13)]
        assert any(not all(np.array_equal(a, b) for a, b in zip(parts, o, strict=True)) for o in others)


def test_by_group_numbers_arbitrary_group_values_in_sorted_order() -> None:
    groups = np.array([50, 7, 50, -3, 7, 7])
    parts = PARTITIONERS.create("by_group").split(np.zeros(6, dtype=int), 3, seed=0, groups=groups)
    assert [p.tolist() for p in parts] == [[3], [1, 4, 5], [0, 2]]


def test_by_group_refuses_what_it_cannot_do() -> None:
    by_group = PARTITIONERS.create("by_group")
    groups = random_groups(100, n_groups=4)
    labels = random_labels(100)
    with pytest.raises(PartitionError, match=r"no group column/array; give csv\(group_column=...\)"):
        by_group.split(labels, 4, seed=0)
    with pytest.raises(PartitionError, match="has 4 groups, fewer than the 5 peers; set peers to at most 4"):
        by_group.split(labels, 5, seed=0, groups=groups)
    with pytest.raises(PartitionError, match="groups for labels"):
        by_group.split(labels, 2, seed=0, groups=groups[:50])
    small = np.array([0] * 30 + [1] * 2 + [2] * 30)
    with pytest.raises(PartitionError, match=r"peer 1 \(group 1\) gets 2 samples; need min_samples=3"):
        by_group.split(np.zeros(62, dtype=int), 3, seed=0, min_samples=3, groups=small)


@pytest.mark.parametrize("spec", SPECS)
def test_label_partitioners_ignore_groups(spec: str) -> None:
    labels = random_labels(500)
    partitioner = PARTITIONERS.create(spec)
    plain = partitioner.split(labels, 7, seed=2)
    grouped = partitioner.split(labels, 7, seed=2, groups=random_groups(500))
    assert all(np.array_equal(a, b) for a, b in zip(plain, grouped, strict=True))
