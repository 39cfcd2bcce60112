"""Federated learning with Elastic Weight Consolidation: the original 90/10 client split, and forgetting.

    .venv/bin/python examples/fedlearning_ewc.py [--seeds 3] [--out runs/fedlearning_ewc]

Part 1 reproduces the original system's set-up on digits: 2 clients, client 0 holds 90 % of digits 0–4 and
10 % of 5–9, client 1 the complement (`majority`), MLP with 128 hidden units, SGD lr 0.1, batch 64, from
random initialisation, with and without EWC (λ = 25, Fisher from S = 200 sampled labels), after one epoch
(12 steps on digits) and after 33 epochs (396 steps, about the 398 of the original's one MNIST epoch); the
original reported client accuracies 0.8153 / 0.8461 on MNIST. Part 2 shows forgetting: the same
split and 10 peers see classes 0–4 for 10 rounds, then 5–9 for 10 rounds, with FedAvg; EWC anchored at
the end of the first task for λ ∈ {0, 25, 100}, and at every round's start for λ = 25. Writes sweep
tables and plots; written up in docs/fedlearning_ewc.md.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ppaia import RunResult
from ppaia.simulation.report import line_plot
from ppaia.simulation.stats import estimate
from ppaia.simulation.sweep import SweepRun, sweep_runs, sweep_with_progress

ORIGINAL = {"peers": 2, "partition": "majority", "model": "mlp(hidden=[128])", "lr": 0.1, "batch_size": 64}
EWC = {"strength": 25.0, "samples": 200, "fisher": "sampled"}
TASKS = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/fedlearning_ewc"))
    args = parser.parse_args()
    seeds, console = list(range(args.seeds)), Console(width=150)

    # Part 1: from random initialisation, each client on its own (as the original effectively ran)
    clients: dict[tuple[int, int, bool], list[list[float]]] = defaultdict(list)
    grid = {"local_epochs": [1, 33], "ewc": [None, EWC | {"anchor": "round"}]}

    def keep_clients(run: SweepRun, result: RunResult) -> None:
        steps = run.config.local_epochs * -(-int(result.n_samples.max()) // run.config.batch_size)
        clients[(run.config.local_epochs, steps, run.cell["ewc"] is not None)].append(
            result.peer_accuracy.tolist()
        )

    first = sweep_with_progress(
        sweep_runs(ORIGINAL | {"rounds": 1, "rule": "isolated"}, grid, seeds), on_run=keep_clients
    )
    first.write(args.out / "one_epoch")
    table = Table(
        title=f"Part 1: each client's test accuracy from random init (mean ± std over {args.seeds} seeds)"
    )
    for column in (
        "epochs (SGD steps)",
        "EWC",
        "client 0 (90 % of 0–4)",
        "client 1 (90 % of 5–9)",
        "original",
    ):
        table.add_column(column)
    for (epochs, steps, with_ewc), accuracies in clients.items():
        per_client = list(zip(*accuracies, strict=True))
        cells = [f"{estimate(c).mean:.4f} ± {estimate(c).sd:.4f}" for c in per_client]  # sample sd
        label = "λ = 25, anchor = start of round" if with_ewc else "no"
        table.add_row(f"{epochs} ({steps})", label, *cells, "0.8153 / 0.8461 (MNIST, 1 epoch = 398 steps)")
    console.print(table)

    # Part 2: two tasks in turn, FedAvg, EWC anchored at the end of the first task
    curves: dict[tuple[str, str], list[list[float]]] = defaultdict(list)

    def keep(run: SweepRun, result: RunResult) -> None:
        key = (str(run.cell["peers"]), run.cell["ewc.anchor"], str(run.cell["ewc.strength"]))
        curves[key].append([row["task0_acc"] for row in result.history])

    base = ORIGINAL | {"rounds": 20, "rule": "fedavg", "tasks": TASKS, "ewc": EWC | {"anchor": "task"}}
    runs = sweep_runs(
        base, {"peers": [2, 10], "ewc.anchor": ["task"], "ewc.strength": [0.0, 25.0, 100.0]}, seeds
    )
    runs += sweep_runs(base, {"peers": [2, 10], "ewc.anchor": ["round"], "ewc.strength": [25.0]}, seeds)
    second = sweep_with_progress(
        runs,
        metrics=("task0_acc", "task1_acc", "acc_mean", "forgetting"),
        on_run=keep,
    )
    second.write(args.out / "forgetting")
    table = Table(title=f"Part 2: after both tasks, FedAvg (mean ± std over {args.seeds} seeds)")
    for column in (
        "peers",
        "anchor",
        "EWC λ",
        "task 0 (digits 0–4)",
        "task 1 (digits 5–9)",
        "all digits",
        "forgetting",
    ):
        table.add_column(column)
    for cell in second.cells:
        table.add_row(
            cell["peers"],
            cell["ewc.anchor"],
            cell["ewc.strength"],
            *(
                f"{cell[f'{m}_mean']:.4f} ± {cell[f'{m}_std']:.4f}"
                for m in ("task0_acc", "task1_acc", "acc_mean")
            ),
            f"{cell['forgetting_mean']:.4f} ± {cell['forgetting_std']:.4f}",
        )
    console.print(table)
    for peers in ("2", "10"):
        lines = {}
        for strength in ("0.0", "25.0", "100.0"):
            mine = curves[(peers, "task", strength)]
            lines[f"λ = {strength}"] = (
                list(range(len(mine[0]))),
                [statistics.fmean(v) for v in zip(*mine, strict=True)],
            )
        line_plot(
            lines,
            args.out / f"task0_accuracy_{peers}_peers.png",
            xlabel="round (task 0 until 10, then task 1)",
            ylabel="accuracy on digits 0–4",
            title=f"forgetting of task 0 · {peers} peers · FedAvg",
            ylim=(0, 1),
        )
    console.print(f"tables and plots in {args.out}")


if __name__ == "__main__":
    main()
