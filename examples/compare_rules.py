"""Compare the baseline cooperation rules on the same non-IID digits split.

    .venv/bin/python examples/compare_rules.py [--peers 16] [--rounds 40] [--seeds 3]

Prints mean ± std (over seeds) of final test accuracy across peers, the worst peer and the bytes sent, and
writes every run's output folder under --out.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

import ppaia
from ppaia.simulation.stats import estimate

RULES = ["isolated", "gossip", "consensus", "consensus(steps=4)", "fedavg", "centralized"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--partition", default="dirichlet(0.3)")
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--out", type=Path, default=Path("runs/compare_rules"))
    args = parser.parse_args()

    table = Table(
        title=f"{args.peers} peers · digits · {args.partition} · {args.topology} · {args.rounds} rounds"
    )
    for column in ("rule", "accuracy mean", "worst peer", "MB sent"):
        table.add_column(column, justify="right")
    for rule in RULES:
        finals = []
        for seed in range(args.seeds):
            config = ppaia.ExperimentConfig(
                peers=args.peers,
                rounds=args.rounds,
                seed=seed,
                rule=rule,
                partition=args.partition,
                topology=args.topology,
            )
            result = ppaia.run(config)
            ppaia.write_outputs(result, args.out / f"{rule}-seed{seed}")
            finals.append(result.final)
        accuracy = [f["acc_mean"] for f in finals]
        table.add_row(
            rule,
            f"{estimate(accuracy).mean:.4f} ± {estimate(accuracy).sd:.4f}",  # sample sd (NaN for one seed)
            f"{statistics.mean(f['acc_min'] for f in finals):.4f}",
            f"{statistics.mean(f['bytes_cumulative'] for f in finals) / 1e6:.1f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
