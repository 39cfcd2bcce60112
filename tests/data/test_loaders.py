"""File-based sources (MNIST, Fashion-MNIST, CIFAR-10) on tiny files written by the tests."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from ppaia.data import DATASETS, DataError

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
NORMALIZATION = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32).reshape(1, 3, 1, 1)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32).reshape(1, 3, 1, 1)


def write(path: Path, payload: bytes, gz: bool = False) -> Path:
    """Write ``payload`` to ``path`` (or gzipped to ``path.gz``) and return the file written."""
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: big-endian magic, big-endian uint32 dims, raw bytes."""
    return np.array([magic, *array.shape], ">u4").tobytes() + array.astype(np.uint8).tobytes()


def make_idx_dir(
    root: Path, gz: bool = False, n_train: int = 12, n_test: int = 5, rows: int = 28, cols: int = 28
) -> dict[str, np.ndarray]:
    """Four random IDX files in ``root``; returns the arrays written, keyed by file name."""
    rng = np.random.default_rng(0)
    arrays = {
        IDX_NAMES[0]: rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        IDX_NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        IDX_NAMES[2]: rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        IDX_NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write(root / name, idx_bytes(IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC, array), gz)
    return arrays


def make_cifar_dir(
    root: Path, gz: bool = False, per_batch: int = 3, n_test: int = 4
) -> dict[str, np.ndarray]:
    """Six tiny CIFAR-10 binary batches in ``root``; returns the raw records, keyed by file name."""
    rng = np.random.default_rng(1)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    root.mkdir(parents=True, exist_ok=True)
    records = {}
    for name in names:
        n = n_test if name == "test_batch.bin" else per_batch
        batch = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        batch[:, 0] = rng.integers(0, 10, n)
        write(root / name, batch.tobytes(), gz)
        records[name] = batch
    return records


def expected_idx(pixels: np.ndarray, source: str) -> np.ndarray:
    mean, std = NORMALIZATION[source]
    return ((pixels.astype(np.float32) / 255 - mean) / std)[:, None]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("source", ["mnist", "fashion_mnist"])
def test_idx_round_trip(tmp_path: Path, source: str, gz: bool) -> None:
    arrays = make_idx_dir(tmp_path, gz=gz)
    data = DATASETS.create({"name": source, "path": str(tmp_path)}).load(seed=0)
    assert data.name == source and data.n_classes == 10 and data.input_shape == (1, 28, 28)
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    np.testing.assert_allclose(data.x_train.numpy(), expected_idx(arrays[IDX_NAMES[0]], source), atol=1e-5)
    np.testing.assert_allclose(data.x_test.numpy(), expected_idx(arrays[IDX_NAMES[2]], source), atol=1e-5)
    np.testing.assert_array_equal(data.y_train.numpy(), arrays[IDX_NAMES[1]])
    np.testing.assert_array_equal(data.y_test.numpy(), arrays[IDX_NAMES[3]])


def test_idx_takes_image_size_from_header_and_keeps_first_train_samples(tmp_path: Path) -> None:
    arrays = make_idx_dir(tmp_path, rows=5, cols=7)
    data = DATASETS.create(f"mnist({str(tmp_path)!r}, 4)").load(seed=0)
    assert data.input_shape == (1, 5, 7) and len(data.y_train) == 4 and len(data.y_test) == 5
    np.testing.assert_array_equal(data.y_train.numpy(), arrays[IDX_NAMES[1]][:4])
    with pytest.raises(DataError, match="train_samples=13"):
        DATASETS.create(f"mnist({str(tmp_path)!r}, 13)").load(seed=0)


def test_missing_directory_names_path_and_expected_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere") as err:
        DATASETS.create({"name": "mnist", "path": str(missing)}).load(seed=0)
    assert all(name in str(err.value) for name in IDX_NAMES)


def test_missing_file_is_named(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    (tmp_path / IDX_NAMES[3]).unlink()
    with pytest.raises(DataError, match=f"missing {IDX_NAMES[3]}"):
        DATASETS.create({"name": "mnist", "path": str(tmp_path)}).load(seed=0)


def load_mnist(root: Path) -> None:
    DATASETS.create({"name": "mnist", "path": str(root)}).load(seed=0)


def test_bad_magic(tmp_path: Path) -> None:
    arrays = make_idx_dir(tmp_path)
    write(tmp_path / IDX_NAMES[0], idx_bytes(0x00000801, arrays[IDX_NAMES[0]].reshape(-1)))
    with pytest.raises(DataError, match=rf"{IDX_NAMES[0]}: expected IDX magic 0x00000803.*0x00000801"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file(tmp_path: Path, gz: bool) -> None:
    arrays = make_idx_dir(tmp_path, gz=gz)
    payload = idx_bytes(IMAGES_MAGIC, arrays[IDX_NAMES[2]])
    write(tmp_path / IDX_NAMES[2], payload[:-100], gz)
    with pytest.raises(DataError, match=rf"{IDX_NAMES[2]}.*truncated"):
        load_mnist(tmp_path)
    write(tmp_path / IDX_NAMES[2], payload[:10], gz)  # not even a full header
    with pytest.raises(DataError, match=rf"{IDX_NAMES[2]}.*truncated header"):
        load_mnist(tmp_path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    make_idx_dir(tmp_path, gz=True)
    (tmp_path / f"{IDX_NAMES[1]}.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=rf"{IDX_NAMES[1]}\.gz.*gzip"):
        load_mnist(tmp_path)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    arrays = make_idx_dir(tmp_path)
    write(tmp_path / IDX_NAMES[1], idx_bytes(LABELS_MAGIC, arrays[IDX_NAMES[1]][:-1]))
    with pytest.raises(DataError, match=rf"{IDX_NAMES[0]} holds 12 images but .*{IDX_NAMES[1]} holds 11"):
        load_mnist(tmp_path)


def test_label_out_of_range(tmp_path: Path) -> None:
    arrays = make_idx_dir(tmp_path)
    labels = arrays[IDX_NAMES[3]].copy()
    labels[2] = 10
    write(tmp_path / IDX_NAMES[3], idx_bytes(LABELS_MAGIC, labels))
    with pytest.raises(DataError, match=rf"{IDX_NAMES[3]}: expected labels 0-9"):
        load_mnist(tmp_path)


@pytest.mark.parametrize(("subfolder", "gz"), [(False, False), (True, False), (False, True)])
def test_cifar_round_trip(tmp_path: Path, subfolder: bool, gz: bool) -> None:
    records = make_cifar_dir(tmp_path / "cifar-10-batches-bin" if subfolder else tmp_path, gz=gz)
    data = DATASETS.create({"name": "cifar10", "path": str(tmp_path)}).load(seed=0)
    train = np.concatenate([records[f"data_batch_{i}.bin"] for i in range(1, 6)])
    test = records["test_batch.bin"]
    assert data.input_shape == (3, 32, 32) and data.n_classes == 10
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    for x, y, raw in ((data.x_train, data.y_train, train), (data.x_test, data.y_test, test)):
        pixels = raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255
        np.testing.assert_allclose(x.numpy(), (pixels - CIFAR_MEAN) / CIFAR_STD, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), raw[:, 0])


def test_cifar_train_samples(tmp_path: Path) -> None:
    records = make_cifar_dir(tmp_path)
    data = DATASETS.create(f"cifar10({str(tmp_path)!r}, train_samples=5)").load(seed=0)
    expected = np.concatenate([records["data_batch_1.bin"][:, 0], records["data_batch_2.bin"][:2, 0]])
    np.testing.assert_array_equal(data.y_train.numpy(), expected)


def test_cifar_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data_batch_1\.bin") as err:
        DATASETS.create({"name": "cifar10", "path": str(tmp_path / "absent")}).load(seed=0)
    assert "absent" in str(err.value) and "test_batch.bin" in str(err.value)
    records = make_cifar_dir(tmp_path)
    write(tmp_path / "data_batch_3.bin", records["data_batch_3.bin"].tobytes()[:-1])
    with pytest.raises(DataError, match=r"data_batch_3\.bin: expected a non-empty multiple of 3073"):
        DATASETS.create({"name": "cifar10", "path": str(tmp_path)}).load(seed=0)
    bad = records["data_batch_3.bin"].copy()
    bad[1, 0] = 10
    write(tmp_path / "data_batch_3.bin", bad.tobytes())
    with pytest.raises(DataError, match=r"data_batch_3\.bin: expected labels 0-9, record 1 has label 10"):
        DATASETS.create({"name": "cifar10", "path": str(tmp_path)}).load(seed=0)
