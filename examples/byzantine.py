"""Byzantine peers: honest-peer accuracy against the share of attackers, for five cooperation rules.

    .venv/bin/python examples/byzantine.py [--seeds 3] [--rounds 30] [--out runs/byzantine]
                                           [--rules consensus,median] [--shares 0,0.3]

20 peers on digits (IID, 20 % of each peer's data held out for validation by every rule), complete graph,
MLP 64-64-10, SGD lr 0.1. Attackers (0, 10, 20, 30 % of peers, chosen by seed) send either their
model with its sign flipped (sign_flip) or pure noise N(0, 1) (gaussian). Honest-peer accuracy leaves
the attackers out. Writes sweep.csv, runs.csv and one plot per attack; written up in docs/byzantine.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ppaia.simulation.report import line_plot
from ppaia.simulation.sweep import parse_grid_option, sweep_runs, sweep_with_progress

RULES = [
    "consensus",
    "learned_trust",
    "learned_trust(prior=0, reach=None)",
    "median",
    "trimmed_mean(beta=0.3)",
    "krum(f=6)",
    "clipped_gossip",
    "balance",
]
ATTACKS = ["sign_flip", "gaussian"]
SHARES = [0.0, 0.1, 0.2, 0.3]


def parse_grid_list(text: str) -> list:
    """A comma-separated list of values, as ``ppaia sweep --grid`` reads them."""
    return parse_grid_option(f"values={text}")[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/byzantine"))
    parser.add_argument("--rules", type=parse_grid_list, default=RULES, help="comma-separated rule specs")
    parser.add_argument(
        "--shares", type=parse_grid_list, default=SHARES, help="comma-separated attacker shares"
    )
    args = parser.parse_args()

    base = {
        "peers": 20,
        "rounds": args.rounds,
        "topology": "complete",
        "partition": "iid",
        "holdout": 0.2,
        "lr": 0.1,
        "eval_every": args.rounds,
    }
    grid = {"attack": ATTACKS, "attackers": args.shares, "rule": args.rules}
    result = sweep_with_progress(sweep_runs(base, grid, list(range(args.seeds))))
    result.write(args.out)

    console = Console(width=150)
    for attack in ATTACKS:
        cells = [cell for cell in result.cells if cell["attack"] == attack]
        table = Table(title=f"honest-peer accuracy, {attack} attackers (mean ± std over {args.seeds} seeds)")
        table.add_column("rule")
        for share in args.shares:
            table.add_column(f"{share:.0%}", justify="right")
        table.add_column(f"{args.shares[-1]:.0%} − {args.shares[0]:.0%}", justify="right")
        lines = {}
        for rule in args.rules:
            mine = [cell for cell in cells if cell["rule"] == rule]
            means = [cell["honest_acc_mean_mean"] for cell in mine]
            table.add_row(
                rule,
                *(f"{c['honest_acc_mean_mean']:.4f} ± {c['honest_acc_mean_std']:.4f}" for c in mine),
                f"{(means[-1] - means[0]) * 100:+.1f} pts",
            )
            lines[rule] = ([100 * share for share in args.shares], means)
        console.print(table)
        line_plot(
            lines,
            args.out / f"{attack}.png",
            xlabel="attackers (% of peers)",
            ylabel="honest-peer test accuracy",
            title=f"{attack} attackers · 20 peers · digits",
            ylim=(0, 1),
        )
    console.print(f"tables and plots in {args.out}")


if __name__ == "__main__":
    main()
