"""JSON from untrusted bytes, parsed within bounds: the wire's messages, safetensors headers and the JSON
files of run folders (which a report, a dashboard or a resumed sweep reads, whoever put them there).

Python's parser recurses (in C) once per level of nesting, so deep input is refused from a cheap scan
before it is parsed; it also keeps the last of repeated keys silently (two readers could then see two
different objects in one text) and reads ``NaN`` and ``Infinity``, which are not JSON. :func:`loads`
refuses all three with ValueError, as it does anything else that is not JSON.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import accumulate
from typing import Any

__all__ = ["loads"]

_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def loads(text: str, max_depth: int, *, constants: bool = False) -> Any:
    """The JSON value in `text`; ValueError if it is not JSON, nests arrays and objects deeper than
    `max_depth`, repeats a key within an object or holds NaN or an infinity (unless `constants`: what
    Python's own writer puts for them, as in a run's summary.json)."""
    if _too_deep(text, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    parse_constant = float if constants else _reject_constant
    try:
        return json.loads(text, parse_constant=parse_constant, object_pairs_hook=_unique_keys)
    except RecursionError:  # only if the caller's stack was already nearly full
        raise ValueError("nested too deeply for the stack") from None


def _too_deep(text: str, max_depth: int) -> bool:
    """Whether the brackets outside strings nest deeper than `max_depth`."""
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > max_depth


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        repeated = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise ValueError(f"an object repeats the key {repeated[:40]!r}")
    return obj
