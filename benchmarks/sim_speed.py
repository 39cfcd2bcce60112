"""Simulator speed: the peer-batched engine against the per-peer reference executor, in one run.

Digits, MLP 64-64-10, SGD lr 0.05, batch 32, 1 local epoch, consensus on a ring, 20 rounds, for
N = 10, 100 and 1,000 peers; then a synthetic task with N = 10,000 peers (engine only, in a fresh
process so its peak memory is its own). Prints seconds per round for each phase and the ratios.

Evaluation (every peer on the shared test set) is timed apart from a round's training + cooperation:
it is the same arithmetic for both executors, so batching can only save its overheads.

    python benchmarks/sim_speed.py            # or: make bench
"""

from __future__ import annotations

import itertools
import json
import resource
import statistics
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

from ppaia import ExperimentConfig, ReferenceSimulation, Simulation

ROUNDS = 20
DIGITS = {
    "dataset": "digits",
    "partition": "iid",
    "min_samples": 1,
    "model": "mlp(hidden=[64])",
    "optimizer": "sgd",
    "lr": 0.05,
    "batch_size": 32,
    "local_epochs": 1,
    "rule": "consensus",
    "topology": "ring",
    "rounds": ROUNDS,
    "eval_every": ROUNDS,
}
SYNTHETIC = DIGITS | {
    "peers": 10_000,
    "dataset": "synthetic(samples=200000, test_samples=1000, features=32, classes=10)",
    "rounds": 5,
    "eval_every": 5,
}


def measure(simulation: Simulation) -> dict[str, float]:
    """Median seconds of a round's training + cooperation, seconds of one evaluation, final accuracy."""
    stamps: list[float] = []
    result = simulation.run(lambda _round, _row: stamps.append(time.perf_counter()))
    durations = [b - a for a, b in itertools.pairwise(stamps[:-1])]  # the last round includes an evaluation
    evaluations = []
    for _ in range(3):
        tick = time.perf_counter()
        simulation.evaluate(result.params)
        evaluations.append(time.perf_counter() - tick)
    return {
        "round_s": statistics.median(durations),
        "eval_s": statistics.median(evaluations),
        "setup_s": simulation.setup.setup_s,
        "acc": result.final["acc_mean"],
    }


def synthetic_case() -> None:
    """Run in a child process: print the 10,000-peer measurement and peak memory as JSON."""
    numbers = measure(Simulation(ExperimentConfig(**SYNTHETIC)))
    numbers["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(numbers))


def main() -> None:
    console = Console(width=160)
    table = Table(title=f"engine vs reference · digits · MLP 64-64-10 · consensus/ring · {ROUNDS} rounds")
    for column in (
        "peers",
        "engine s/round",
        "reference s/round",
        "ratio",
        "engine eval s",
        "reference eval s",
        "eval ratio",
        "full-round ratio",
        "accuracy engine / reference",
    ):
        table.add_column(column, justify="right")
    for peers in (10, 100, 1000):
        config = ExperimentConfig(**DIGITS | {"peers": peers})
        engine = measure(Simulation(config))
        reference = measure(ReferenceSimulation(config))
        full = (reference["round_s"] + reference["eval_s"]) / (engine["round_s"] + engine["eval_s"])
        table.add_row(
            f"{peers:,}",
            f"{engine['round_s']:.4f}",
            f"{reference['round_s']:.4f}",
            f"{reference['round_s'] / engine['round_s']:.1f}×",
            f"{engine['eval_s']:.4f}",
            f"{reference['eval_s']:.4f}",
            f"{reference['eval_s'] / engine['eval_s']:.1f}×",
            f"{full:.1f}×",
            f"{engine['acc']:.4f} / {reference['acc']:.4f}",
        )
        console.print(f"measured N={peers}", style="dim")
    console.print(table)

    child = subprocess.run(
        [sys.executable, __file__, "--synthetic"], capture_output=True, text=True, check=True, timeout=1800
    )
    big = json.loads(child.stdout.strip().splitlines()[-1])
    console.print(
        f"synthetic · 10,000 peers · {SYNTHETIC['dataset']} · MLP 32-64-10 · consensus/ring: "
        f"{big['round_s']:.3f} s/round (training + cooperation), {big['eval_s']:.3f} s per evaluation "
        f"(10,000 models × 1,000 test samples), set-up {big['setup_s']:.1f} s, "
        f"peak memory {big['peak_rss_mib']:.0f} MiB, final accuracy {big['acc']:.4f}"
    )


if __name__ == "__main__":
    synthetic_case() if "--synthetic" in sys.argv else main()
