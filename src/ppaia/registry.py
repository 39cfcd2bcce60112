"""Name -> component registries, and the ``name(arg, key=value)`` spec syntax used in configs.

Every pluggable piece (dataset, partitioner, model, topology, mixing rule, cooperation rule, ...) is a
pydantic model whose fields are its options. Registering the class by name makes it usable from a config
as ``"dirichlet(0.5)"``, ``"mlp(hidden=[64, 64])"`` or a TOML table ``{name = "dirichlet", alpha = 0.5}``;
pydantic validates the options, so a bad value is reported with the option's name.
"""

from __future__ import annotations

import ast
import keyword
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, field_validator

from ppaia.plugins import load_installed

__all__ = [
    "INT64_MAX",
    "Component",
    "Registry",
    "SpecError",
    "fits_int64",
    "parse_spec",
    "spec_to_table",
    "split_arguments",
]

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

    def spec(self, context: Any = None) -> dict[str, Any]:
        """The TOML-table form of this component (name plus every option), for resolved configs;
        `context` is pydantic's serialization context (e.g. ``{"portable": True}``: paths by file name)."""
        return {"name": self.name, **self.model_dump(mode="json", context=context)}

    def modules(self) -> list[str]:
        """The modules a config must import to build this component again: its class's (a plugin's, for
        a component registered outside ppaia); one that names user code (a factory) adds that code's."""
        return [type(self).__module__]

    def label(self) -> str:
        """Short ``name(option=value, ...)`` form for tables and plot titles."""
        options = ", ".join(f"{k}={v}" for k, v in self.model_dump(mode="json").items())
        return f"{self.name}({options})" if options else self.name


T = TypeVar("T", bound=Component)


WORDS = {"true": True, "false": False, "True": True, "False": False, "None": None}
_NAME = r"[^\W\d]\w*"
_CALL = re.compile(rf"\s*({_NAME})\s*(?:\((.*)\))?\s*", re.DOTALL)
_KEYWORD = re.compile(rf"\s*({_NAME})\s*=(?!=)(.*)", re.DOTALL)
# A bare path: path characters only (no space, quote, bracket, comma or '='), at least one letter, and
# more than a bare word: ``lab.edges``, ``data/train-images``, ``../x.csv``, ``~/data``, ``mydata:load``.
_BARE = re.compile(r"[\w.\-/~+@%:]*[^\W\d][\w.\-/~+@%:]*")


def _literal(node: ast.expr, text: str) -> Any:
    """The value of a literal argument: number, string, boolean (TOML or Python spelling), list, table."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | bool | None):
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


def _value(source: str, text: str, key: str = "") -> Any:
    """One argument's value: a literal, or else a bare path taken as its text (see :func:`parse_spec`)."""
    try:
        return _literal(ast.parse(source, mode="eval").body, text)
    except (SyntaxError, SpecError):
        pass
    if _BARE.fullmatch(source) and not source.isidentifier():
        return source
    bare = " (a bare word is not taken as text)" if source.isidentifier() else ""
    raise SpecError(
        f"{text!r}: {source!r} is not a literal (number, string, boolean, list, table){bare}; "
        f"if it is text or a path, quote it: {key}{source!r}"
    )


def split_arguments(inner: str, text: str) -> list[str]:
    """`inner` (what is between a spec's parentheses, or a list of values) cut at its top-level commas,
    outside quotes and brackets; `text` is what an error quotes."""
    parts, depth, quote, start, escaped = [], 0, "", 0, False
    for i, char in enumerate(inner):
        if quote:
            escaped, quote = (not escaped and char == "\\"), ("" if char == quote and not escaped else quote)
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                break
        elif char == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    if quote or depth:
        raise SpecError(f"{text!r}: unbalanced brackets or quotes")
    parts = [part.strip() for part in [*parts, inner[start:]]]
    if parts == [""]:
        return []
    if len(parts) > 1 and not parts[-1]:
        parts.pop()  # a trailing comma
    if "" in parts:
        raise SpecError(f"{text!r}: an argument is empty")
    return parts


def parse_spec(text: str) -> dict[str, Any]:
    """Parse ``"name"`` or ``"name(1, key=[2, 3])"`` into ``{"name": ..., 0: 1, "key": [2, 3]}``.

    Positional arguments are returned under integer keys; :meth:`Registry.create` maps them to the
    component's options in declaration order. An argument is a literal — number, string, ``true``/``false``
    (or Python's spelling), ``None``, list, table — or a *bare path*: path characters only, at least one
    letter, and not a bare word (``lab.edges``, ``data/train-images``, ``../x.csv``, ``mydata:load``),
    taken as its text. A bare word (``path=edges``) stays an error that says to quote it: it may as well
    be a misspelt ``true`` or number; so does anything with a space, a quote, a bracket, a comma or ``=``.
    """
    text = text.strip()
    form = f"{text!r} is not of the form name or name(arg, key=value)"
    call = _CALL.fullmatch(text)
    if call is None or keyword.iskeyword(call[1]):
        raise SpecError(form)
    name, inner = call[1], call[2]
    table: dict[Any, Any] = {"name": name}
    if inner is None:
        return table
    for index, argument in enumerate(split_arguments(inner, text)):
        if argument.startswith("*"):
            raise SpecError(f"{text!r}: * and ** arguments are not supported; write each option out")
        named = _KEYWORD.fullmatch(argument)
        if named is None:
            if any(isinstance(key, str) and key != "name" for key in table):
                raise SpecError(f"{text!r}: a positional argument follows a keyword argument")
            table[index] = _value(argument, text)
        elif named[1] == "name":
            raise SpecError(f"{text!r}: 'name' is the component's name, not an option")
        elif named[1] in table:
            raise SpecError(f"{text!r}: {named[1]!r} is given twice")
        else:
            table[named[1]] = _value(named[2].strip(), text, f"{named[1]}=")
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

    @property
    def _loaded(self) -> dict[str, type[T]]:
        """The components, installed packages' plugins included (imported at the first lookup)."""
        load_installed()
        return self._items

    def get(self, name: str) -> type[T]:
        try:
            return self._loaded[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise SpecError(
                f"unknown {self.kind} {name!r}; known: {known} (your own? load the module that registers it: "
                '--plugin MODULE, or plugins = ["MODULE"] in the config)'
            ) from None

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
        return iter(sorted(self._loaded.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._loaded

    def names(self) -> list[str]:
        return sorted(self._loaded)
