"""Ledger throughput: transactions per second on the in-process EVM and on a local JSON-RPC dev node.

    .venv/bin/python benchmarks/ledger_throughput.py [--transactions 200]

The same scenario on both chains, measured side by side in one run: a trainer submits update hashes
(one per round), three validators vote on each, and the ledger is read back. The JSON-RPC node is the
hardhat node that `make test` installs into devchain/, started on 127.0.0.1 and stopped afterwards.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from ppaia.ledger import Ledger, content_hash
from ppaia.ledger.devchain import dev_node


def measure(ledger: Ledger, transactions: int) -> dict[str, float]:
    """Transactions (or calls) per second for submitting, voting and reading."""
    owner, trainer, *validators = ledger.accounts[:5]
    ledger.register_trainer(trainer, sender=owner)
    for validator in validators:
        ledger.register_validator(validator, sender=owner)
    started = time.perf_counter()
    updates = [
        ledger.submit_update(r, content_hash(str(r).encode()), sender=trainer)
        for r in range(1, transactions + 1)
    ]
    submitted = time.perf_counter()
    for update in updates:
        ledger.vote(update, True, 900_000, sender=validators[update % len(validators)])
    voted = time.perf_counter()
    for update in updates:
        ledger.is_accepted(update)
    read = time.perf_counter()
    return {
        "submit_update tx/s": transactions / (submitted - started),
        "vote tx/s": transactions / (voted - submitted),
        "is_accepted calls/s": transactions / (read - voted),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=200)
    args = parser.parse_args()
    embedded = measure(Ledger.in_process(), args.transactions)
    with dev_node() as url:
        remote = measure(Ledger.connect(url), args.transactions)
    table = Table(title=f"ledger throughput · {args.transactions} transactions of each kind")
    for column in ("operation", "in-process EVM (eth-tester)", "JSON-RPC (hardhat node)", "ratio"):
        table.add_column(column, justify="right")
    for operation, value in embedded.items():
        table.add_row(
            operation, f"{value:,.0f}", f"{remote[operation]:,.0f}", f"{remote[operation] / value:.2f}×"
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
