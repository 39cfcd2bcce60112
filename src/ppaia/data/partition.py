"""Splitting a training set among peers: IID, label skew (Dirichlet, shards, majority), size skew (quantity),
and natural groups (by_group: one writer, user or site per peer).

A :class:`Partitioner` turns a label vector into one index array per peer. Parts are disjoint, sorted,
deterministic given the seed, and each holds at least ``min_samples`` indices; when that is impossible a
:class:`PartitionError` says why, with the numbers.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
from pydantic import Field, field_validator

from ppaia.registry import Component, Registry

__all__ = ["PARTITIONERS", "PartitionError", "Partitioner", "label_histogram"]


class PartitionError(ValueError):
    """The samples cannot be split among the peers as asked (too few samples, shards too small, ...)."""


class Partitioner(Component):
    """A registered way of dealing sample indices to peers."""

    def split(
        self,
        labels: np.ndarray,
        n_peers: int,
        seed: int,
        min_samples: int = 1,
        *,
        groups: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """One sorted int64 index array (into ``labels``) per peer: disjoint, each of size >= ``min_samples``.

        The same ``labels``, ``n_peers``, ``seed`` and ``min_samples`` always give the same parts.
        ``groups`` (one group id per sample, the dataset's ``groups_train``) is used by ``by_group`` only.
        """
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise PartitionError(f"labels must be a 1-D integer array, got {labels.ndim}-D {labels.dtype}")
        if n_peers < 1 or min_samples < 0:
            raise PartitionError(f"need n_peers >= 1 and min_samples >= 0, got {n_peers} and {min_samples}")
        if len(labels) < n_peers * min_samples:
            raise PartitionError(
                f"{len(labels)} samples cannot give {n_peers} peers {min_samples} each "
                f"(peers × min_samples needs {n_peers * min_samples})"
            )
        owner = self._assign(labels, n_peers, np.random.default_rng(seed), min_samples)
        return _groups(owner, n_peers)

    @abstractmethod
    def _assign(
        self, labels: np.ndarray, n_peers: int, rng: np.random.Generator, min_samples: int
    ) -> np.ndarray:
        """Owner peer of each sample (-1 = dropped); called with validated arguments and enough samples."""


PARTITIONERS: Registry[Partitioner] = Registry("partitioner")


def _groups(owner: np.ndarray, n_peers: int) -> list[np.ndarray]:
    """Indices of the samples owned by each peer, ascending; samples with owner -1 are left out."""
    order = np.argsort(owner, kind="stable").astype(np.int64)
    sizes = np.bincount(owner[owner >= 0], minlength=n_peers)
    start = len(owner) - int(sizes.sum())  # dropped samples (-1) sort first
    return np.split(order[start:], np.cumsum(sizes)[:-1])


def _owner_from_sizes(order: np.ndarray, sizes: np.ndarray, n: int) -> np.ndarray:
    """Owner of each of ``n`` samples when ``order`` is dealt to peers 0, 1, ... in runs of ``sizes``."""
    owner = np.full(n, -1, dtype=np.int64)
    owner[order[: sizes.sum()]] = np.repeat(np.arange(len(sizes)), sizes)
    return owner


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Per-peer label counts, ``[n_peers, n_classes]`` ints, to inspect or plot how skewed a split is."""
    labels = np.asarray(labels)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    peer_labels = labels[np.concatenate(parts).astype(np.int64)] if len(parts) else labels[:0]
    if peer_labels.size and (peer_labels.min() < 0 or peer_labels.max() >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}), found {peer_labels.min()}..{peer_labels.max()}"
        )
    peers = np.repeat(np.arange(len(parts)), sizes)
    counts = np.bincount(peers * n_classes + peer_labels, minlength=len(parts) * n_classes)
    return counts.reshape(len(parts), n_classes)


@PARTITIONERS.register("iid")
class Iid(Partitioner):
    """Uniformly random split into near-equal parts (no skew)."""

    def _assign(
        self, labels: np.ndarray, n_peers: int, rng: np.random.Generator, min_samples: int
    ) -> np.ndarray:
        n = len(labels)
        sizes = np.full(n_peers, n // n_peers, dtype=np.int64)
        sizes[: n % n_peers] += 1
        return _owner_from_sizes(rng.permutation(n), sizes, n)


@PARTITIONERS.register("dirichlet")
class Dirichlet(Partitioner):
    """Label skew: each class is spread over peers with proportions ~ Dir(alpha); small alpha = skewed.

    Each class's samples go to peers by a multinomial draw with Dirichlet proportions. Peers left below
    ``min_samples`` are then topped up deterministically: the largest peers are levelled down (largest
    first) until they have given exactly the missing count, the samples given are chosen at random
    within each donor, and they are dealt at random to the deficient peers. This never retries, is fully
    vectorized, and only trims the biggest peers, so the skew of the draw is mostly preserved.
    """

    alpha: float = Field(default=0.5, gt=0)

    def _assign(
        self, labels: np.ndarray, n_peers: int, rng: np.random.Generator, min_samples: int
    ) -> np.ndarray:
        classes, label_ids = np.unique(labels, return_inverse=True)
        proportions = rng.dirichlet(np.full(n_peers, self.alpha), size=len(classes))
        counts = rng.multinomial(np.bincount(label_ids, minlength=len(classes)), proportions)
        # Samples grouped by class, shuffled within class, then dealt in runs of each class's counts.
        order = rng.permutation(len(labels))
        order = order[np.argsort(label_ids[order], kind="stable")]
        owner = np.empty(len(labels), dtype=np.int64)
        owner[order] = np.repeat(np.tile(np.arange(n_peers), len(classes)), counts.ravel())
        return _top_up(owner, n_peers, min_samples, rng)


def _top_up(owner: np.ndarray, n_peers: int, min_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Move random samples from the largest peers to those below ``min_samples`` (see :class:`Dirichlet`)."""
    sizes = np.bincount(owner, minlength=n_peers)
    deficit = np.maximum(min_samples - sizes, 0)
    missing = int(deficit.sum())
    if missing == 0:
        return owner
    # Highest level such that trimming every peer down to it frees at least `missing` samples; since
    # n >= n_peers * min_samples, level min_samples always frees enough, so the search is bounded.
    low, high = min_samples, int(sizes.max())
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if np.maximum(sizes - mid, 0).sum() >= missing else (low, mid - 1)
    give = np.maximum(sizes - (low + 1), 0)
    extra = missing - int(give.sum())  # peers still at low+1 give one more each, lowest peer id first
    at_edge = np.flatnonzero(sizes - give == low + 1)[:extra]
    give[at_edge] += 1
    # Rank each sample at random within its peer; the first `give[peer]` of each donor move.
    shuffled = rng.permutation(len(owner))
    shuffled = shuffled[np.argsort(owner[shuffled], kind="stable")]
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    moved = shuffled[rank < give[owner[shuffled]]]
    owner = owner.copy()
    owner[rng.permutation(moved)] = np.repeat(np.arange(n_peers), deficit)
    return owner


@PARTITIONERS.register("shards")
class Shards(Partitioner):
    """Pathological label skew: sorted-by-label shards, ``k`` per peer (McMahan et al.)."""

    k: int = Field(default=2, ge=1)

    def _assign(
        self, labels: np.ndarray, n_peers: int, rng: np.random.Generator, min_samples: int
    ) -> np.ndarray:
        n_shards = n_peers * self.k
        shard_size = len(labels) // n_shards
        if shard_size == 0 or shard_size * self.k < min_samples:
            raise PartitionError(
                f"{len(labels)} samples in {n_shards} shards ({n_peers} peers x k={self.k}) gives "
                f"{shard_size} samples per shard, {shard_size * self.k} per peer; need at least "
                f"{max(min_samples, 1)} per peer"
            )
        # Random leftover samples are dropped first, so no class loses more than chance would have it.
        kept = rng.permutation(len(labels))[: n_shards * shard_size]
        kept = kept[np.argsort(labels[kept], kind="stable")]
        sizes = np.full(n_peers, self.k * shard_size, dtype=np.int64)
        dealt = kept.reshape(n_shards, shard_size)[rng.permutation(n_shards)].ravel()
        return _owner_from_sizes(dealt, sizes, len(labels))


@PARTITIONERS.register("quantity")
class Quantity(Partitioner):
    """Size skew: part sizes ~ min_samples + Multinomial(rest, Dir(alpha)); labels stay IID."""

    alpha: float = Field(default=1.0, gt=0)

    def _assign(
        self, labels: np.ndarray, n_peers: int, rng: np.random.Generator, min_samples: int
    ) -> np.ndarray:
        rest = len(labels) - n_peers * min_samples
        sizes = min_samples + rng.multinomial(rest, rng.dirichlet(np.full(n_peers, self.alpha)))
        return _owner_from_sizes(rng.permutation(len(labels)), sizes, len(labels))


@PARTITIONERS.register("majority")
class Majority(Partitioner):
    """Group label skew: peer i joins group i mod G and gets `share` of its group's classes (EWC split).

    The samples of each class in group g are shuffled; ``round(share * count)`` of them are dealt evenly to
    the peers of group g and the rest evenly to the peers of the other groups. Classes in no group are
    dealt evenly to all peers. Each of these portions is dealt round-robin, in class order, over a random
    permutation of its recipients, so their counts (per class and in all) differ by at most one.
    With 2 peers and the defaults this is the split of the original EWC experiment: peer 0 holds 90 % of
    digits 0-4 and 10 % of 5-9, peer 1 the complement. When a group has no peers (fewer peers than groups)
    or no other group has any, the part that would go there goes to all peers instead. Parts are as even
    as that allows and are not topped up: a peer left below ``min_samples`` is a :class:`PartitionError`.
    """

    groups: list[list[int]] = Field(default=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], min_length=1)
    share: float = Field(default=0.9, gt=0, le=1)

    @field_validator("groups")
    @classmethod
    def _classes_in_one_group(cls, groups: list[list[int]]) -> list[list[int]]:
        classes = [c for group in groups for c in group]
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        if repeated:
            raise ValueError(f"a class may be in only one group; {repeated} appear more than once")
        return groups

    def _assign(
        self, labels: np.ndarray, n_peers: int, rng: np.random.Generator, min_samples: int
    ) -> np.ndarray:
        n_groups = len(self.groups)
        group_of = {c: g for g, group in enumerate(self.groups) for c in group}
        # Samples sorted by class, random within each class; rank = position within the class.
        order = rng.permutation(len(labels))
        order = order[np.argsort(labels[order], kind="stable")]
        classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        rank = np.arange(len(labels)) - np.repeat(starts, counts)
        group = np.repeat(np.array([group_of.get(int(c), -1) for c in classes], dtype=np.int64), counts)
        kept = np.repeat(np.floor(self.share * counts + 0.5).astype(np.int64), counts)
        # Portion 2g: group g's share of its classes; 2g+1: the rest of them; 2G: classes in no group.
        portion = np.where(group < 0, 2 * n_groups, 2 * group + (rank >= kept))
        peer_group = np.arange(n_peers) % n_groups
        owner = np.full(len(labels), -1, dtype=np.int64)
        for key in np.unique(portion):
            g, outside = divmod(int(key), 2)
            if g == n_groups:
                recipients = np.arange(n_peers)
            else:
                recipients = np.flatnonzero((peer_group != g) if outside else (peer_group == g))
                if len(recipients) == 0:
                    recipients = np.arange(n_peers)
            members = order[portion == key]
            owner[members] = rng.permutation(recipients)[np.arange(len(members)) % len(recipients)]
        sizes = np.bincount(owner, minlength=n_peers)
        if sizes.min() < min_samples:
            short = int(np.argmin(sizes))
            raise PartitionError(
                f"majority(share={self.share}) gives peer {short} only {sizes[short]} of {len(labels)} "
                f"samples ({n_peers} peers in {n_groups} groups); need min_samples={min_samples} each"
            )
        return owner


@PARTITIONERS.register("by_group")
class ByGroup(Partitioner):
    """Natural partition: each group of the data (writer, user, site) goes whole to one peer.

    With as many peers as groups, peer i holds group i (groups are numbered in the sorted order of their
    values). With fewer peers, the groups are dealt round-robin in a seeded random order, so a peer may
    hold several. More peers than groups is a :class:`PartitionError`, as is a peer left with fewer than
    ``min_samples`` samples. Labels play no part; the groups come from the dataset's group column or array.
    """

    def split(
        self,
        labels: np.ndarray,
        n_peers: int,
        seed: int,
        min_samples: int = 1,
        *,
        groups: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        if groups is None:
            raise PartitionError(
                "by_group: the dataset has no group column/array; give csv(group_column=...) or "
                "npz(group_array=...), or a python factory that returns (x, y, groups)"
            )
        groups, labels = np.asarray(groups), np.asarray(labels)
        if groups.shape != labels.shape:
            raise PartitionError(f"by_group: {groups.shape} groups for labels of shape {labels.shape}")
        # Group ids 0..G-1 (in sorted order of the values) take the labels' place in the base class.
        return super().split(
            np.unique(groups, return_inverse=True)[1].reshape(-1), n_peers, seed, min_samples
        )

    def _assign(
        self, groups: np.ndarray, n_peers: int, rng: np.random.Generator, min_samples: int
    ) -> np.ndarray:
        n_groups = int(groups.max()) + 1 if len(groups) else 0
        if n_peers > n_groups:
            raise PartitionError(
                f"by_group: the dataset has {n_groups} groups, fewer than the {n_peers} peers; "
                f"set peers to at most {n_groups}"
            )
        peer_of = np.arange(n_groups)
        if n_peers < n_groups:
            peer_of[rng.permutation(n_groups)] = np.arange(n_groups) % n_peers
        owner = peer_of[groups]
        sizes = np.bincount(owner, minlength=n_peers)
        if sizes.min() < min_samples:
            short = int(np.argmin(sizes))
            held = ", ".join(map(str, np.flatnonzero(peer_of == short)))
            raise PartitionError(
                f"by_group: peer {short} (group {held}) gets {sizes[short]} samples; need min_samples="
                f"{min_samples} each (fewer peers put several groups on one peer)"
            )
        return owner
