"""Datasets (what to learn from) and partitioners (how the training set is split among peers)."""

from ppaia.data.datasets import DATASETS, DataError, Dataset, DatasetSource
from ppaia.data.files import Csv, Npz, PythonFactory, UserData, data_source
from ppaia.data.partition import PARTITIONERS, Partitioner, PartitionError, label_histogram

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "Csv",
    "DataError",
    "Dataset",
    "DatasetSource",
    "Npz",
    "PartitionError",
    "Partitioner",
    "PythonFactory",
    "UserData",
    "data_source",
    "label_histogram",
]
