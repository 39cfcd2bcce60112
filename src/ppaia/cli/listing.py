"""How ``ppaia list`` shows a component's options: ``train_samples: int > 0, optional``, not pydantic's
``Optional[Annotated[int, FieldInfo(annotation=NoneType, required=True, metadata=[Gt(gt=0)])]]``.

One formatter reads a field's annotation and its constraints wherever pydantic keeps them (the field's
own metadata, an ``Annotated`` inside a union or a list, a ``Field()`` used as annotation metadata) and
writes them as a reader would: bounds (``> 0``, ``in [0, 1)``), choices (``'uniform' | 'data_size'``),
``list of ...``, unions (``int or list of int``), ``path`` for file options, then the default.
"""

from __future__ import annotations

import json
import math
import re
import types
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ppaia.paths import PATH

__all__ = ["option_text", "options_text", "type_text"]

_NAMES = {int: "int", float: "float", str: "str", bool: "bool", dict: "table", type(None): "None"}
_LOWER = {at.Gt: ">", at.Ge: "≥"}
_UPPER = {at.Lt: "<", at.Le: "≤"}


def _number(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flat(metadata: Iterable[Any]) -> list[Any]:
    """Constraint objects, with a ``Field(...)`` used as ``Annotated`` metadata opened up."""
    found: list[Any] = []
    for item in metadata:
        found += _flat(item.metadata) if isinstance(item, FieldInfo) else [item]
    return found


def _bounds(metadata: list[Any]) -> str:
    """``> 0``, ``≤ 1`` or ``in (0, 1]`` from Gt/Ge/Lt/Le constraints."""
    lower = next(((kind, item) for item in metadata for kind in _LOWER if isinstance(item, kind)), None)
    upper = next(((kind, item) for item in metadata for kind in _UPPER if isinstance(item, kind)), None)

    def value(pair: tuple[type, Any]) -> str:
        kind, item = pair
        return _number(getattr(item, kind.__name__.lower()))

    if lower and upper:
        left = "(" if lower[0] is at.Gt else "["
        right = ")" if upper[0] is at.Lt else "]"
        return f"in {left}{value(lower)}, {value(upper)}{right}"
    if lower:
        return f"{_LOWER[lower[0]]} {value(lower)}"
    if upper:
        return f"{_UPPER[upper[0]]} {value(upper)}"
    return ""


def _length(metadata: list[Any]) -> tuple[str, str]:
    """(prefix, suffix) for length constraints: ``non-empty`` for a minimum of 1, else ``(length ≥ n)``."""
    low = next((item.min_length for item in metadata if isinstance(item, at.MinLen)), 0)
    high = next((item.max_length for item in metadata if isinstance(item, at.MaxLen)), None)
    prefix = "non-empty " if low == 1 else ""
    parts = [f"≥ {low}"] if low > 1 else []
    parts += [f"≤ {high}"] if high is not None else []
    return prefix, f" (length {' and '.join(parts)})" if parts else ""


def _extras(metadata: list[Any]) -> list[str]:
    """Other constraints a reader needs: a pattern, a step, infinity allowed."""
    extras = []
    for item in metadata:
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            extras.append(f"matching {pattern}")
        if isinstance(item, at.MultipleOf):
            extras.append(f"multiple of {_number(item.multiple_of)}")
        if getattr(item, "allow_inf_nan", None) is True:
            extras.append("inf allowed")
    return extras


def type_text(annotation: Any, metadata: Iterable[Any] = ()) -> str:
    """A readable type with its constraints: ``float in [0, 1)``, ``non-empty list of int > 0``, ...

    `metadata`: constraints kept beside the annotation (a field's own, which pydantic applies to the
    non-None member of an optional type)."""
    metadata = _flat(metadata)
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *more = get_args(annotation)
        return type_text(base, [*metadata, *_flat(more)])
    if origin in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        text = " or ".join(type_text(arg, metadata) for arg in members)
        return f"{text} or None" if len(members) < len(get_args(annotation)) else text
    if origin is Literal:
        return " | ".join(
            json.dumps(choice) if isinstance(choice, str) else repr(choice) for choice in get_args(annotation)
        )
    prefix, length = _length(metadata)
    if origin in (list, tuple, set, frozenset):
        items = [arg for arg in get_args(annotation) if arg is not Ellipsis]
        item = " or ".join(type_text(arg) for arg in dict.fromkeys(items)) if items else "values"
        return f"{prefix}{origin.__name__} of {item}{length}"
    if origin is dict:
        return f"{prefix}table{length}"
    if PATH in metadata:
        name = "path"
    elif isinstance(annotation, type):
        name = _NAMES.get(annotation) or annotation.__name__
    else:
        name = re.sub(r"\btyping\.", "", str(annotation))
    extras = _extras(metadata)
    words = [f"{prefix}{name}{length}", _bounds(metadata), f"({', '.join(extras)})" if extras else ""]
    return " ".join(word for word in words if word)


def _default(value: Any) -> str:
    """A default as a config would write it (TOML-like: ``false``, ``"label"``, ``[64, 64]``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def option_text(name: str, field: FieldInfo) -> str:
    """``name: type constraints = default``; ``, required`` when there is no default, ``, optional``
    when it defaults to None (off / chosen for you)."""
    kind = type_text(field.annotation, field.metadata)
    if field.is_required():
        return f"{name}: {kind}, required"
    default = field.get_default(call_default_factory=True)
    if default is None:
        return f"{name}: {kind.removesuffix(' or None')}, optional"
    if default is PydanticUndefined:
        return f"{name}: {kind}"
    return f"{name}: {kind} = {_default(default)}"


def options_text(cls: type[BaseModel]) -> str:
    """Every option of component class `cls`, one per line ("" when it has none)."""
    return "\n".join(option_text(name, field) for name, field in cls.model_fields.items())
