"""The peer axis sharded over ranks: weak and strong scaling, the largest run, and the bytes each rank
sends per round against what the topology implies.

Every measurement starts R real processes (torch.multiprocessing, a Gloo group on 127.0.0.1), each
holding a block of the peers (:mod:`ppaia.simulation.sharded`), and runs a few rounds of consensus on a
ring with the digits-shaped MLP (64 inputs, 64 hidden, 10 classes; D = 4,810 parameters) on a synthetic
Gaussian-mixture dataset of digits' shape with two samples per peer (digits itself has 1,437 training
samples: too few for 10,000 peers). A round's time is the median of the rounds that are not evaluated;
peak RSS is each rank's maximum resident set size (``getrusage``), set-up included.

- weak scaling: `--per-rank` peers on every rank, 1 then 2 ranks (ideal: the same seconds per round);
- strong scaling: `--strong` peers, on 1 then 2 ranks (ideal: half the seconds per round);
- largest: `--largest` peers on 2 ranks, three rounds (the second timed) and two evaluations;
- bytes: each rank's mixing payload per round (ShardedAxis.traffic) against the ring's boundary rows,
  2 per rank per consensus step (each block's first and last peer have a neighbour on another rank),
  and FedAvg's one all_reduce of the server's row.

Each rank runs `--threads` torch threads (default: the machine's cores divided by the ranks, so 1 and 2
ranks use the same cores). Other processes on a shared machine slow every figure.

    python benchmarks/dist_scale.py
    python benchmarks/dist_scale.py --per-rank 1000 --strong 4000 --largest 20000   # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import os
import pickle
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from rich.console import Console
from rich.table import Table

from ppaia import ExperimentConfig

D = 64 * 64 + 64 + 64 * 10 + 10  # the digits MLP's parameters


def workload(peers: int, rounds: int, rule: str = "consensus") -> dict:
    return {
        "peers": peers,
        "rounds": rounds,
        "eval_every": rounds,  # round 0 and the last are evaluated; the others are pure rounds
        "dataset": f"synthetic(samples={2 * peers}, test_samples=360, features=64, classes=10)",
        "partition": "iid",
        "min_samples": 1,
        "model": "mlp(hidden=[64])",
        "rule": rule,
        "topology": "ring",
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, world: int, port: int, threads: int, config: dict, folder: str) -> None:
    torch.set_num_threads(threads)
    from ppaia.simulation.sharded import process_group, sharded_simulation

    with process_group(torch.device("cpu"), f"tcp://127.0.0.1:{port}", rank, world):
        started = time.perf_counter()
        simulation = sharded_simulation(ExperimentConfig.model_validate(config))
        setup_s = time.perf_counter() - started
        stamps: list[float] = []
        simulation.run(lambda _round, _row: stamps.append(time.perf_counter()))
    pure = [later - earlier for earlier, later in itertools.pairwise(stamps[:-1])]  # the last: evaluated
    figures = {
        "setup_s": setup_s,
        "round_s": statistics.median(pure),
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mixing_per_round": simulation.axis.traffic["mixing"] / config["rounds"],
        "peers": len(simulation.axis.rows),
    }
    Path(folder, f"{rank}.pkl").write_bytes(pickle.dumps(figures))


def measure(config: dict, ranks: int, threads: int | None) -> list[dict]:
    """Each rank's figures for one run of `config` on `ranks` ranks."""
    threads = threads or max(1, (os.cpu_count() or 1) // ranks)
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_rank, args=(ranks, _free_port(), threads, config, folder), nprocs=ranks, join=True)
        return [pickle.loads(Path(folder, f"{rank}.pkl").read_bytes()) for rank in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-rank", type=int, default=5000, help="peers per rank (weak scaling)")
    parser.add_argument("--strong", type=int, default=10_000, help="peers (strong scaling)")
    parser.add_argument("--largest", type=int, default=100_000, help="peers on 2 ranks (one round)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per scaling run (at least 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank")
    args = parser.parse_args()
    console = Console(width=120)
    table = Table(title=f"sharded peers: consensus on a ring, digits MLP (D = {D:,}), Gloo on 127.0.0.1")
    for column in ("case", "ranks", "peers", "s / round", "set-up s", "peak RSS MiB / rank"):
        table.add_column(column, justify="right" if column != "case" else "left")
    bytes_rows = []

    def row(case: str, peers: int, ranks: int, rounds: int, rule: str = "consensus") -> list[dict]:
        figures = measure(workload(peers, rounds, rule), ranks, args.threads)
        slowest = max(figure["round_s"] for figure in figures)
        table.add_row(
            case,
            str(ranks),
            f"{peers:,}",
            f"{slowest:.3f}",
            f"{max(figure['setup_s'] for figure in figures):.1f}",
            " / ".join(f"{figure['rss_mib']:,.0f}" for figure in figures),
        )
        return figures

    weak = [row("weak", args.per_rank * ranks, ranks, args.rounds) for ranks in (1, 2)]
    strong = [row("strong", args.strong, ranks, args.rounds) for ranks in (1, 2)]
    largest = row("largest", args.largest, 2, 3)
    fedavg = measure(workload(args.strong, 3, "fedavg"), 2, args.threads)
    console.print(table)
    times = [max(f["round_s"] for f in figures) for figures in (*weak, *strong)]
    console.print(f"weak scaling efficiency 1 → 2 ranks: {times[0] / times[1]:.2f} (ideal 1.00)")
    speed_up = times[2] / times[3]
    console.print(
        f"strong scaling speed-up 1 → 2 ranks at {args.strong:,} peers: {speed_up:.2f} (ideal 2.00)"
    )
    for name, figures, expected in (
        (f"ring consensus, {args.strong:,} peers", strong[1], 2 * D * 4),
        (f"ring consensus, {args.largest:,} peers", largest, 2 * D * 4),
        (f"fedavg, {args.strong:,} peers", fedavg, D * 4),
    ):
        bytes_rows.append((name, [figure["mixing_per_round"] for figure in figures], expected))
    traffic = Table(title="mixing bytes sent per rank per round (2 ranks)")
    for column in ("run", "measured, per rank", "topology implies", "all_gather of every row"):
        traffic.add_column(column, justify="right" if column != "run" else "left")
    for name, measured, expected in bytes_rows:
        peers = args.largest if str(f"{args.largest:,}") in name else args.strong
        traffic.add_row(
            name,
            " / ".join(f"{value:,.0f}" for value in measured),
            f"{expected:,}",
            f"{peers * D * 4:,}",
        )
    console.print(traffic)


if __name__ == "__main__":
    main()
