"""File paths in component options (a dataset's file, an edge list, ...), made absolute once.

A relative path means nothing on its own: it is relative to *some* folder, and a written ``config.toml``
read again from elsewhere would look in the wrong one. So every option that names a file or folder is
declared :data:`UserPath` and is absolute from the moment it is validated: relative to the working
directory for a value given on the command line or in Python, and relative to the config file's folder
for a value written in a config file (:func:`resolve_path_options`, which ``load_config`` applies to the
file before the command line's overrides). A run's ``config.toml`` therefore holds absolute paths and
re-runs from any folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import AfterValidator, BaseModel, PlainSerializer, SerializationInfo, StringConstraints

__all__ = ["PATH", "UserPath", "absolute", "path_options", "resolve_path_options"]


class _PathMarker:
    """Marks an option as a file path (for resolution and for ``ppaia list``, which shows it as `path`)."""

    def __repr__(self) -> str:
        return "path"


PATH = _PathMarker()


def absolute(value: str, base: str | Path | None = None) -> str:
    """`value` (``~`` expanded) as an absolute, normalised path, relative to `base` (default: the working
    directory). Normalised lexically (``a/../b`` is ``b``) and symlinks are kept: the path the user wrote,
    made absolute, not where a link happens to point today."""
    path = os.path.expanduser(value)
    return os.path.normpath(os.path.join(base if base is not None else os.getcwd(), path))


def _shown(value: str, info: SerializationInfo) -> str:
    """The path as written out; in a *portable* dump (``context={"portable": True}``) only its file name:
    what peers on different machines compare, whose folders are their own business."""
    return os.path.basename(value) if (info.context or {}).get("portable") else value


UserPath = Annotated[
    str, StringConstraints(min_length=1), AfterValidator(absolute), PlainSerializer(_shown), PATH
]
"""A file or folder option: non-empty, made absolute against the working directory when validated."""


def _is_path(annotation: Any) -> bool:
    """Whether `annotation` is :data:`UserPath`, alone or in a union (``UserPath | None``)."""
    if PATH in getattr(annotation, "__metadata__", ()):
        return True
    return any(_is_path(arg) for arg in get_args(annotation))


def path_options(cls: type[BaseModel]) -> list[str]:
    """The options of component class `cls` that are :data:`UserPath`."""
    return [
        name
        for name, field in cls.model_fields.items()
        if PATH in field.metadata or _is_path(field.annotation)
    ]


def resolve_path_options(spec: Mapping[str, Any], cls: type[BaseModel], base: str | Path) -> dict[str, Any]:
    """A copy of the component table `spec` (options by name, as ``Registry.normalize`` gives) with each
    relative path option of `cls` made absolute against `base`; other values (and non-text values, which
    validation will refuse) are left as they are."""
    table = dict(spec)
    for name in path_options(cls):
        if isinstance(table.get(name), str) and table[name]:
            table[name] = absolute(table[name], base)
    return table
