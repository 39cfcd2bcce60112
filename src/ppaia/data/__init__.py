"""Datasets (what to learn from) and partitioners (how the training set is split among peers)."""

from ppaia.data.datasets import DATASETS, DataError, Dataset, DatasetSource
from ppaia.data.partition import PARTITIONERS, Partitioner, PartitionError, label_histogram

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "DataError",
    "Dataset",
    "DatasetSource",
    "PartitionError",
    "Partitioner",
    "label_histogram",
]
