"""A researcher's own code: plugins that register components, and ``"module:factory"`` targets.

A *plugin* is a module whose import registers components (``@RULES.register("lazy_consensus")``, a
dataset, a partitioner, a topology, an attack, ...). Plugins come from three places:

- the config key ``plugins = ["mypkg.rules", "lib/myrules.py"]``, imported before the rest of the config
  is validated (:class:`ppaia.config.ExperimentConfig` validates it first), so that the names they
  register are found;
- ``--plugin MODULE`` on ``ppaia run``, ``sweep``, ``list``, ``peer`` and ``launch``, which adds to that
  key (a launched swarm's peers get it through the config the launcher writes for them);
- installed packages, through the ``ppaia.plugins`` entry-point group, loaded once, lazily, at the first
  registry lookup (or when a command starts, so that a broken one is reported at once).

An entry is a module name or the path of a ``.py`` file (relative to the config file in a config, to
the working directory on the command line). Every user module — a plugin named by module, a model's or
a dataset's ``"module:factory"`` — is imported by :func:`import_module`, the one place that searches the
normal import path first (so a file in the working directory never shadows an installed package), then
the working directory, then the folders of the config files loaded in this process: ``mymodels.py``
next to the config, or where the command is run, needs neither PYTHONPATH nor installing.

A written config records its plugins (:func:`recorded`): the config's own, plus the module of every
component it uses that was registered outside ppaia (a rule a Python script registered by importing
its module), plus the modules its factories name. A plain ``.py`` module outside the installed packages
is recorded by its absolute path, so the config re-runs from any folder.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType
from typing import Any

from ppaia.paths import absolute

__all__ = [
    "GROUP",
    "PluginError",
    "import_module",
    "import_target",
    "load_installed",
    "load_plugins",
    "recorded",
    "resolve_entry",
    "search_next_to",
]

GROUP = "ppaia.plugins"  # the entry-point group of installed packages' plugins

_config_dirs: list[Path] = []  # folders of the config files loaded in this process, newest first
_installed_loaded = False


class PluginError(Exception):
    """A plugin that cannot be found or imported.

    Deliberately not a ValueError: pydantic would fold it into one error per field and go on validating
    the rest of the config against registries the plugin never filled, burying the cause under
    ``unknown rule`` lines. Raised from a validator, it stops validation at once.
    """


def search_next_to(config_file: str | Path) -> None:
    """Search the folder of `config_file` for user modules too (after the working directory)."""
    folder = Path(config_file).resolve().parent
    with suppress(ValueError):
        _config_dirs.remove(folder)
    _config_dirs.insert(0, folder)


def _search_dirs() -> list[Path]:
    return list(dict.fromkeys([Path.cwd(), *_config_dirs]))


@contextmanager
def _on_path(folders: Iterable[Path]) -> Iterator[None]:
    """`folders` at the end of sys.path while a module imports, then off it again (unless the module
    took them off itself): installed packages still come first for the module's own imports."""
    added = [str(folder) for folder in folders if str(folder) not in sys.path]
    importlib.invalidate_caches()  # a module written since the last import must be seen
    sys.path.extend(added)
    try:
        yield
    finally:
        for folder in added:
            with suppress(ValueError):
                sys.path.remove(folder)


def _failed(where: str, name: str, err: BaseException) -> str:
    cause = str(err) if isinstance(err, ModuleNotFoundError) else f"{type(err).__name__}: {err}"
    return f"{where}: importing {name!r} failed: {cause}"


def _is_missing(err: ModuleNotFoundError, name: str) -> bool:
    """Whether `err` says `name` itself (or a package above it) is missing, not one of its imports."""
    return err.name is not None and (name == err.name or name.startswith(f"{err.name}."))


def _attempt(name: str, where: str, error: type[Exception]) -> ModuleType | None:
    """Import `name`; None if it (or a package above it) is not there. A module that is there but fails
    — one of its own imports missing, a SyntaxError, anything it raises — is the user's error, named."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if _is_missing(err, name):
            return None
        raise error(_failed(where, name, err)) from err
    except Exception as err:
        raise error(_failed(where, name, err)) from err


def import_module(name: str, where: str, error: type[Exception] = PluginError) -> ModuleType:
    """Import the user module `name`: from the import path, else the working directory, else the folder
    of a config file loaded in this process. Any failure is one `error` line that starts with `where`
    and names the module."""
    module = _attempt(name, where, error)
    if module is not None:
        return module
    folders = _search_dirs()
    with _on_path(folders):
        module = _attempt(name, where, error)
    if module is not None:
        return module
    cwd, *configs = folders
    file = f"{name.replace('.', '/')}.py"
    near = f" or next to the config ({', '.join(map(str, configs))})" if configs else ""
    give = f", or give its file with --plugin path/to/{file}" if "." not in name else ""
    raise error(
        f"{where}: no module {name!r}; put {file} in the working directory ({cwd}){near}, add the folder "
        f"that holds it to PYTHONPATH{give} (or install the package that provides it)"
    )


def import_target(target: str, where: str, error: type[Exception]) -> Any:
    """The callable ``"package.module:attribute"`` names (a model or data factory), imported as
    :func:`import_module` imports."""
    module_name, attribute = target.split(":")
    module = obj = import_module(module_name, where, error)
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise error(
                f"{where}: cannot import {target!r}: module {module_name!r} has no attribute {attribute!r} "
                f"(it was imported from {getattr(module, '__file__', None) or 'no file'})"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{where}: {attribute!r} is a {type(obj).__name__}, not a callable factory")
    return obj


def _is_file(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def resolve_entry(entry: str, base: Path | None = None) -> str:
    """A plugin entry with a relative file path made absolute against `base` (default: the working
    directory); a module name as it is."""
    return absolute(entry, base) if _is_file(entry) else entry


def _same_file(a: str, b: str) -> bool:
    return os.path.basename(a) == os.path.basename(b) and os.path.realpath(a) == os.path.realpath(b)


def _import_file(entry: str) -> ModuleType:
    """The module of the ``.py`` file `entry`, imported under its file name (a module already imported
    from that file, under any name, is that module: a test or a script may hold it under another)."""
    path = Path(resolve_entry(entry))
    where = f"plugin {entry!r}"
    if not path.is_file():
        raise PluginError(f"{where}: no such file ({path})")
    name = path.stem
    if not name.isidentifier():
        raise PluginError(f"{where}: {name!r} is not a module name; rename the file (letters, digits, _)")
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and _same_file(file, str(path)):
            return module
    if name in sys.modules:
        other = getattr(sys.modules[name], "__file__", None) or "built in"
        raise PluginError(f"{where}: a module named {name!r} is already imported ({other}); rename the file")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py file always has a spec
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_path([path.parent]):  # so that it imports the modules next to it
            spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise PluginError(_failed(where, name, err)) from err
    return module


def load_installed() -> None:
    """Import the plugins of installed packages (entry-point group ``ppaia.plugins``), once per process.

    Marked loaded before importing, so a plugin that looks a name up while it imports does not start
    this again, and a broken one is reported once."""
    global _installed_loaded
    if _installed_loaded:
        return
    _installed_loaded = True
    for point in importlib.metadata.entry_points(group=GROUP):
        try:
            point.load()
        except Exception as err:
            package = f" of package {point.dist.name!r}" if point.dist is not None else ""
            raise PluginError(
                f"plugin {point.value!r} (entry point {point.name!r}{package}): {type(err).__name__}: {err}"
            ) from err


def load_plugins(entries: Iterable[str]) -> list[str]:
    """Import every plugin of `entries` (after the installed ones); their canonical form, as a written
    config records them (:func:`recorded`)."""
    load_installed()
    canonical = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise PluginError(f"plugin {entry!r}: expected a module name or the path of a .py file")
        entry = entry.strip()
        if _is_file(entry):
            _import_file(entry)
            entry = resolve_entry(entry)
        else:
            import_module(entry, f"plugin {entry!r}")
        canonical.append(_entry(entry) or entry)
    return list(dict.fromkeys(canonical))


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({os.path.realpath(paths[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib")})


def _installed(file: str) -> bool:
    """Whether `file` lies in the standard library or the installed packages (found from any folder)."""
    real = os.path.realpath(file)
    return any(real.startswith(root + os.sep) for root in _installed_roots())


def _entry(name: str) -> str | None:
    """How a written config names the module `name` so that it imports from any folder: a plain
    top-level ``.py`` file outside the installed packages by its absolute path, else its name; None for
    ppaia's own modules, a script's ``__main__`` (it cannot be imported again) and a module not found."""
    if _is_file(name):
        return name
    if name == "ppaia" or name.startswith("ppaia.") or name == "__main__":
        return None
    module = sys.modules.get(name)
    if module is not None:
        file = getattr(module, "__file__", None)
    elif "." not in name:  # not imported yet (a factory's module): where import_module would find it
        spec = importlib.util.find_spec(name) or importlib.machinery.PathFinder.find_spec(
            name, [str(folder) for folder in _search_dirs()]
        )
        if spec is None:
            return None  # nowhere: the factory's own error says so when it is built
        file = spec.origin
    else:
        return None
    if (
        "." not in name
        and isinstance(file, str)
        and file.endswith(".py")
        and os.path.basename(file) != "__init__.py"
        and not _installed(file)
    ):
        return os.path.abspath(file)
    return name


def recorded(modules: Iterable[str]) -> list[str]:
    """The ``plugins`` a written config records for `modules` (its plugins, the modules of its
    components and of the factories it names), each once."""
    return list(dict.fromkeys(entry for name in modules if (entry := _entry(name)) is not None))
