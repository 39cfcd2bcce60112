"""In-memory dataset sources (digits, synthetic), the Dataset container and the dataset registry."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression

from ppaia.data import DATASETS, DataError, Dataset, DatasetSource


def test_registry_lists_every_source_with_a_one_line_docstring() -> None:
    assert {"digits", "synthetic", "mnist", "fashion_mnist", "cifar10"} <= set(DATASETS.names())
    for _, cls in DATASETS:
        assert issubclass(cls, DatasetSource)
        assert cls.__doc__ and "\n" not in cls.__doc__.strip()


def test_dataset_source_is_abstract() -> None:
    with pytest.raises(TypeError):
        DatasetSource()


@pytest.mark.parametrize(
    ("spec", "option"),
    [
        ("digits(test_fraction=1.5)", "test_fraction"),
        ("digits(0)", "test_fraction"),
        ("synthetic(samples=0)", "samples"),
        ("synthetic(classes=1)", "classes"),
        ("mnist(path='x', train_samples=0)", "train_samples"),
        ("cifar10(path='')", "path"),
    ],
)
def test_bad_options_name_the_option(spec: str, option: str) -> None:
    with pytest.raises(ValidationError, match=option):
        DATASETS.create(spec)


def test_dataset_checks_its_tensors() -> None:
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    data = Dataset("toy", x, y, x[:2], y[:2], n_classes=2)
    assert data.input_shape == (3,)
    with pytest.raises(DataError, match="toy"):
        Dataset("toy", x, y[:3], x, y, n_classes=2)
    with pytest.raises(DataError, match="labels"):
        Dataset("toy", x, y + 2, x, y, n_classes=2)
    with pytest.raises(DataError, match="float32"):
        Dataset("toy", x.double(), y, x, y, n_classes=2)
    with pytest.raises(DataError, match="shape"):
        Dataset("toy", x, y, torch.zeros(4, 5), y, n_classes=2)


def test_digits_split_shapes_and_standardization() -> None:
    data = DATASETS.create("digits").load(seed=0)
    n_train, n_test = len(data.y_train), len(data.y_test)
    assert n_train + n_test == 1797
    assert abs(n_test / 1797 - 0.2) < 0.01
    assert data.input_shape == (1, 8, 8) and data.x_test.shape == (n_test, 1, 8, 8)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.n_classes == 10 and set(data.y_train.tolist()) == set(range(10))
    flat = data.x_train.reshape(n_train, -1)
    assert flat.mean(0).abs().max() < 1e-5
    std = flat.std(0, unbiased=False)
    assert torch.all(((std - 1).abs() < 1e-4) | (std == 0))  # constant pixels stay at 0


def test_digits_split_is_fixed_by_seed() -> None:
    a, b, c = (DATASETS.create("digits(0.3)").load(seed) for seed in (1, 1, 2))
    assert abs(len(a.y_test) / 1797 - 0.3) < 0.01
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_synthetic_shapes_and_determinism() -> None:
    source = DATASETS.create("synthetic(samples=300, test_samples=100, features=7, classes=4)")
    a, b, c = source.load(3), source.load(3), source.load(4)
    assert a.x_train.shape == (300, 7) and a.x_test.shape == (100, 7) and a.input_shape == (7,)
    assert a.n_classes == 4 and set(a.y_train.tolist()) == set(range(4))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_synthetic_is_learnable() -> None:
    data = DATASETS.create("synthetic").load(seed=0)
    model = LogisticRegression(max_iter=500).fit(data.x_train.numpy(), data.y_train.numpy())
    accuracy = model.score(data.x_test.numpy(), data.y_test.numpy())
    assert accuracy > 0.6  # chance is 0.1
    counts = np.bincount(data.y_train.numpy(), minlength=10)
    assert counts.min() > 0.5 * counts.mean()  # balanced-ish


def test_synthetic_scales_to_many_samples() -> None:
    data = DATASETS.create("synthetic(samples=200000, test_samples=1000)").load(seed=0)
    assert data.x_train.shape == (200000, 20) and data.x_train.dtype == torch.float32
