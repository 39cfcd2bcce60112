"""Datasets as tensors, and the registered sources that build them.

A :class:`DatasetSource` is a registered component whose options say *which* data to load; calling
:meth:`DatasetSource.load` with a seed gives a :class:`Dataset` (train and test tensors, already
normalized). File-based sources (MNIST, Fashion-MNIST, CIFAR-10) read the standard distribution files
from a local directory and never download: a missing or malformed file is a :class:`DataError` that names
the file and what was expected.
"""

from __future__ import annotations

import gzip
import zlib
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar

import numpy as np
import torch
from pydantic import Field

from ppaia.paths import UserPath
from ppaia.registry import Component, Registry

__all__ = ["DATASETS", "DataError", "Dataset", "DatasetSource"]


class DataError(ValueError):
    """Data that is missing or malformed; the message names the path (if any) and what was expected."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification task: float32 inputs ``[n, *input_shape]``, int64 labels in ``[0, n_classes)``.

    ``groups_train``, when the data has a group (writer, user, site) per row, holds each training row's
    group id from 0 up; ``partition = "by_group"`` deals whole groups to peers.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    groups_train: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # Checked once here so every consumer can rely on dtypes, matching lengths and label range.
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != torch.float32 or y.dtype != torch.int64 or y.ndim != 1:
                raise DataError(
                    f"dataset {self.name!r}: expected float32 x_{split} and 1-D int64 y_{split}, "
                    f"got {x.dtype} and {y.ndim}-D {y.dtype}"
                )
            if len(x) != len(y):
                raise DataError(f"dataset {self.name!r}: {len(x)} {split} inputs but {len(y)} labels")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
                raise DataError(f"dataset {self.name!r}: {split} labels must lie in [0, {self.n_classes})")
            if not (bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())):  # a finite sum suffices
                raise DataError(f"dataset {self.name!r}: x_{split} holds NaN or infinite values")
        groups = self.groups_train
        if groups is not None and (
            groups.dtype != torch.int64
            or groups.shape != self.y_train.shape
            or (len(groups) and int(groups.min()) < 0)
        ):
            raise DataError(
                f"dataset {self.name!r}: expected groups_train as {len(self.y_train)} int64 ids from 0 up, "
                f"one per training row; got shape {tuple(groups.shape)} of {groups.dtype}"
            )
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise DataError(
                f"dataset {self.name!r}: test input shape {tuple(self.x_test.shape[1:])} differs from "
                f"train input shape {self.input_shape}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])


class DatasetSource(Component):
    """A registered way to obtain a :class:`Dataset`; its fields are the options a config may set."""

    @abstractmethod
    def load(self, seed: int) -> Dataset:
        """Build the dataset; ``seed`` fixes any random split or generation (fixed splits ignore it)."""

    def load_bytes(self) -> int:
        """Memory :meth:`load` takes at its peak, when the options decide it, so that a size no machine
        holds is refused before it is allocated; 0 where fixed files decide it (they are read as they are)."""
        return 0


DATASETS: Registry[DatasetSource] = Registry("dataset")

TrainSamples = Annotated[int, Field(gt=0)] | None


# --------------------------------------------------------------------------------------------------
# In-memory sources


@DATASETS.register("digits")
class Digits(DatasetSource):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), split by seed."""

    test_fraction: float = Field(default=0.2, gt=0, lt=1)

    def load(self, seed: int) -> Dataset:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        try:
            x_tr, x_te, y_tr, y_te = train_test_split(
                x, y, test_size=self.test_fraction, random_state=seed, stratify=y
            )
        except ValueError as err:  # a split too small to hold every class on both sides
            raise DataError(f"digits: test_fraction={self.test_fraction:g}: {err}") from None
        mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
        std[std == 0] = 1.0  # constant pixels (always blank in train) stay at zero instead of dividing by 0

        def images(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(((a - mean) / std).astype(np.float32).reshape(-1, 1, 8, 8))

        return Dataset(
            self.name,
            images(x_tr),
            torch.from_numpy(y_tr.astype(np.int64)),
            images(x_te),
            torch.from_numpy(y_te.astype(np.int64)),
            n_classes=10,
        )


@DATASETS.register("synthetic")
class Synthetic(DatasetSource):
    """Gaussian mixture: one N(mean_c, I) blob per class, class means ~ N(0, separation^2 I)."""

    samples: int = Field(default=2000, gt=0)
    test_samples: int = Field(default=500, gt=0)
    features: int = Field(default=20, gt=0)
    classes: int = Field(default=10, ge=2)
    separation: float = Field(default=2.0, ge=0)

    def load_bytes(self) -> int:
        # float32 noise, the class means gathered per sample and their sum; float64 means drawn per class
        return 3 * 4 * (self.samples + self.test_samples) * self.features + 12 * self.classes * self.features

    def load(self, seed: int) -> Dataset:
        rng = np.random.default_rng(seed)
        means = rng.normal(0.0, self.separation, size=(self.classes, self.features)).astype(np.float32)
        n = self.samples + self.test_samples
        y = rng.integers(0, self.classes, size=n)
        x = means[y] + rng.standard_normal((n, self.features), dtype=np.float32)
        x_t, y_t = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        cut = self.samples
        return Dataset(self.name, x_t[:cut], y_t[:cut], x_t[cut:], y_t[cut:], n_classes=self.classes)


# --------------------------------------------------------------------------------------------------
# File helpers shared by the file-based sources


def _plain_or_gz(path: Path) -> Path | None:
    """``path`` if it exists, else ``path.gz`` if that exists, else None."""
    gz = path.with_name(path.name + ".gz")
    return path if path.is_file() else gz if gz.is_file() else None


def _locate(root: Path, names: Sequence[str], subdirs: Sequence[str] = ()) -> dict[str, Path]:
    """Find every file of ``names`` (plain or ``.gz``) together in ``root`` or one of its ``subdirs``."""
    expected = ", ".join(names)
    if not root.is_dir():
        raise DataError(f"{root}: no such directory; expected one holding {expected} (each plain or .gz)")
    best: dict[str, Path] = {}
    for directory in [root, *(root / sub for sub in subdirs)]:
        found = {name: p for name in names if (p := _plain_or_gz(directory / name)) is not None}
        if len(found) == len(names):
            return found
        best = found if len(found) > len(best) else best
    missing = ", ".join(name for name in names if name not in best)
    where = f" (or its subfolder {', '.join(subdirs)})" if subdirs else ""
    raise DataError(f"{root}{where}: missing {missing}; expected {expected} (each plain or .gz)")


def _read_bytes(path: Path) -> bytes:
    """The content of a plain file, or the decompressed content of a ``.gz`` file."""
    try:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read ({err}); expected a readable plain or gzip file") from err


def _normalized(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 ``[n, c, h, w]`` -> float32 scaled to [0, 1], then ``(x - mean) / std`` per channel."""
    x = pixels.astype(np.float32) / 255.0
    x -= mean.reshape(1, -1, 1, 1)
    x /= std.reshape(1, -1, 1, 1)
    return torch.from_numpy(x)


def _keep_first(n_available: int, train_samples: int | None, path: Path) -> int:
    """Number of training samples to keep; asking for more than the files hold is an error."""
    if train_samples is None:
        return n_available
    if train_samples > n_available:
        raise DataError(f"{path}: train_samples={train_samples} but the training files hold {n_available}")
    return train_samples


# --------------------------------------------------------------------------------------------------
# MNIST-style IDX files

_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801  # unsigned-byte data, 3 dims / 1 dim


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file: big-endian magic, one uint32 per dim, then the raw bytes."""
    data = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    found = int(np.frombuffer(data, ">u4", count=1)[0]) if len(data) >= 4 else None
    if found != magic:
        shown = f"0x{found:08X}" if found is not None else f"only {len(data)} bytes"
        raise DataError(f"{path}: expected IDX magic 0x{magic:08X} ({ndim}-D unsigned bytes), found {shown}")
    if len(data) < header:
        raise DataError(f"{path}: truncated header; expected {header} bytes, found {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    if min(dims) == 0:
        raise DataError(f"{path}: expected non-zero dimensions, header says {dims}")
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: header dims {dims} need {expected} data bytes, found {len(data) - header} "
            f"({'truncated' if len(data) - header < expected else 'trailing bytes'})"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[n, rows, cols]`` and labels ``[n]`` from matching IDX files, labels checked < 10."""
    images, labels = _read_idx(images_path, _IDX_IMAGES), _read_idx(labels_path, _IDX_LABELS)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "expected equal counts"
        )
    if labels.max() >= 10:
        raise DataError(f"{labels_path}: expected labels 0-9, found {int(labels.max())}")
    return images, labels


class _IdxSource(DatasetSource):
    """The fixed MNIST-format train/test split read from IDX files in directory ``path``."""

    files: ClassVar[tuple[str, ...]] = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    mean: ClassVar[float]
    std: ClassVar[float]

    path: UserPath
    train_samples: TrainSamples = None

    def load(self, seed: int) -> Dataset:
        found = _locate(Path(self.path).expanduser(), self.files)
        train_images, train_labels, test_images, test_labels = (found[name] for name in self.files)
        x_tr, y_tr = _read_idx_pair(train_images, train_labels)
        x_te, y_te = _read_idx_pair(test_images, test_labels)
        if x_tr.shape[1:] != x_te.shape[1:]:
            raise DataError(
                f"{test_images}: expected {x_tr.shape[1]}x{x_tr.shape[2]} images like "
                f"{train_images}, found {x_te.shape[1]}x{x_te.shape[2]}"
            )
        keep = _keep_first(len(x_tr), self.train_samples, train_images)
        mean, std = np.array([self.mean], np.float32), np.array([self.std], np.float32)
        return Dataset(
            self.name,
            _normalized(x_tr[:keep, None], mean, std),
            torch.from_numpy(y_tr[:keep].astype(np.int64)),
            _normalized(x_te[:, None], mean, std),
            torch.from_numpy(y_te.astype(np.int64)),
            n_classes=10,
        )


@DATASETS.register("mnist")
class Mnist(_IdxSource):
    """MNIST handwritten digits (28x28 grey, 10 classes) from local IDX files in ``path``."""

    mean: ClassVar[float] = 0.1307
    std: ClassVar[float] = 0.3081


@DATASETS.register("fashion_mnist")
class FashionMnist(_IdxSource):
    """Fashion-MNIST clothing images (28x28 grey, 10 classes) from local IDX files in ``path``."""

    mean: ClassVar[float] = 0.2860
    std: ClassVar[float] = 0.3530


# --------------------------------------------------------------------------------------------------
# CIFAR-10 binary version

_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then channel-major 3x32x32 pixels
_CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
_CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[n, 3, 32, 32]`` and labels ``[n]`` from one CIFAR-10 binary batch file."""
    data = np.frombuffer(_read_bytes(path), np.uint8)
    if data.size == 0 or data.size % _CIFAR_RECORD:
        raise DataError(
            f"{path}: expected a non-empty multiple of {_CIFAR_RECORD} bytes "
            f"(1 label + 3x32x32 pixels per record), found {data.size}"
        )
    records = data.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() >= 10:
        bad = int(np.argmax(labels >= 10))
        raise DataError(f"{path}: expected labels 0-9, record {bad} has label {int(labels[bad])}")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


@DATASETS.register("cifar10")
class Cifar10(DatasetSource):
    """CIFAR-10 colour images (3x32x32, 10 classes) from the binary batches in ``path``."""

    files: ClassVar[tuple[str, ...]] = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")

    path: UserPath
    train_samples: TrainSamples = None

    def load(self, seed: int) -> Dataset:
        found = _locate(Path(self.path).expanduser(), self.files, subdirs=("cifar-10-batches-bin",))
        train = [_read_cifar_batch(found[name]) for name in self.files[:-1]]
        x_te, y_te = _read_cifar_batch(found[self.files[-1]])
        x_tr, y_tr = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
        keep = _keep_first(len(x_tr), self.train_samples, found[self.files[0]].parent)
        return Dataset(
            self.name,
            _normalized(x_tr[:keep], _CIFAR_MEAN, _CIFAR_STD),
            torch.from_numpy(y_tr[:keep].astype(np.int64)),
            _normalized(x_te, _CIFAR_MEAN, _CIFAR_STD),
            torch.from_numpy(y_te.astype(np.int64)),
            n_classes=10,
        )
