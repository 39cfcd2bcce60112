"""The majority partitioner: each group of peers holds most of its group's classes (the EWC split)."""

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.datasets import load_digits

from ppaia.data import PARTITIONERS, Partitioner, PartitionError, label_histogram

DIGITS = load_digits().target.astype(np.int64)


def class_shares(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Fraction of each class held by each peer, [n_peers, n_classes]."""
    hist = label_histogram(labels, parts, int(labels.max()) + 1)
    return hist / np.bincount(labels)


def test_registry_lists_majority_with_a_one_line_summary() -> None:
    assert "majority" in PARTITIONERS.names()
    cls = PARTITIONERS.get("majority")
    assert issubclass(cls, Partitioner) and cls.__doc__.splitlines()[0].strip()
    assert PARTITIONERS.create("majority").spec() == {
        "name": "majority",
        "groups": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]],
        "share": 0.9,
    }
    assert PARTITIONERS.create("majority(share=0.7)").share == 0.7


@pytest.mark.parametrize(
    ("spec", "option"),
    [("majority(share=0)", "share"), ("majority(share=1.5)", "share"), ("majority([[0, 1], [1]])", "groups")],
)
def test_bad_options_name_the_option(spec: str, option: str) -> None:
    with pytest.raises(ValidationError, match=option):
        PARTITIONERS.create(spec)


def test_two_peers_get_the_ewc_90_10_split_of_digits() -> None:
    parts = PARTITIONERS.create("majority").split(DIGITS, n_peers=2, seed=0)
    shares = class_shares(DIGITS, parts)
    np.testing.assert_allclose(shares[0, :5], 0.9, atol=0.01)
    np.testing.assert_allclose(shares[0, 5:], 0.1, atol=0.01)
    np.testing.assert_allclose(shares[1], 1 - shares[0])
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(DIGITS)))  # every sample used


def test_ten_peers_each_group_holds_its_share_evenly() -> None:
    parts = PARTITIONERS.create("majority").split(DIGITS, n_peers=10, seed=0)
    shares = class_shares(DIGITS, parts)
    even, odd = shares[0::2], shares[1::2]  # group 0 = peers 0, 2, ...; group 1 = peers 1, 3, ...
    np.testing.assert_allclose(even[:, :5].sum(0), 0.9, atol=0.01)
    np.testing.assert_allclose(odd[:, 5:].sum(0), 0.9, atol=0.01)
    np.testing.assert_allclose(odd[:, :5].sum(0), 0.1, atol=0.01)
    hist = label_histogram(DIGITS, parts, 10)
    for members, classes in ((slice(0, None, 2), slice(0, 5)), (slice(1, None, 2), slice(5, 10))):
        block = hist[members, classes]
        assert (block.max(0) - block.min(0) <= 1).all()  # evenly within the group, per class
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() - sizes.min() <= 5


def test_classes_in_no_group_are_spread_over_all_peers_and_share_one_is_exclusive() -> None:
    labels = np.repeat(np.arange(4), 60)
    parts = PARTITIONERS.create("majority(groups=[[0], [1, 2]], share=1.0)").split(labels, 4, seed=3)
    hist = label_histogram(labels, parts, 4)
    assert hist[:, 0].tolist() == [30, 0, 30, 0]
    assert hist[:, 1].tolist() == [0, 30, 0, 30] and hist[:, 2].tolist() == [0, 30, 0, 30]
    assert hist[:, 3].tolist() == [15, 15, 15, 15]


def test_fewer_peers_than_groups_still_uses_every_sample() -> None:
    parts = PARTITIONERS.create("majority(groups=[[0], [1], [2]])").split(DIGITS, 2, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(DIGITS)))
    parts = PARTITIONERS.create("majority").split(DIGITS, 1, seed=0)
    assert len(parts[0]) == len(DIGITS)


@pytest.mark.parametrize("n_peers", [2, 7, 20])
def test_parts_are_disjoint_sorted_and_deterministic(n_peers: int) -> None:
    partitioner = PARTITIONERS.create("majority(share=0.8)")
    parts = partitioner.split(DIGITS, n_peers, seed=1, min_samples=10)
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined) == len(DIGITS)
    assert min(len(p) for p in parts) >= 10
    again = partitioner.split(DIGITS, n_peers, seed=1, min_samples=10)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partitioner.split(DIGITS, n_peers, seed=2, min_samples=10)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_min_samples_that_cannot_be_met_is_an_error_with_the_numbers() -> None:
    # 10 peers, only class 0 (group 0): the odd peers get 10 % of it, about 4 samples each.
    labels = np.zeros(200, dtype=np.int64)
    with pytest.raises(PartitionError, match=r"only \d+ of 200 samples.*min_samples=10"):
        PARTITIONERS.create("majority").split(labels, 10, seed=0, min_samples=10)
    with pytest.raises(PartitionError, match="needs 2000"):
        PARTITIONERS.create("majority").split(DIGITS, 10, seed=0, min_samples=200)
