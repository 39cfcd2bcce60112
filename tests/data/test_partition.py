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
