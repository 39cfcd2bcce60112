"""Compile Registry.vy into the committed artifact.json (ABI + bytecode), so run time needs no compiler.

Run ``python -m ppaia.ledger.compile`` after editing the contract; a test checks the two still agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import vyper

__all__ = ["ARTIFACT", "SOURCE", "compile_contract", "main"]

SOURCE = Path(__file__).with_name("Registry.vy")
ARTIFACT = Path(__file__).with_name("artifact.json")


def compile_contract() -> dict[str, Any]:
    """The contract's ABI, deployment bytecode and the compiler that produced them."""
    out = vyper.compile_code(SOURCE.read_text(), output_formats=["abi", "bytecode"])
    return {"abi": out["abi"], "bytecode": out["bytecode"], "compiler": f"vyper {vyper.__version__}"}


def dumps(artifact: dict[str, Any]) -> str:
    """The artifact as it is written to disk: sorted keys, so a recompile of the same source is a no-op."""
    return json.dumps(artifact, indent=2, sort_keys=True) + "\n"


def main() -> None:
    ARTIFACT.write_text(dumps(compile_contract()))
    print(f"wrote {ARTIFACT}")


if __name__ == "__main__":
    main()
