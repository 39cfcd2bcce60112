"""``ppaia list`` shows options as a reader writes them (issue 16, item 9): ``train_samples: int > 0,
optional``, never pydantic's raw ``Optional[Annotated[int, FieldInfo(...)]]``."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from ppaia.cli import main
from ppaia.cli.listing import option_text, options_text
from ppaia.config import ExperimentConfig
from ppaia.paths import UserPath

runner = CliRunner()
RAW = ("Annotated[", "FieldInfo(", "typing.", "NoneType", "<class", "PydanticUndefined", "metadata=")
COMPONENTS = [(title, name, cls) for title, registry in main.REGISTRIES for name, cls in registry]


@pytest.fixture(scope="module")
def listing() -> str:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(main.console, "width", 400)  # one line per option, as on a wide terminal
        result = runner.invoke(main.app, ["list"])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_issues_example_reads_as_asked(listing) -> None:
    assert "train_samples: int > 0, optional" in listing
    assert "path: path, required" in listing


def test_no_raw_annotation_is_shown(listing) -> None:
    assert not [raw for raw in RAW if raw in listing]


@pytest.mark.parametrize(("title", "name", "cls"), COMPONENTS, ids=[f"{t}:{n}" for t, n, _ in COMPONENTS])
def test_every_option_of_every_component_is_listed_readably(listing, title, name, cls) -> None:
    lines = options_text(cls).splitlines()
    assert len(lines) == len(cls.model_fields)
    for line, option in zip(lines, cls.model_fields, strict=True):
        assert line.startswith(f"{option}: ")
        assert not [raw for raw in RAW if raw in line], line
        assert line in listing, f"{title} {name}: {line!r} not in `ppaia list`"


class _Example(BaseModel):
    """Fields of every kind the formatter must read."""

    a: Annotated[int, Field(gt=0)] | None = None
    b: float = Field(default=0.2, ge=0, lt=1)
    c: float = Field(default=0.9, gt=0, le=1)
    d: Literal["uniform", "data_size"] = "uniform"
    e: list[Annotated[int, Field(gt=0)]] | None = Field(default=None, min_length=1)
    f: UserPath
    g: UserPath | None = None
    h: float | None = Field(default=2.0, ge=1)
    i: Annotated[float, Field(ge=0, lt=1)] | list[Annotated[int, Field(ge=0)]] = 0.0
    j: str = Field(default="label", min_length=1)
    k: bool = False
    m: list[list[int]] = Field(default_factory=lambda: [[0, 1], [2]])
    n: str = Field(pattern=r"^\w+:\w+$")
    o: float = Field(default=8.0, gt=0, allow_inf_nan=True)
    p: list[str] = Field(default=[], min_length=2, max_length=4)
    q: int = Field(default=1, le=10)


@pytest.mark.parametrize(
    ("option", "text"),
    [
        ("a", "a: int > 0, optional"),
        ("b", "b: float in [0, 1) = 0.2"),
        ("c", "c: float in (0, 1] = 0.9"),
        ("d", 'd: "uniform" | "data_size" = "uniform"'),
        ("e", "e: non-empty list of int > 0, optional"),
        ("f", "f: path, required"),
        ("g", "g: path, optional"),
        ("h", "h: float ≥ 1 or None = 2.0"),
        ("i", "i: float in [0, 1) or list of int ≥ 0 = 0.0"),
        ("j", 'j: non-empty str = "label"'),
        ("k", "k: bool = false"),
        ("m", "m: list of list of int = [[0, 1], [2]]"),
        ("n", r"n: str (matching ^\w+:\w+$), required"),
        ("o", "o: float > 0 (inf allowed) = 8.0"),
        ("p", "p: list of str (length ≥ 2 and ≤ 4) = []"),
        ("q", "q: int ≤ 10 = 1"),
    ],
)
def test_the_formatter_reads_each_kind_of_field(option, text) -> None:
    assert option_text(option, _Example.model_fields[option]) == text


def test_the_experiment_config_reads_too() -> None:
    """The same formatter serves the top-level fields (components by their kind)."""
    text = options_text(ExperimentConfig)
    assert "seed: int in [0, 4294967295] = 0" in text.splitlines()
    assert "attack: Attack, optional" in text.splitlines()
    assert not [raw for raw in RAW if raw in text]
