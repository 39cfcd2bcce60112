"""Name -> component registries, and the ``name(arg, key=value)`` spec syntax used in configs.

Every pluggable piece (dataset, partitioner, model, topology, mixing rule, cooperation rule, ...) is a
pydantic model whose fields are its options. Registering the class by name makes it usable from a config
as ``"dirichlet(0.5)"``, ``"mlp(hidden=[64, 64])"`` or a TOML table ``{name = "dirichlet", alpha = 0.5}``;
pydantic validates the options, so a bad value is reported with the option's name.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["INT64_MAX", "Component", "Registry", "SpecError", "fits_int64", "parse_spec", "spec_to_table"]

INT64_MAX = 2**63 - 1


def fits_int64(value: Any) -> Any:
    """Pass `value` through if every int in it (lists included) fits in int64, torch's and numpy's index
    type that every count and id of a config ends up in; Python's unbounded ints would overflow there."""
    if isinstance(value, list):
        for item in value:
            fits_int64(item)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        raise ValueError(f"{value} does not fit in a 64-bit integer (|value| ≤ 2^63 − 1)")
    return value


class SpecError(ValueError):
    """A component spec that cannot be parsed or names an unknown component."""


class Component(BaseModel):
    """Base of every registered piece: its fields are the options a config may set.

    Float options are finite unless a field says otherwise (``allow_inf_nan=True``), and int options fit
    in int64: NaN, ±inf and oversized ints otherwise end in an arithmetic error deep inside a run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, allow_inf_nan=False)

    name: ClassVar[str] = ""  # set by Registry.register

    @field_validator("*")
    @classmethod
    def _fits_int64(cls, value: Any) -> Any:
        return fits_int64(value)

    def spec(self) -> dict[str, Any]:
        """The TOML-table form of this component (name plus every option), for resolved configs."""
        return {"name": self.name, **self.model_dump(mode="json")}

    def label(self) -> str:
        """Short ``name(option=value, ...)`` form for tables and plot titles."""
        options = ", ".join(f"{k}={v}" for k, v in self.model_dump(mode="json").items())
        return f"{self.name}({options})" if options else self.name


T = TypeVar("T", bound=Component)


WORDS = {"true": True, "false": False, "True": True, "False": False, "None": None}


def _literal(node: ast.expr, text: str) -> Any:
    """The value of a literal argument: number, string, boolean (TOML or Python spelling), list, table."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in WORDS:
        return WORDS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand, text)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(item, text) for item in node.elts]
    if isinstance(node, ast.Dict) and all(isinstance(key, ast.Constant) for key in node.keys):
        return {key.value: _literal(value, text) for key, value in zip(node.keys, node.values, strict=True)}
    raise SpecError(f"{text!r}: arguments must be literals (numbers, strings, booleans, lists, tables)")


def parse_spec(text: str) -> dict[str, Any]:
    """Parse ``"name"`` or ``"name(1, key=[2, 3])"`` into ``{"name": ..., 0: 1, "key": [2, 3]}``.

    Positional arguments are returned under integer keys; :meth:`Registry.create` maps them to the
    component's options in declaration order.
    """
    text = text.strip()
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as err:
        raise SpecError(f"{text!r} is not of the form name or name(arg, key=value)") from err
    if isinstance(tree, ast.Name):
        return {"name": tree.id}
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)):
        raise SpecError(f"{text!r} is not of the form name or name(arg, key=value)")
    if any(kw.arg is None for kw in tree.keywords) or any(isinstance(a, ast.Starred) for a in tree.args):
        raise SpecError(f"{text!r}: * and ** arguments are not supported; write each option out")
    table: dict[Any, Any] = {"name": tree.func.id}
    table.update({i: _literal(arg, text) for i, arg in enumerate(tree.args)})
    table.update({kw.arg: _literal(kw.value, text) for kw in tree.keywords})
    return table


def spec_to_table(spec: str | Mapping[str, Any]) -> dict[Any, Any]:
    """Normalise a spec given as a string or a table into a table with a ``name`` key."""
    if isinstance(spec, str):
        return parse_spec(spec)
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise SpecError("a component table needs a 'name' key")
        return dict(spec)
    raise SpecError(f"expected a name string or a table, got {type(spec).__name__}")


class Registry(Generic[T]):
    """Components of one kind, by name; ``ppaia list`` prints every registry."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: make ``cls`` available under ``name``."""

        def add(cls: type[T]) -> type[T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name
            self._items[name] = cls
            return cls

        return add

    def get(self, name: str) -> type[T]:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise SpecError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def normalize(self, spec: str | Mapping[str, Any]) -> dict[str, Any]:
        """The spec as a table of named options: positional arguments mapped in declaration order."""
        table = spec_to_table(spec)
        cls = self.get(str(table["name"]))
        options = list(cls.model_fields)
        positional = sorted(k for k in table if isinstance(k, int))
        if len(positional) > len(options):
            raise SpecError(f"{cls.name} takes at most {len(options)} arguments, got {len(positional)}")
        for index in positional:
            if options[index] in table:
                raise SpecError(f"{cls.name} got two values for {options[index]!r}")
            table[options[index]] = table.pop(index)
        return table

    def create(self, spec: str | Mapping[str, Any] | T) -> T:
        """Build a component from a spec; option errors are pydantic ValidationErrors naming the option."""
        if isinstance(spec, Component):
            return spec  # type: ignore[return-value]
        table = self.normalize(spec)
        return self.get(table.pop("name"))(**table)

    def __iter__(self) -> Iterator[tuple[str, type[T]]]:
        return iter(sorted(self._items.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)
