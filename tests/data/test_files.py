"""Sources for a user's own data (npz, csv, python factory): what they load, and a clear DataError, naming
the file and the field, for each class of bad input."""

from __future__ import annotations

import csv
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.datasets import load_digits

from ppaia.data import DATASETS, DataError, Dataset, UserData, data_source
from ppaia.registry import SpecError

DIGITS_X, DIGITS_Y = load_digits(return_X_y=True)
DIGITS_X = DIGITS_X.astype(np.int64)  # whole pixel values 0-16: the CSV text holds them exactly
WRITERS = np.random.default_rng(0).integers(0, 8, len(DIGITS_Y))


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def table_csv(path: Path, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> Path:
    """x as columns f0.., then label, then (optionally) a writer column of text ids."""
    header = [f"f{j}" for j in range(x.shape[1])] + ["label"] + ([] if groups is None else ["writer"])
    rows = [
        [*row, label, *([] if groups is None else [f"w{groups[i]}"])]
        for i, (row, label) in enumerate(zip(x.tolist(), y.tolist(), strict=True))
    ]
    return write_csv(path, header, rows)


@pytest.fixture
def digits_files(tmp_path: Path) -> tuple[Path, Path]:
    """The same digits with 8 writers as a .npz file and as a CSV file."""
    npz = tmp_path / "digits.npz"
    np.savez(npz, x=DIGITS_X, y=DIGITS_Y, writer=WRITERS)
    return npz, table_csv(tmp_path / "digits.csv", DIGITS_X, DIGITS_Y, WRITERS)


def same(a: Dataset, b: Dataset) -> bool:
    tensors = ("x_train", "y_train", "x_test", "y_test")
    return (
        all(torch.equal(getattr(a, t), getattr(b, t)) for t in tensors)
        and a.n_classes == b.n_classes
        and (a.groups_train is None) == (b.groups_train is None)
        and (a.groups_train is None or torch.equal(a.groups_train, b.groups_train))
    )


# --------------------------------------------------------------------------------------------------
# What the sources load


def test_sources_are_registered_with_path_or_factory_first() -> None:
    assert {"npz", "csv", "python"} <= set(DATASETS.names())
    assert DATASETS.create("npz('a.npz')").path == str(Path.cwd() / "a.npz")  # absolute (ppaia.paths)
    assert DATASETS.create("csv('a.csv', 'b.csv')").test_path == str(Path.cwd() / "b.csv")
    assert DATASETS.create("python('m:f')").factory == "m:f"
    for name in ("npz", "csv", "python"):
        assert issubclass(DATASETS.get(name), UserData)
    source = DATASETS.create("csv(path='a.csv', label_column='diagnosis', shape=[1, 2])")
    assert (
        source.label().startswith(f"csv(path={Path.cwd() / 'a.csv'}")
        and source.spec()["label_column"] == "diagnosis"
    )


@pytest.mark.parametrize(
    ("spec", "option"),
    [
        ("npz(path='')", "path"),
        ("npz(path='a.npz', test_fraction=1)", "test_fraction"),
        ("npz(path='a.npz', test_fraction=-0.1)", "test_fraction"),
        ("csv(path='a.csv', classes=0)", "classes"),
        ("csv(path='a.csv', shape=[1, 0])", "shape"),
        ("csv(path='a.csv', shape=[])", "shape"),
        ("python(factory='no colon')", "factory"),
        ("python(factory='m:f', test_factory='m')", "test_factory"),
    ],
)
def test_bad_options_name_the_option(spec: str, option: str) -> None:
    with pytest.raises(ValidationError, match=option):
        DATASETS.create(spec)


@pytest.mark.parametrize("test_fraction", [0.2, 0.35, 0])
def test_npz_and_csv_of_the_same_data_give_the_same_dataset(digits_files, test_fraction) -> None:
    npz, table = digits_files
    options = {"test_fraction": test_fraction, "shape": [1, 8, 8]}
    a = DATASETS.create({"name": "npz", "path": str(npz), "group_array": "writer", **options}).load(3)
    b = DATASETS.create({"name": "csv", "path": str(table), "group_column": "writer", **options}).load(3)
    assert same(a, b)
    assert a.input_shape == (1, 8, 8) and a.n_classes == 10
    held = len(a.y_test)
    assert held == (0 if test_fraction == 0 else pytest.approx(test_fraction * len(DIGITS_Y), abs=1))


def test_values_are_kept_as_stored_and_test_fraction_0_keeps_every_row(digits_files) -> None:
    data = DATASETS.create({"name": "npz", "path": str(digits_files[0]), "test_fraction": 0}).load(0)
    np.testing.assert_array_equal(data.x_train.numpy(), DIGITS_X.astype(np.float32))  # not standardised
    np.testing.assert_array_equal(data.y_train.numpy(), DIGITS_Y)
    assert data.x_test.shape == (0, 64) and data.y_test.shape == (0,) and data.groups_train is None


def test_the_test_split_is_seeded_stratified_and_taken_before_the_groups(tmp_path) -> None:
    rng = np.random.default_rng(1)
    n = 600
    y = rng.integers(0, 5, n)
    groups = rng.choice(["carol", "alice", "bob", "dave"], n)
    x = np.column_stack([np.arange(n), rng.normal(size=n)])  # column 0 identifies the row
    path = write_csv(
        tmp_path / "d.csv",
        ["row", "v", "label", "site"],
        [[*r, c, g] for r, c, g in zip(x, y, groups, strict=True)],
    )
    source = DATASETS.create(
        {"name": "csv", "path": str(path), "group_column": "site", "test_fraction": 0.25}
    )
    data = source.load(seed=7)
    train_rows = data.x_train[:, 0].long().numpy()
    test_rows = data.x_test[:, 0].long().numpy()
    assert sorted([*train_rows, *test_rows]) == list(range(n))  # disjoint, every row once
    assert len(test_rows) == 150  # stratified: each class's test share within one row of 25 %
    assert np.abs(np.bincount(y[test_rows], minlength=5) - 0.25 * np.bincount(y)).max() <= 1
    names = np.array(sorted(set(groups)))  # ids in sorted order of the values: alice=0, bob=1, ...
    np.testing.assert_array_equal(names[data.groups_train.numpy()], groups[train_rows])
    assert same(data, source.load(seed=7)) and not same(data, source.load(seed=8))


@pytest.mark.parametrize(
    ("values", "ids"),
    [
        (["10", "2", "33", "2"], [1, 0, 2, 0]),  # numbers sort as numbers
        (["w10", "w2", "w33", "w2"], [0, 1, 2, 1]),  # text sorts as text
        (["1.5", "x", "1.5", "-3"], [1, 2, 1, 0]),
    ],
)
def test_group_values_are_numbered_in_sorted_order(tmp_path, values, ids) -> None:
    path = write_csv(tmp_path / "g.csv", ["a", "label", "g"], [[i, 0, v] for i, v in enumerate(values)])
    data = DATASETS.create(f"csv({str(path)!r}, group_column='g', test_fraction=0)").load(0)
    assert data.groups_train.tolist() == ids


def test_groups_are_numbered_without_gaps_after_the_test_split(tmp_path) -> None:
    groups = np.array(["solo"] + ["a", "b", "c"] * 13)
    np.savez(tmp_path / "d.npz", x=np.arange(40.0)[:, None], y=np.arange(40) % 2, g=groups)
    source = DATASETS.create(f"npz({str(tmp_path / 'd.npz')!r}, group_array='g', test_fraction=0.25)")
    numbered = [source.load(seed).groups_train for seed in range(10)]
    assert all(sorted(set(ids.tolist())) == list(range(int(ids.max()) + 1)) for ids in numbered)
    assert {int(ids.max()) + 1 for ids in numbered} == {3, 4}  # some splits drew the one "solo" row


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_group_that_is_not_finite_is_named(tmp_path, value) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((5, 2)), y=np.arange(5) % 2, g=np.array([0.0, 1.0, 1.0, value, 0.0]))
    with pytest.raises(DataError, match=f"{path}: row 3: the group is"):
        load("npz", path, group_array="g")


def test_npz_test_arrays_or_a_test_file_are_the_test_set(tmp_path) -> None:
    x, y = DIGITS_X[:100], DIGITS_Y[:100]
    inner = tmp_path / "inner.npz"
    np.savez(inner, x=x[:80], y=y[:80], x_test=x[80:], y_test=y[80:])
    np.savez(tmp_path / "train.npz", x=x[:80], y=y[:80])
    np.savez(tmp_path / "test.npz", x=x[80:], y=y[80:])
    by_arrays = DATASETS.create(f"npz({str(inner)!r})").load(0)
    by_file = DATASETS.create(f"npz({str(tmp_path / 'train.npz')!r}, {str(tmp_path / 'test.npz')!r})").load(0)
    assert same(by_arrays, by_file) and len(by_file.y_train) == 80 and len(by_file.y_test) == 20
    table_csv(tmp_path / "train.csv", x[:80], y[:80])
    table_csv(tmp_path / "test.csv", x[80:], y[80:])
    by_csv = DATASETS.create(f"csv({str(tmp_path / 'train.csv')!r}, {str(tmp_path / 'test.csv')!r})").load(0)
    assert same(by_csv, by_file)


def test_text_and_ignored_columns_are_not_features(tmp_path) -> None:
    path = write_csv(
        tmp_path / "p.csv",
        ["patient", "name", "age", "diagnosis", "weight"],
        [[101, "Ann", 40, 1, 70.5], [102, "Bob", 50, 0, 80.0], [103, "Cy", 60, 2, 90.25]],
    )
    source = f"csv({str(path)!r}, label_column='diagnosis', ignore_columns=['patient'], test_fraction=0)"
    data = DATASETS.create(source).load(0)
    np.testing.assert_array_equal(data.x_train.numpy(), [[40, 70.5], [50, 80.0], [60, 90.25]])
    assert data.y_train.tolist() == [1, 0, 2] and data.n_classes == 3


def test_classes_given_or_inferred(tmp_path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((6, 2)), y=np.array([0, 1, 1, 0, 2, 0]))
    inferred = DATASETS.create(f"npz({str(tmp_path / 'd.npz')!r}, test_fraction=0)").load(0)
    given = DATASETS.create(f"npz({str(tmp_path / 'd.npz')!r}, test_fraction=0, classes=10)").load(0)
    assert (inferred.n_classes, given.n_classes) == (3, 10)


def test_labels_may_be_stored_as_whole_floats_or_booleans(tmp_path) -> None:
    for name, labels in (("f", np.array([0.0, 1.0, 2.0])), ("b", np.array([True, False, True]))):
        np.savez(tmp_path / f"{name}.npz", x=np.ones((3, 1)), y=labels)
        data = DATASETS.create(f"npz({str(tmp_path / f'{name}.npz')!r}, test_fraction=0)").load(0)
        assert data.y_train.tolist() == labels.astype(int).tolist()


def test_relative_paths_are_resolved_against_the_working_directory_when_given(tmp_path, monkeypatch) -> None:
    """A path is made absolute when the source is made (ppaia.paths), so it loads from any folder later."""
    (tmp_path / "site").mkdir()
    np.savez(tmp_path / "site" / "h0.npz", x=np.ones((5, 2)), y=np.arange(5) % 2)
    monkeypatch.chdir(tmp_path / "site")
    source = data_source("h0.npz")
    assert source.path == str(tmp_path / "site" / "h0.npz")
    monkeypatch.chdir(tmp_path)
    assert len(source.load(0).y_train) == 4
    missing = data_source("h0.npz")
    with pytest.raises(DataError, match=f"{tmp_path / 'h0.npz'}: no such file"):
        missing.load(0)


# --------------------------------------------------------------------------------------------------
# data_source: what `ppaia peer --data/--test` take


@pytest.mark.parametrize(
    ("text", "name", "options"),
    [
        ("h0.npz", "npz", {"path": f"{Path.cwd()}/h0.npz"}),
        (
            " data/site 1/h0.CSV ",
            "csv",
            {"path": f"{Path.cwd()}/data/site 1/h0.CSV", "label_column": "label"},
        ),
        ("csv(path='h0.csv', label_column='diagnosis')", "csv", {"label_column": "diagnosis"}),
        ("npz('h0.npz', group_array='writer', test_fraction=0)", "npz", {"test_fraction": 0}),
        ("python(factory='mydata:load')", "python", {"factory": "mydata:load"}),
        ("synthetic(samples=10)", "synthetic", {"samples": 10}),
    ],
)
def test_data_source_takes_a_bare_path_or_a_spec(text, name, options) -> None:
    source = data_source(text)
    assert source.name == name
    assert {key: getattr(source, key) for key in options} == options


@pytest.mark.parametrize(("text", "error"), [("h0.txt", SpecError), ("csv(colour=1)", ValidationError)])
def test_data_source_refuses_what_is_neither(text, error) -> None:
    with pytest.raises(error):
        data_source(text)


def test_dataset_checks_its_groups() -> None:
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    assert Dataset("toy", x, y, x, y, 2, groups_train=torch.tensor([0, 1, 1, 0])).groups_train is not None
    for groups in (torch.tensor([0, 1, 1]), torch.tensor([0.0, 1, 1, 0]), torch.tensor([0, -1, 1, 0])):
        with pytest.raises(DataError, match="groups_train"):
            Dataset("toy", x, y, x, y, 2, groups_train=groups)


# --------------------------------------------------------------------------------------------------
# Each class of bad input: a DataError naming the file and the field

FILE_KINDS = ["npz", "csv"]


def write(kind: str, path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """x and y as a file of `kind` (a CSV of x's columns f0.. and a label column)."""
    if kind == "npz":
        np.savez(path, x=x, y=y)
        return path
    return table_csv(path, x, y)


def load(kind: str, path: Path, **options: object) -> Dataset:
    return DATASETS.create({"name": kind, "path": str(path), **options}).load(0)


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("field", ["path", "test_path"])
@pytest.mark.parametrize("target", ["absent.{kind}", "sub/absent.{kind}", "folder"])
def test_a_missing_file_names_the_field_and_the_path(tmp_path, kind, field, target) -> None:
    (tmp_path / "folder").mkdir()
    good = write(kind, tmp_path / f"good.{kind}", np.ones((4, 2)), np.arange(4) % 2)
    bad = tmp_path / target.format(kind=kind)
    options = {"path": str(bad)} if field == "path" else {"path": str(good), "test_path": str(bad)}
    with pytest.raises(DataError, match=f"{field}=.*{bad}: (no such file|a directory)"):
        DATASETS.create({"name": kind, **options}).load(0)


UNREADABLE = {
    "npz": {
        "garbage bytes": lambda p: p.write_bytes(bytes(range(256)) * 4),
        "text": lambda p: p.write_text("x,y\n1,2\n"),
        "empty": lambda p: p.write_bytes(b""),
        "truncated archive": lambda p: (
            np.savez(p.with_suffix(".full.npz"), x=np.ones((50, 4)), y=np.zeros(50)),
            p.write_bytes(p.with_suffix(".full.npz").read_bytes()[:300]),
        ),
        "a single .npy array": lambda p: p.write_bytes(npy_bytes(np.ones(3))),
        "pickled objects": lambda p: np.savez(p, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1)),
    },
    "csv": {
        "not UTF-8": lambda p: p.write_bytes(b"a,label\n\xff\xfe,1\n"),
        "binary": lambda p: p.write_bytes(bytes(range(128, 256))),
        "an unterminated quote": lambda p: p.write_text('a,label\n"1,0\n'),
    },
}


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(("kind", "damage"), [(k, d) for k, ds in UNREADABLE.items() for d in ds])
def test_an_unreadable_file_is_named(tmp_path, kind, damage) -> None:
    path = tmp_path / f"bad.{kind}"
    UNREADABLE[kind][damage](path)
    with pytest.raises(DataError, match=str(path)):
        load(kind, path)


@pytest.mark.parametrize(
    ("arrays", "options", "named"),
    [
        ({"y": np.zeros(3)}, {}, "'x'"),
        ({"x": np.ones((3, 2))}, {}, "'y'"),
        ({"X": np.ones((3, 2)), "labels": np.zeros(3)}, {}, "'x', 'y'; the file holds 'X', 'labels'"),
        ({"x": np.ones((3, 2)), "y": np.zeros(3)}, {"group_array": "writer"}, "'writer'"),
        ({}, {}, "no arrays"),
        ({"x": np.ones((3, 2)), "y": np.zeros(3), "x_test": np.ones((1, 2))}, {}, "'x_test'"),
        ({"x": np.ones((3, 2)), "y": np.zeros(3), "y_test": np.zeros(1)}, {}, "'y_test'"),
    ],
)
def test_a_missing_array_is_named_with_those_present(tmp_path, arrays, options, named) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=f"{path}.*{named}"):
        load("npz", path, **options)


@pytest.mark.parametrize(
    ("options", "absent"),
    [
        ({}, "label"),
        ({"label_column": "Class"}, "Class"),
        ({"label_column": "y"}, "y"),
        ({"label_column": "class", "group_column": "writer"}, "writer"),
        ({"label_column": "class", "ignore_columns": ["b", "id"]}, "id"),
    ],
)
def test_an_absent_column_is_named_with_the_columns_there_are(tmp_path, options, absent) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "b", "class"], [[1, 2, 0], [3, 4, 1]])
    with pytest.raises(DataError, match=f"{path}: no column '{absent}'; the columns are a, b, class"):
        load("csv", path, **options)


def bad_cells(seed: int) -> tuple[int, int, str]:
    """A (row, column, text) of a bad cell in a 6x4 numeric table, drawn from the classes of bad text."""
    rng = np.random.default_rng(seed)
    text = ["abc", "", "  ", "1,5", "3 4", "0x10", "1e", "--1", "one"][seed % 9]
    return int(rng.integers(6)), int(rng.integers(3)), text


@pytest.mark.parametrize("seed", range(9))
def test_a_non_numeric_cell_is_named_by_line_and_column(tmp_path, seed) -> None:
    row, column, text = bad_cells(seed)
    rows = np.arange(24).reshape(6, 4).tolist()
    rows = [[*r[:3], r[3] % 2] for r in rows]
    rows[row][column] = text
    path = write_csv(tmp_path / "d.csv", ["a", "b", "c", "label"], rows)
    with pytest.raises(DataError, match=f"{path}: line {row + 2}, column '{'abc'[column]}'"):
        load("csv", path)


@pytest.mark.parametrize("text", ["benign", "", "1.0.0", "[1]"])
def test_a_label_cell_that_is_not_a_number_is_named(tmp_path, text) -> None:
    rows = [[1, 0], [2, 1], [3, text], [4, 0]]
    path = write_csv(tmp_path / "d.csv", ["a", "diagnosis"], rows)
    with pytest.raises(DataError, match=f"{path}: line 4, column 'diagnosis'.*class ids"):
        load("csv", path, label_column="diagnosis")


def test_an_empty_group_cell_is_named(tmp_path) -> None:
    path = write_csv(tmp_path / "d.csv", ["a", "label", "g"], [[1, 0, "u"], [2, 1, " "]])
    with pytest.raises(DataError, match=f"{path}: line 3, column 'g': an empty cell"):
        load("csv", path, group_column="g")


SHAPE_CASES = {
    "fewer labels": ({"x": np.ones((5, 2)), "y": np.zeros(4)}, {}, "5 rows but array 'y' has 4"),
    "more labels": ({"x": np.ones((5, 2)), "y": np.zeros(9)}, {}, "5 rows but array 'y' has 9"),
    "labels 2-D": ({"x": np.ones((5, 2)), "y": np.zeros((5, 1))}, {}, r"'y' has shape \(5, 1\)"),
    "y a scalar": ({"x": np.ones((5, 2)), "y": np.array(3)}, {}, "5 rows but array 'y' has a scalar"),
    "x a scalar": ({"x": np.array(3.0), "y": np.zeros(5)}, {}, "no rows in array 'x'"),
    "no labels": ({"x": np.ones((5, 2)), "y": np.zeros(0)}, {}, "5 rows but array 'y' has 0"),
    "x 1-D": ({"x": np.ones(5), "y": np.zeros(5)}, {}, r"'x' has shape \(5,\)"),
    "groups short": (
        {"x": np.ones((5, 2)), "y": np.zeros(5), "g": np.zeros(3)},
        {"group_array": "g"},
        "5 rows but groups has 3",
    ),
    "groups 2-D": (
        {"x": np.ones((5, 2)), "y": np.zeros(5), "g": np.zeros((5, 2))},
        {"group_array": "g"},
        "groups have shape",
    ),
    "test arrays differ": (
        {"x": np.ones((5, 2)), "y": np.zeros(5), "x_test": np.ones((2, 3)), "y_test": np.zeros(2)},
        {},
        r"test inputs have shape \[3\] but training inputs .* have \[2\]",
    ),
    "shape option": (
        {"x": np.ones((5, 6)), "y": np.zeros(5)},
        {"shape": [1, 2, 2]},
        r"needs 4 values.* has 6",
    ),
    "x text": ({"x": np.array([["a", "b"]] * 5), "y": np.zeros(5)}, {}, "<U1 values; expected numbers"),
}


@pytest.mark.parametrize("case", SHAPE_CASES)
def test_wrong_shapes_are_named(tmp_path, case) -> None:
    arrays, options, message = SHAPE_CASES[case]
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=f"{path}: .*{message}"):
        load("npz", path, **options)


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("features", [1, 3])
def test_a_test_file_with_other_features_is_refused(tmp_path, kind, features) -> None:
    train = write(kind, tmp_path / f"train.{kind}", np.ones((6, 2)), np.arange(6) % 2)
    test = write(kind, tmp_path / f"test.{kind}", np.ones((3, features)), np.arange(3) % 2)
    with pytest.raises(DataError, match=str(test)):
        load(kind, train, test_path=str(test))


def test_a_test_csv_with_other_column_names_is_refused(tmp_path) -> None:
    train = write_csv(tmp_path / "train.csv", ["a", "b", "label"], [[1, 2, 0], [3, 4, 1]])
    for header in (["a", "c", "label"], ["b", "a", "label"]):
        test = write_csv(tmp_path / "test.csv", header, [[1, 2, 0]])
        with pytest.raises(DataError, match=f"{test}: its feature columns .* {train}"):
            load("csv", train, test_path=str(test))


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("label", [2.5, -1, -0.5, float("nan"), float("inf"), 1e30])
def test_a_label_that_is_not_a_class_id_is_named(tmp_path, kind, label) -> None:
    y = np.array([0.0, 1.0, 0.0, label, 1.0])
    path = write(kind, tmp_path / f"d.{kind}", np.ones((5, 2)), y)
    where = "row 3" if kind == "npz" else "line 5"
    with pytest.raises(DataError, match=f"{path}: {where}: .*not a class id"):
        load(kind, path)


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("fraction", [0, 0.5])
def test_a_label_beyond_classes_is_named(tmp_path, kind, fraction) -> None:
    path = write(kind, tmp_path / f"d.{kind}", np.ones((6, 2)), np.array([0, 1, 2, 0, 1, 5]))
    with pytest.raises(DataError, match=f"{path}: .*is 5 but classes=3"):
        load(kind, path, classes=3, test_fraction=fraction)


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e39])
@pytest.mark.parametrize("seed", range(2))
def test_a_feature_that_is_not_finite_is_named(tmp_path, kind, value, seed) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 3))
    row, column = int(rng.integers(8)), int(rng.integers(3))
    x[row, column] = value
    path = write(kind, tmp_path / f"d.{kind}", x, np.arange(8) % 2)
    where = f"row {row}" if kind == "npz" else f"line {row + 2}, column 'f{column}'"
    with pytest.raises(DataError, match=f"{path}: {where}: .*NaN, infinite or too large"):
        load(kind, path)


EMPTY = {
    "npz": {
        "no rows": lambda p: np.savez(p, x=np.ones((0, 3)), y=np.zeros(0)),
        "no rows, no labels": lambda p: np.savez(p, x=np.ones((0, 3)), y=np.zeros((0,))),
    },
    "csv": {
        "zero bytes": lambda p: p.write_text(""),
        "blank lines": lambda p: p.write_text("\n\n"),
        "only a header": lambda p: p.write_text("a,label\n"),
        "a header and blank lines": lambda p: p.write_text("a,label\n\n,\n"),
    },
}


@pytest.mark.parametrize(("kind", "case"), [(k, c) for k, cs in EMPTY.items() for c in cs])
def test_an_empty_file_is_named(tmp_path, kind, case) -> None:
    path = tmp_path / f"d.{kind}"
    EMPTY[kind][case](path)
    with pytest.raises(DataError, match=f"{path}: .*(empty|no rows|no rows after the header)"):
        load(kind, path)


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        (["a", "a", "label"], [[1, 2, 0]], "'a' appears more than once"),
        (["a", "label"], [[1, 0], [1, 2, 0]], "line 3 has 3 cells but the header has 2"),
        (["a", "label"], [[1, 0], [1]], "line 3 has 1 cells"),
        (["name", "label"], [["x", 0]], "no numeric feature column"),
    ],
)
def test_a_malformed_csv_table_is_named(tmp_path, header, rows, message) -> None:
    path = write_csv(tmp_path / "d.csv", header, rows)
    with pytest.raises(DataError, match=f"{path}: .*{message}"):
        load("csv", path)


@pytest.mark.parametrize(("rows", "fraction"), [(1, 0.2), (1, 0.9), (2, 0.6), (3, 0.9)])
def test_too_few_rows_to_hold_out_a_test_share_is_named(tmp_path, rows, fraction) -> None:
    path = write("npz", tmp_path / "d.npz", np.ones((rows, 2)), np.zeros(rows))
    with pytest.raises(DataError, match=f"{path}: cannot hold out test_fraction={fraction} of {rows} rows"):
        load("npz", path, test_fraction=fraction)


# --------------------------------------------------------------------------------------------------
# python(factory=...): a module of the working directory

MODULES = itertools.count()


@pytest.fixture
def module(tmp_path, monkeypatch) -> Callable[[str], str]:
    """Write a module into tmp_path, the working directory, and give its (unique) name."""
    monkeypatch.chdir(tmp_path)
    written: list[str] = []

    def write_module(source: str) -> str:
        name = f"user_data_{next(MODULES)}"
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        return name

    yield write_module
    for name in written:
        sys.modules.pop(name, None)


FACTORIES = {
    "a TensorDataset": "TensorDataset(torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(Y))",
    "a map-style Dataset of (tensor, int)": "Items()",
    "an (x, y) pair of arrays": "(X, Y)",
    "an [x, y] list of tensors": "[torch.as_tensor(X), torch.as_tensor(Y)]",
}
PREAMBLE = """
import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

X = np.arange(40, dtype=np.float64).reshape(10, 4)
Y = np.arange(10) % 3


class Items(Dataset):
    def __len__(self):
        return len(Y)

    def __getitem__(self, i):
        return torch.as_tensor(X[i]), int(Y[i])
"""


@pytest.mark.parametrize("made", FACTORIES)
def test_a_factory_in_the_working_directory_gives_the_same_data_as_a_file(module, tmp_path, made) -> None:
    name = module(PREAMBLE + f"\n\ndef load():\n    return {FACTORIES[made]}\n")
    data = DATASETS.create(f"python('{name}:load', test_fraction=0.3)").load(0)
    x, y = np.arange(40, dtype=np.float64).reshape(10, 4), np.arange(10) % 3
    np.savez(tmp_path / "same.npz", x=x, y=y)
    assert same(data, load("npz", tmp_path / "same.npz", test_fraction=0.3))


def test_a_factory_may_give_groups_and_a_test_factory(module) -> None:
    name = module(
        PREAMBLE
        + "\n\ndef load():\n    return X, Y, np.array(list('bbaacccaab'))\n"
        + "\n\ndef test():\n    return Items()\n"
    )
    data = DATASETS.create(f"python('{name}:load', test_factory='{name}:test')").load(0)
    assert data.groups_train.tolist() == [1, 1, 0, 0, 2, 2, 2, 0, 0, 1]
    assert len(data.y_train) == len(data.y_test) == 10


@pytest.mark.parametrize(
    ("source", "factory", "message"),
    [
        ("", "absent_module_xyz:load", r"no module 'absent_module_xyz'; put absent_module_xyz.py in the "),
        ("", "absent_pkg_xyz.sub:load", "no module 'absent_pkg_xyz.sub'"),
        ("import not_installed_dependency_xyz\n", "{m}:load", "importing '{m}' failed: No module named"),
        ("raise RuntimeError('boom')\n", "{m}:load", "importing '{m}' failed: RuntimeError: boom"),
        ("def load(:\n", "{m}:load", "importing '{m}' failed: SyntaxError"),
        ("", "{m}:load", "module '{m}' has no attribute 'load'"),
        ("load = 3\n", "{m}:load", "'load' is a int, not a callable factory"),
        (
            "def load():\n    raise ValueError('no data today')\n",
            "{m}:load",
            "the factory raised ValueError: no data today",
        ),
        ("def load():\n    return 'x'\n", "{m}:load", "returned str; expected a map-style"),
        ("def load():\n    return (1, 2, 3, 4)\n", "{m}:load", "returned tuple"),
        (
            "import torch\nclass S(torch.utils.data.IterableDataset):\n    def __iter__(self):\n"
            "        return iter([])\ndef load():\n    return S()\n",
            "{m}:load",
            "without len",
        ),
        (PREAMBLE + "def load():\n    return torch.utils.data.Subset(Items(), [])\n", "{m}:load", "empty"),
        (
            PREAMBLE + "class Bad(Items):\n    def __getitem__(self, i):\n        return X[i]\n"
            "def load():\n    return Bad()\n",
            "{m}:load",
            "item 0 is ndarray; expected",
        ),
        (
            PREAMBLE
            + "class Bad(Items):\n    def __getitem__(self, i):\n        return X[: i + 1].ravel(), 0\n"
            "def load():\n    return Bad()\n",
            "{m}:load",
            r"item 1 has 2 parts and x of shape \[8\]",
        ),
        (
            PREAMBLE + "class Bad(Items):\n    def __getitem__(self, i):\n        return X[i], Y[:2]\n"
            "def load():\n    return Bad()\n",
            "{m}:load",
            "must be single values",
        ),
        (PREAMBLE + "def load():\n    return X, Y[:4]\n", "{m}:load", "10 rows but y has 4"),
        ("def load():\n    return [[1, 2], [3]], [0, 1]\n", "{m}:load", "reading what it returned raised"),
        (
            PREAMBLE + "class Bad(Items):\n    def __getitem__(self, i):\n        raise KeyError(i)\n"
            "def load():\n    return Bad()\n",
            "{m}:load",
            "item 0 raised KeyError",
        ),
        (
            PREAMBLE + "class Bad(Items):\n    def __len__(self):\n        return -1\n"
            "def load():\n    return Bad()\n",
            "{m}:load",
            r"len\(\) of the dataset raised ValueError",
        ),
        (PREAMBLE + "def load():\n    return X, Y / 2\n", "{m}:load", "not a class id"),
    ],
)
def test_a_factory_that_fails_is_a_data_error_naming_it(module, source, factory, message) -> None:
    name = module(source)
    target = factory.format(m=name)
    with pytest.raises(DataError, match=f"factory='{target}': .*{message.format(m=name)}"):
        DATASETS.create(f"python('{target}')").load(0)


def test_the_working_directory_is_searched_only_while_importing(module) -> None:
    path_before = list(sys.path)
    name = module(PREAMBLE + "\n\ndef load():\n    return X, Y\n")
    DATASETS.create(f"python('{name}:load')").load(0)
    assert sys.path == path_before
