"""Component specs: parsing ``name(arg, key=value)``, building components from a registry, round trips."""

import random
import re

import pytest
from pydantic import Field, ValidationError

from ppaia.data import PARTITIONERS
from ppaia.registry import Component, Registry, SpecError, parse_spec, spec_to_table

DEMOS: Registry[Component] = Registry("demo")


@DEMOS.register("demo")
class Demo(Component):
    """Three options of different types, in this declaration order."""

    alpha: float = Field(default=0.5, gt=0)
    hidden: list[int] = Field(default=[4])
    mode: str = "fast"


@DEMOS.register("bare")
class Bare(Component):
    """No options at all."""


@pytest.mark.parametrize(
    ("text", "table"),
    [
        ("iid", {"name": "iid"}),
        ("  iid  ", {"name": "iid"}),
        ("dirichlet(0.5)", {"name": "dirichlet", 0: 0.5}),
        ("mlp(hidden=[32, 16])", {"name": "mlp", "hidden": [32, 16]}),
        ("demo(2, [1, 2], mode='slow')", {"name": "demo", 0: 2, 1: [1, 2], "mode": "slow"}),
        ("demo(flag=True, d={'a': 1})", {"name": "demo", "flag": True, "d": {"a": 1}}),
    ],
)
def test_parse_spec(text: str, table: dict) -> None:
    assert parse_spec(text) == table


@pytest.mark.parametrize("text", ["a.b(1)", "x(y)", "1 +", "x(1)(2)", "3", "x(*[1])", "x([y])", ""])
def test_parse_spec_rejects_non_spec_text(text: str) -> None:
    with pytest.raises(SpecError):
        parse_spec(text)


def test_parse_spec_rejects_unhashable_dict_key_with_spec_error() -> None:
    with pytest.raises(SpecError):
        parse_spec("x({[1]: 2})")


def test_parse_spec_does_not_silently_drop_double_star_arguments() -> None:
    with pytest.raises(SpecError):
        parse_spec("dirichlet(**{'alpha': 0.1})")


def test_spec_to_table_requires_a_name_in_tables() -> None:
    with pytest.raises(SpecError, match="'name'"):
        spec_to_table({"alpha": 1})


def test_spec_to_table_rejects_other_types() -> None:
    with pytest.raises(SpecError, match="int"):
        spec_to_table(3)  # type: ignore[arg-type]


def test_create_maps_positional_args_in_declaration_order() -> None:
    demo = DEMOS.create("demo(2, [1, 2], 'slow')")
    assert (demo.alpha, demo.hidden, demo.mode) == (2.0, [1, 2], "slow")


def test_create_mixes_positional_and_keyword_args() -> None:
    demo = DEMOS.create("demo(3, mode='slow')")
    assert (demo.alpha, demo.hidden, demo.mode) == (3.0, [4], "slow")


def test_create_accepts_a_table() -> None:
    demo = DEMOS.create({"name": "demo", "hidden": [8, 8]})
    assert isinstance(demo, Demo) and demo.hidden == [8, 8] and demo.alpha == 0.5


def test_create_does_not_mutate_the_given_table() -> None:
    table = {"name": "demo", "alpha": 2}
    DEMOS.create(table)
    assert table == {"name": "demo", "alpha": 2}


def test_create_returns_a_component_unchanged() -> None:
    demo = Demo(alpha=1)
    assert DEMOS.create(demo) is demo


def test_create_on_a_real_registry() -> None:
    assert PARTITIONERS.create("dirichlet(0.1)").alpha == 0.1


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown demo 'nope'; known: bare, demo"):
        DEMOS.create("nope")


def test_too_many_positional_args() -> None:
    with pytest.raises(SpecError, match="at most 3"):
        DEMOS.create("demo(1, [2], 'a', 4)")
    with pytest.raises(SpecError, match="at most 0"):
        DEMOS.create("bare(1)")


@pytest.mark.parametrize(
    ("spec", "option"),
    [
        ("demo(-1)", "alpha"),
        ("demo(alpha='x')", "alpha"),
        ("demo(hidden=3)", "hidden"),
        ("demo(mode=[1])", "mode"),
    ],
)
def test_bad_option_is_a_validation_error_naming_it(spec: str, option: str) -> None:
    with pytest.raises(ValidationError) as info:
        DEMOS.create(spec)
    assert [e["loc"][0] for e in info.value.errors()] == [option]


def test_unknown_option_is_a_validation_error_naming_it() -> None:
    with pytest.raises(ValidationError) as info:
        DEMOS.create("demo(beta=1)")
    assert info.value.errors()[0]["loc"] == ("beta",)


def test_positional_and_keyword_for_the_same_option_is_an_error() -> None:
    with pytest.raises(SpecError):
        DEMOS.create("demo(1, alpha=2)")


def test_registering_a_name_twice_raises() -> None:
    registry: Registry[Component] = Registry("thing")
    registry.register("a")(type("A", (Component,), {"__module__": __name__}))
    with pytest.raises(ValueError, match="'a' is registered twice"):
        registry.register("a")(type("B", (Component,), {"__module__": __name__}))


def test_registry_lookup_and_listing() -> None:
    assert DEMOS.names() == ["bare", "demo"]
    assert [name for name, _ in DEMOS] == ["bare", "demo"]
    assert "demo" in DEMOS and "nope" not in DEMOS
    assert DEMOS.get("demo") is Demo and Demo.name == "demo"


@pytest.mark.parametrize("spec", ["demo", "demo(2, [1, 2], 'slow')", "bare"])
def test_spec_round_trips_through_create(spec: str) -> None:
    component = DEMOS.create(spec)
    table = component.spec()
    assert table["name"] == component.name
    assert DEMOS.create(table) == component


def test_spec_lists_every_option() -> None:
    assert DEMOS.create("demo(2)").spec() == {"name": "demo", "alpha": 2.0, "hidden": [4], "mode": "fast"}


def test_label() -> None:
    assert DEMOS.create("demo(2, mode='x')").label() == "demo(alpha=2.0, hidden=[4], mode=x)"
    assert DEMOS.create("bare").label() == "bare"
    assert PARTITIONERS.create("dirichlet(0.5)").label() == "dirichlet(alpha=0.5)"


# Bare (unquoted) paths: taken as text where no literal reading exists, an error that says to quote
# them where one might.


def _bare_paths(count: int, seed: int = 0) -> list[str]:
    """Path-like texts as users type them: folders, dots, dashes, ~, leading ../ and /, a module:attr."""
    rng = random.Random(seed)
    words = ["lab", "data", "train-images", "x_1", "v2", "mnist", "edges", "2024", "a.b", "my_set"]
    paths = []
    for _ in range(count):
        parts = rng.sample(words, rng.randint(1, 3))
        path = rng.choice(["", "../", "./", "/", "~/", "../../"]) + "/".join(parts)
        path += rng.choice(["", ".csv", ".edges", ".npz", "/"])
        if path.isidentifier() or not any(c.isalpha() or c == "_" for c in path):
            path += ".txt"  # a bare word or a number is not a bare path
        paths.append(path)
    return [*paths, "lab.edges", "data/train-images", "../x.csv", "mydata:load", "~/d", "1.csv"]


@pytest.mark.parametrize("path", _bare_paths(40))
def test_a_bare_path_is_taken_as_its_text_like_the_quoted_one(path: str) -> None:
    quoted = parse_spec(f"edgelist(path='{path}')")
    assert parse_spec(f"edgelist(path={path})") == quoted == {"name": "edgelist", "path": path}
    assert parse_spec(f"x({path}, 3, flag=true)") == {"name": "x", 0: path, 1: 3, "flag": True}


@pytest.mark.parametrize(
    "value",
    [
        "edges",
        "y",
        "inf",
        "nan",
        "yes",
        "my edges.txt",
        "1/2",
        "[a/b]",
        "{'k': v}",
        "a=b",
        "...",
        "f(1)",
    ],
)
def test_a_bare_value_that_is_not_clearly_a_path_says_to_quote_it(value: str) -> None:
    with pytest.raises(SpecError, match=rf"quote it: path={re.escape(repr(value))}"):
        parse_spec(f"x(path={value})")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x(1, , 2)", "empty"),
        ("x(,)", "empty"),
        ("x(a=1, 2)", "positional argument follows"),
        ("x(a=1, a=2)", "given twice"),
        ("x(name=1)", "component's name"),
        ("x('a)", "unbalanced"),
        ("x([1)", "unbalanced"),
        ("x(1))", "not of the form|unbalanced"),
        ("x(*a)", r"\* and \*\*"),
        ("if(1)", "not of the form"),
        ("x y", "not of the form"),
    ],
)
def test_malformed_argument_lists_are_spec_errors_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(text)


def test_quoted_arguments_keep_commas_brackets_and_escaped_quotes() -> None:
    text = """x("a,b", 'c)d', "e\\"f,", [1, (2, 3)], {"k": [4]}, t=1,)"""
    assert parse_spec(text) == {
        "name": "x",
        0: "a,b",
        1: "c)d",
        2: 'e"f,',
        3: [1, [2, 3]],
        4: {"k": [4]},
        "t": 1,
    }


def test_any_text_parses_or_is_a_spec_error() -> None:
    """Hostile or mistyped specs (seeded random texts of spec characters) end in SpecError, nothing else."""
    rng = random.Random(7)
    alphabet = "xy1._/-=,()[]{}'\"\\ :*~"
    for _ in range(3000):
        text = "x(" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) + rng.choice([")", ""])
        try:
            table = parse_spec(text)
        except SpecError:
            continue
        assert table["name"] == "x" and all(isinstance(key, int | str) for key in table)
