"""Dataset sources for data a user already has: arrays in a ``.npz`` file, a CSV file, or a Python factory.

Each source reads a table of samples (features, an integer class id per row and, optionally, a group such
as the writer, user or hospital of each row) and turns it into a :class:`~ppaia.data.Dataset`. The options
they share (:class:`UserData`):

- ``test_fraction`` (default 0.2): with no separate test set, this share of the rows is held out as the
  test set, by a split seeded with the run's seed, stratified by label when every class has two rows or
  more. ``0`` keeps every row for training and leaves the test set empty: a networked peer loads its own
  data that way and evaluates on a held-out share of it or on a separate test file.
- ``classes``: the number of classes; inferred as the largest label + 1 when not given. Peers that must
  agree on the model's output size should give it, since each peer's own labels may not show every class.
- ``shape``: the shape of one input, e.g. ``[1, 8, 8]`` to turn flat rows of 64 values into images;
  by default the data's own shape (a flat row of features for a CSV file).

Values are used exactly as stored: nothing is standardised or rescaled (uint8 pixels stay 0-255), because
peers that each rescaled by their own statistics would no longer share a feature space. Scale the data
beforehand where the model needs it.

Groups: when a group column or array is named, each training row's group becomes ``groups_train`` (ids
0..G-1 in the sorted order of the group values, text or numbers). The test split is taken first, by label;
the groups of the remaining training rows are what ``partition = "by_group"`` deals to peers, so a group
keeps the rows that were not drawn for the test set (give a test file to keep every row of every group).

Relative paths are resolved against the current working directory when the data is loaded.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
import zlib
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from ppaia.data.datasets import DATASETS, DataError, Dataset, DatasetSource
from ppaia.paths import UserPath
from ppaia.plugins import import_target
from ppaia.registry import Component

__all__ = ["Csv", "Npz", "PythonFactory", "UserData", "data_source"]

LARGEST_LABEL = 2**62  # a class id at or beyond this is not a label (and would overflow int64 arithmetic)
SUFFIXES = {".npz": "npz", ".csv": "csv"}  # a bare path with one of these becomes that source
FACTORY = r"^[\w.]+:[\w.]+$"  # "package.module:attribute"


@dataclass(frozen=True)
class _Table:
    """Rows as read from one file or factory, before the checks every source shares.

    ``where`` names the source in messages; ``x_name``/``y_name`` name the fields read; a CSV file also
    gives each row's line number and its feature columns' names, so a message can point at a cell.
    """

    where: str
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None = None
    x_name: str = "x"
    y_name: str = "y"
    lines: np.ndarray | None = None
    columns: tuple[str, ...] = ()

    def at(self, row: int, column: int | None = None) -> str:
        """Where row ``row`` (and feature ``column``) is: a CSV line and column, else a row index."""
        if self.lines is None:
            return f"row {row}"
        place = f"line {self.lines[row]}"
        return place if column is None or not self.columns else f"{place}, column {self.columns[column]!r}"


# --------------------------------------------------------------------------------------------------
# Checks shared by every source


def _features(table: _Table, shape: Sequence[int] | None) -> np.ndarray:
    """Features as float32 ``[n, *shape]``: numbers only, finite in float32, reshaped when asked."""
    x, where = table.x, table.where
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where}: {table.x_name} holds {x.dtype} values; expected numbers")
    if x.ndim < 2:
        raise DataError(
            f"{where}: {table.x_name} has shape {x.shape}; expected one row of features per sample "
            "([samples, features] or [samples, channels, height, width])"
        )
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused just below
        flat = x.reshape(len(x), -1).astype(np.float32)
    bad = ~np.isfinite(flat)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{where}: {table.at(row, column)}: {x.reshape(len(x), -1)[row, column]} in {table.x_name} is "
            "NaN, infinite or too large for float32"
        )
    if shape is None:
        return flat.reshape(x.shape)
    per_row, wanted = flat.shape[1], math.prod(shape)
    if per_row != wanted:
        raise DataError(
            f"{where}: shape={list(shape)} needs {wanted} values per row, but each row of "
            f"{table.x_name} has {per_row} (shape {list(x.shape[1:])})"
        )
    return flat.reshape(len(x), *shape)


def _labels(table: _Table) -> np.ndarray:
    """Labels as int64 class ids: one per row, whole numbers from 0 up."""
    y, where = table.y, table.where
    if y.ndim != 1:
        raise DataError(f"{where}: {table.y_name} has shape {y.shape}; expected one label per row")
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind not in "iuf":
        raise DataError(f"{where}: {table.y_name} holds {y.dtype} values; expected class ids 0, 1, 2, ...")
    with np.errstate(invalid="ignore"):
        bad = (y < 0) | (y >= LARGEST_LABEL)
        if y.dtype.kind == "f":
            bad |= ~np.isfinite(y) | (y != np.round(y))
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"{where}: {table.at(row)}: {table.y_name} is {y[row]}, not a class id (a whole number from 0 up)"
        )
    return y.astype(np.int64)


def _group_values(table: _Table) -> np.ndarray | None:
    """The table's group values, checked: one number or text per row, numbers finite."""
    values = table.groups
    if values is None:
        return None
    if values.dtype.kind not in "biufUS" or values.ndim != 1:
        raise DataError(
            f"{table.where}: groups have shape {values.shape} and type {values.dtype}; expected one number "
            "or text per row"
        )
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        row = int(np.argmax(~np.isfinite(values)))
        raise DataError(f"{table.where}: {table.at(row)}: the group is {values[row]}, not a finite value")
    return values


def _numbered(values: np.ndarray) -> np.ndarray:
    """Group ids 0..G-1 in the sorted order of the distinct values (numbered after the test split, so
    that a group left with no training rows leaves no gap)."""
    return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _checked_rows(table: _Table) -> None:
    """At least one row, and as many labels (and groups) as feature rows."""
    n = len(table.x) if table.x.ndim else 0
    if n == 0:
        raise DataError(f"{table.where}: no rows in {table.x_name}; expected at least one sample")
    for name, other in ((table.y_name, table.y), ("groups", table.groups)):
        if other is not None and (other.ndim == 0 or len(other) != n):
            count = len(other) if other.ndim else "a scalar"
            raise DataError(f"{table.where}: {table.x_name} has {n} rows but {name} has {count}")


def _split(y: np.ndarray, fraction: float, seed: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices: ``fraction`` held out, stratified by label where possible."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    try:
        train, test = train_test_split(rows, test_size=fraction, random_state=seed, stratify=y)
    except ValueError:  # a class with a single row, or fewer test rows than classes: split unstratified
        try:
            train, test = train_test_split(rows, test_size=fraction, random_state=seed)
        except ValueError as err:
            raise DataError(
                f"{where}: cannot hold out test_fraction={fraction:g} of {len(y)} rows ({err}); give more "
                "rows, a separate test set, or test_fraction=0"
            ) from None
    return np.sort(train), np.sort(test)


class UserData(DatasetSource):
    """Data a user already has; options shared by the npz, csv and python sources (module docstring)."""

    test_fraction: float = Field(default=0.2, ge=0, lt=1)
    classes: int | None = Field(default=None, ge=1)
    shape: list[Annotated[int, Field(gt=0)]] | None = Field(default=None, min_length=1)

    @abstractmethod
    def _tables(self) -> tuple[_Table, _Table | None]:
        """The training table and, when the source has one, the test table."""

    def load(self, seed: int) -> Dataset:
        train, test = self._tables()
        for table in (train, test):
            if table is not None:
                _checked_rows(table)
        x, y, groups = _features(train, self.shape), _labels(train), _group_values(train)
        if test is not None:
            x_test, y_test = _features(test, self.shape), _labels(test)
            if x_test.shape[1:] != x.shape[1:]:
                raise DataError(
                    f"{test.where}: test inputs have shape {list(x_test.shape[1:])} but training inputs "
                    f"from {train.where} have {list(x.shape[1:])}"
                )
        n_classes = self._n_classes([(train, y)] + ([] if test is None else [(test, y_test)]))
        if test is None and self.test_fraction > 0:
            kept, held = _split(y, self.test_fraction, seed, train.where)
            x, x_test, y, y_test = x[kept], x[held], y[kept], y[held]
            groups = None if groups is None else groups[kept]
        elif test is None:
            x_test, y_test = x[:0], y[:0]
        return Dataset(
            self.name,
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(y),
            torch.from_numpy(np.ascontiguousarray(x_test)),
            torch.from_numpy(y_test),
            n_classes=n_classes,
            groups_train=None if groups is None else torch.from_numpy(_numbered(groups)),
        )

    def _n_classes(self, labelled: list[tuple[_Table, np.ndarray]]) -> int:
        """``classes`` when given (every label must be below it), else the largest label + 1."""
        if self.classes is None:
            return max(int(labels.max()) for _, labels in labelled) + 1
        for table, labels in labelled:
            if int(labels.max()) >= self.classes:
                row = int(np.argmax(labels >= self.classes))
                raise DataError(
                    f"{table.where}: {table.at(row)}: {table.y_name} is {labels[row]} but "
                    f"classes={self.classes} (class ids 0 to {self.classes - 1})"
                )
        return self.classes


# --------------------------------------------------------------------------------------------------
# Files


def _file(text: str, field: str, kind: str) -> Path:
    """The existing file ``text`` names (relative to the working directory), else a DataError."""
    path = Path(text).expanduser().absolute()
    if not path.is_file():
        found = "a directory" if path.is_dir() else "no such file"
        raise DataError(f"{field}={text!r}: {path}: {found}; expected a {kind} file")
    return path


class _PathOptions(Component):
    """``path`` and ``test_path``, declared apart so that they come first (``npz('d.npz')`` is positional).

    pydantic orders fields by the reversed MRO, and this mixin is the last base of :class:`_FileData`.
    """

    path: UserPath
    test_path: UserPath | None = None


class _FileData(UserData, _PathOptions):
    """A source read from ``path``, with ``test_path`` (a file of the same kind) as its test set."""

    kind: ClassVar[str]  # the file type, for messages

    def _tables(self) -> tuple[_Table, _Table | None]:
        train, inner_test = self._read(_file(self.path, "path", self.kind))
        if self.test_path is None:
            return train, inner_test
        return train, self._read(_file(self.test_path, "test_path", self.kind), test=True)[0]

    @abstractmethod
    def _read(self, path: Path, test: bool = False) -> tuple[_Table, _Table | None]:
        """The table in ``path`` and a test table stored in the same file, if the format has one;
        ``test`` marks a test file, whose groups are not needed."""


@DATASETS.register("npz")
class Npz(_FileData):
    """NumPy .npz arrays: x (features), y (class ids); optional x_test/y_test and a group array."""

    kind: ClassVar[str] = "NumPy .npz"
    group_array: str | None = Field(default=None, min_length=1)

    def _read(self, path: Path, test: bool = False) -> tuple[_Table, _Table | None]:
        """``x``, ``y`` and the group array; ``x_test`` and ``y_test``, when the file holds both, are the
        test set (then test_fraction is unused), unless a test file is given."""
        group = None if test else self.group_array
        arrays = self._arrays(path)
        missing = [name for name in ("x", "y", *([group] if group else [])) if name not in arrays]
        if missing:
            raise DataError(
                f"{path}: no array {', '.join(map(repr, missing))}; the file holds "
                f"{', '.join(map(repr, arrays)) or 'no arrays'} (write it with np.savez(path, x=..., y=...))"
            )
        table = _Table(
            str(path), arrays["x"], arrays["y"], arrays[group] if group else None, "array 'x'", "array 'y'"
        )
        present = [name for name in ("x_test", "y_test") if name in arrays]
        if len(present) == 1:
            raise DataError(
                f"{path}: has array {present[0]!r} but not its partner; give x_test and y_test or neither"
            )
        if not present:
            return table, None
        return table, _Table(
            str(path), arrays["x_test"], arrays["y_test"], None, "array 'x_test'", "array 'y_test'"
        )

    @staticmethod
    def _arrays(path: Path) -> dict[str, np.ndarray]:
        """Every array in the archive, read without unpickling."""
        try:
            archive = np.load(path, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: a single .npy array; expected a .npz archive with arrays x and y")
            with archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise DataError(f"{path}: cannot read it as a .npz archive ({err})") from None


def _numbers(cells: np.ndarray, lines: np.ndarray, names: Sequence[str], path: Path, hint: str) -> np.ndarray:
    """Text cells ``[n, k]`` as float64; the first cell that is not a number is a DataError naming it."""
    try:
        return cells.astype(np.float64)
    except ValueError:
        pass
    for row, column in np.ndindex(cells.shape):
        if not _is_number(cells[row, column]):
            value = cells[row, column]
            what = "an empty cell" if not value.strip() else f"{value!r}, not a number"
            raise DataError(f"{path}: line {lines[row]}, column {names[column]!r}: {what}{hint}")
    raise AssertionError("unreachable: astype failed, so some cell is not a number")


def _is_number(cell: str) -> bool:
    """Whether numpy reads ``cell`` as a float (the same parser as :func:`_numbers`)."""
    try:
        np.asarray(cell).astype(np.float64)
    except ValueError:
        return False
    return True


@DATASETS.register("csv")
class Csv(_FileData):
    """A CSV file with a header: numeric feature columns, a label column and optionally a group column."""

    kind: ClassVar[str] = "CSV"
    label_column: str = Field(default="label", min_length=1)
    group_column: str | None = Field(default=None, min_length=1)
    ignore_columns: list[str] = Field(default=[])

    def _tables(self) -> tuple[_Table, _Table | None]:
        train, test = super()._tables()
        if test is not None and test.columns != train.columns:
            missing = [c for c in train.columns if c not in test.columns]
            extra = [c for c in test.columns if c not in train.columns]
            differ = f"lacks {missing}" if missing else ""
            differ += (", " if differ and extra else "") + (f"has extra {extra}" if extra else "")
            raise DataError(
                f"{test.where}: its feature columns {differ or 'come in another order'}; they must be "
                f"those of {train.where}: {list(train.columns)}"
            )
        return train, test

    def _read(self, path: Path, test: bool = False) -> tuple[_Table, None]:
        header, cells, lines = self._cells(path)
        group = None if test else self.group_column
        named = [self.label_column, *([] if test else [*([group] if group else []), *self.ignore_columns])]
        for column in named:
            if column not in header:
                raise DataError(f"{path}: no column {column!r}; the columns are {', '.join(header)}")
        if not len(cells):
            raise DataError(f"{path}: a header and no rows; expected one row per sample after the header")
        skip = {self.label_column, *self.ignore_columns, *([self.group_column] if self.group_column else [])}
        candidates = [i for i, name in enumerate(header) if name not in skip]
        # A column in which no cell is a number (a name, a date) is text, not a feature; a column of
        # numbers with a stray text or empty cell is an error below, naming the cell.
        features = [i for i in candidates if any(_is_number(cell) for cell in cells[:, i])]
        if not features:
            raise DataError(
                f"{path}: no numeric feature column; the columns are {', '.join(header)} "
                f"(label {self.label_column!r})"
            )
        names = [header[i] for i in features]
        hint = "; remove the row or list the column in ignore_columns"
        label = header.index(self.label_column)
        table = _Table(
            str(path),
            _numbers(cells[:, features], lines, names, path, hint),
            _numbers(cells[:, [label]], lines, [self.label_column], path, "; labels are class ids 0, 1, ...")[
                :, 0
            ],
            None if group is None else self._group_values(cells[:, header.index(group)], lines, path),
            "the feature columns",
            f"column {self.label_column!r}",
            lines,
            tuple(names),
        )
        return table, None

    def _group_values(self, cells: np.ndarray, lines: np.ndarray, path: Path) -> np.ndarray:
        """The group column as numbers when every cell is one (sorted numerically), else as text."""
        stripped = np.char.strip(cells)
        if not (empty := stripped == "").any():
            try:
                return stripped.astype(np.float64)
            except ValueError:
                return stripped
        row = int(np.argmax(empty))
        raise DataError(
            f"{path}: line {lines[row]}, column {self.group_column!r}: an empty cell; give every row a group"
        )

    @staticmethod
    def _cells(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The header, the text of every non-blank row ``[n, columns]`` and each row's line number."""
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot read it as UTF-8 text ({err})") from None
        reader = csv.reader(io.StringIO(text))
        rows: list[list[str]] = []
        lines: list[int] = []
        try:
            header = [name.strip() for name in next(reader, [])]
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append(row)
                    lines.append(reader.line_num)
        except csv.Error as err:
            raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({err})") from None
        if not any(header):
            raise DataError(
                f"{path}: empty; expected a header line naming the columns, then one row per sample"
            )
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise DataError(
                f"{path}: column {', '.join(map(repr, repeated))} appears more than once in the header"
            )
        for row, line in zip(rows, lines, strict=True):
            if len(row) != len(header):
                raise DataError(f"{path}: line {line} has {len(row)} cells but the header has {len(header)}")
        cells = np.array(rows, dtype=str).reshape(len(rows), len(header))
        return header, cells, np.array(lines, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# A Python factory


class _FactoryOptions(Component):
    """``factory`` and ``test_factory``, declared apart to come first (see :class:`_PathOptions`)."""

    factory: str = Field(pattern=FACTORY)
    test_factory: str | None = Field(default=None, pattern=FACTORY)

    def modules(self) -> list[str]:
        factories = [self.factory, *([self.test_factory] if self.test_factory else [])]
        return [*super().modules(), *(target.split(":")[0] for target in factories)]


def _imported(target: str, field: str) -> Any:
    """The factory ``target`` (``"package.module:attribute"``) names, imported as every user module is
    (:func:`ppaia.plugins.import_module`: also from the working directory and the config's folder)."""
    return import_target(target, f"{field}={target!r}", DataError)


@contextmanager
def _users_code(what: str) -> Iterator[None]:
    """Turn whatever the user's code (or reading what it returned) raises into a DataError naming it."""
    try:
        yield
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{what} raised {type(err).__name__}: {err}") from err


def _array(value: Any) -> np.ndarray:
    """A tensor, array, number or list as a numpy array."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _factory_table(target: str, field: str) -> _Table:
    """Call the factory and read what it returns: a map-style Dataset of (x, y[, group]) items, or a
    (x, y[, groups]) tuple of arrays or tensors."""
    where = f"{field}={target!r}"
    factory = _imported(target, field)
    with _users_code(f"{where}: the factory"):
        made = factory()
    if isinstance(made, torch.utils.data.Dataset):
        columns = _items(made, where)
    elif isinstance(made, tuple | list) and len(made) in (2, 3):
        with _users_code(f"{where}: reading what it returned"):
            columns = [_array(part) for part in made]
    else:
        raise DataError(
            f"{where}: returned {type(made).__name__}; expected a map-style torch.utils.data.Dataset or "
            "an (x, y) pair of arrays or tensors"
        )
    return _Table(where, columns[0], columns[1], columns[2] if len(columns) == 3 else None)


def _items(dataset: torch.utils.data.Dataset, where: str) -> list[np.ndarray]:
    """The (x, y[, group]) items of a map-style dataset, stacked into arrays."""
    if not hasattr(dataset, "__len__"):
        raise DataError(
            f"{where}: returned a dataset without len() (iterable-style); expected a map-style "
            "torch.utils.data.Dataset (with __len__ and __getitem__)"
        )
    with _users_code(f"{where}: len() of the dataset"):
        n = len(dataset)  # type: ignore[arg-type]
    items = []
    for i in range(n):
        with _users_code(f"{where}: item {i}"):
            item = dataset[i]
            if not (isinstance(item, tuple | list) and len(item) in (2, 3)):
                raise DataError(
                    f"{where}: item {i} is {type(item).__name__}; expected (x, y) or (x, y, group)"
                )
            items.append([_array(part) for part in item])
    if not items:
        raise DataError(f"{where}: the dataset is empty; expected at least one sample")
    for i, item in enumerate(items):
        if len(item) != len(items[0]) or item[0].shape != items[0][0].shape:
            raise DataError(
                f"{where}: item {i} has {len(item)} parts and x of shape {list(item[0].shape)}; item 0 has "
                f"{len(items[0])} parts and x of shape {list(items[0][0].shape)}"
            )
        if any(part.size != 1 for part in item[1:]):
            raise DataError(f"{where}: item {i}: its label (and group) must be single values")
    x = np.stack([item[0] for item in items])
    return [x, *(np.stack([item[k].reshape(()) for item in items]) for k in range(1, len(items[0])))]


@DATASETS.register("python")
class PythonFactory(UserData, _FactoryOptions):
    """A user factory 'package.module:function' returning a map-style Dataset or (x, y) arrays."""

    def _tables(self) -> tuple[_Table, _Table | None]:
        train = _factory_table(self.factory, "factory")
        test = None if self.test_factory is None else _factory_table(self.test_factory, "test_factory")
        return train, test


def data_source(text: str) -> DatasetSource:
    """The source a ``--data``/``--test`` argument names: a bare path ending in ``.npz`` or ``.csv`` is that
    file with default options (``h0.npz``); anything else is a dataset spec
    (``csv(path='h0.csv', label_column='diagnosis')``, ``python(factory='mydata:load')``, ``digits``).

    Raises :class:`~ppaia.registry.SpecError` for text that is neither, and pydantic's ``ValidationError``
    for an option that is wrong (it names the option).
    """
    stripped = text.strip()
    kind = SUFFIXES.get(Path(stripped).suffix.lower())
    if kind is not None:
        return DATASETS.create({"name": kind, "path": stripped})
    return DATASETS.create(stripped)
