"""The network package's error contract: one root class, reasons that are enum members, never bare
strings, and a CLI that reports the package's errors as user errors without swallowing bugs."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import ppaia.network
from ppaia.cli.network import NETWORK_ERRORS, RUN_ERRORS
from ppaia.network.errors import NetworkError, ProtocolError

SOURCES = sorted(Path(ppaia.network.__file__).parent.glob("*.py"))
MODULES = [
    importlib.import_module(f"ppaia.network.{info.name}")
    for info in pkgutil.iter_modules(ppaia.network.__path__)
]


def calls_and_comparisons(path: Path) -> tuple[list[ast.Call], list[ast.Compare]]:
    tree = ast.parse(path.read_text(), str(path))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ProtocolError"
    ]
    compares = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)]
    return calls, compares


def is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def mentions_reason(node: ast.AST) -> bool:
    return any(isinstance(part, ast.Attribute) and part.attr == "reason" for part in ast.walk(node))


def test_every_refusal_reason_in_the_network_code_is_an_enum_member_never_a_bare_string():
    offences = []
    for path in SOURCES:
        calls, compares = calls_and_comparisons(path)
        offences += [f"{path.name}:{call.lineno}" for call in calls if call.args and is_str(call.args[0])]
        for compare in compares:
            operands = [compare.left, *compare.comparators]
            if any(mentions_reason(operand) for operand in operands):
                literals = [node for operand in operands for node in ast.walk(operand) if is_str(node)]
                offences += [f"{path.name}:{compare.lineno}" for _ in literals]
    assert not offences, offences


def test_every_error_class_of_the_package_derives_from_its_root():
    errors = {
        cls
        for module in MODULES
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__.startswith("ppaia.network")
    }
    assert ProtocolError in errors and len(errors) >= 8  # the search found the package's classes
    assert {cls.__name__ for cls in errors if not issubclass(cls, NetworkError)} == {"NotReady"}
    # NotReady is no error of anyone's: a peer that does not hold a version yet says so (signed)


def test_the_cli_reports_the_packages_errors_as_user_errors_and_lets_bugs_through():
    for caught in (*NETWORK_ERRORS, *RUN_ERRORS):
        assert not issubclass(ValueError, caught) and not issubclass(RuntimeError, caught), caught
        assert not issubclass(TypeError, caught) and not issubclass(KeyError, caught), caught
    assert NetworkError in NETWORK_ERRORS
    assert all(issubclass(caught, NetworkError) for caught in RUN_ERRORS)
