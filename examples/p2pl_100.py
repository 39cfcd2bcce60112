"""P2PL with 100 peers: does every peer reach the accuracy of FedAvg and centralized training?

    .venv/bin/python examples/p2pl_100.py [--seeds 3] [--rounds 150] [--out runs/p2pl_100]

100 peers on digits (about 14 training images each), MLP 64-64-10, SGD lr 0.1, 1 local epoch then one
consensus step with row-stochastic uniform weights per round (P2PL). Grid: ring / torus / Erdős–Rényi
(p = 0.06) × IID / Dirichlet(0.5) × link_up 1.0 / 0.5 × max-norm / independent / common initialisation,
plus FedAvg and centralized baselines. Reports the mean and the worst peer, accuracy after the local
phase vs after consensus (the oscillation), and what max-norm synchronisation cost. Writes sweep.csv,
runs.csv and plots; written up in docs/p2pl_100.md.
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
from ppaia.simulation.sweep import SweepRun, sweep_runs, sweep_with_progress

TOPOLOGIES = ["ring", "torus", "erdos_renyi(p=0.06)"]
PARTITIONS = ["iid", "dirichlet(0.5)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("runs/p2pl_100"))
    args = parser.parse_args()
    seeds = list(range(args.seeds))

    base = {
        "peers": 100,
        "rounds": args.rounds,
        "min_samples": 1,
        "lr": 0.1,
        "eval_every": 10,
        "rule": "p2pl",
    }
    grid = {
        "partition": PARTITIONS,
        "topology": TOPOLOGIES,
        "link_up": [1.0, 0.5],
        "init": ["max_norm", "independent", "common"],
    }
    runs = sweep_runs(base, grid, seeds)
    runs += sweep_runs(
        base | {"eval_every": args.rounds}, {"partition": PARTITIONS, "rule": ["fedavg"]}, seeds
    )
    runs += sweep_runs(
        base | {"rounds": 30, "eval_every": 30}, {"partition": PARTITIONS, "rule": ["centralized"]}, seeds
    )
    init_cost: dict[str, list[tuple[int, int]]] = defaultdict(list)
    oscillation: dict[str, list[list[float]]] = defaultdict(list)
    rounds: list[int] = []

    def keep(run: SweepRun, result: RunResult) -> None:
        cell = run.cell
        if cell.get("init") == "max_norm" and cell.get("link_up") == 1.0:
            summary = result.summary()
            init_cost[cell["topology"]].append((summary["init_steps"], summary["init_bytes"]))
        if cell.get("topology") == "ring" and cell.get("init") == "max_norm" and cell.get("link_up") == 1.0:
            key = cell["partition"]
            rounds[:] = [row["round"] for row in result.history]
            oscillation[f"{key}: after local phase"].append([row["local_acc_mean"] for row in result.history])
            oscillation[f"{key}: after consensus"].append([row["acc_mean"] for row in result.history])

    result = sweep_with_progress(runs, metrics=("acc_mean", "acc_min", "local_acc_mean"), on_run=keep)
    result.write(args.out)

    console = Console(width=160)
    baselines = {}
    for cell in result.cells:
        if cell.get("rule") in ("fedavg", "centralized"):
            baselines[(cell["partition"], cell["rule"])] = cell["acc_mean_mean"]
    table = Table(
        title=f"100 peers · digits · mean over {args.seeds} seeds (accuracy of the mean peer / worst peer)"
    )
    for column in (
        "partition",
        "topology",
        "link_up",
        "init",
        "peers: mean",
        "worst peer",
        "fedavg",
        "centralized",
    ):
        table.add_column(column)
    for cell in result.cells:
        if "topology" not in cell:
            continue
        partition = cell["partition"]
        table.add_row(
            partition,
            cell["topology"],
            cell["link_up"],
            cell["init"],
            f"{cell['acc_mean_mean']:.4f} ± {cell['acc_mean_std']:.4f}",
            f"{cell['acc_min_mean']:.4f}",
            f"{baselines[(partition, 'fedavg')]:.4f}",
            f"{baselines[(partition, 'centralized')]:.4f}",
        )
    console.print(table)
    for topology, costs in init_cost.items():
        steps, sent = zip(*costs, strict=True)
        console.print(
            f"max-norm synchronisation on {topology}: {statistics.fmean(steps):.1f} steps, "
            f"{statistics.fmean(sent) / 1e6:.1f} MB"
        )
    lines = {}
    for label, curves in oscillation.items():
        mean = [statistics.fmean(values) for values in zip(*curves, strict=True)]
        lines[label] = (rounds, mean)
    line_plot(
        lines,
        args.out / "oscillation_ring.png",
        xlabel="round",
        ylabel="mean test accuracy",
        title="P2PL on a ring of 100: after local training vs after consensus",
        ylim=(0, 1),
    )
    console.print(f"tables and plots in {args.out}")


if __name__ == "__main__":
    main()
