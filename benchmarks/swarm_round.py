"""A local swarm's round time: 16 ``ppaia peer`` processes on 127.0.0.1 against the simulator, in one run.

Digits, MLP 64-64-10, SGD lr 0.05, batch 32, 1 local epoch, consensus on a ring, 16 peers, 10 rounds,
synchronous. The peers are started by :class:`ppaia.network.swarm.Swarm`; the numbers come from what
they leave in their data directories:

- set-up: from starting the processes until a peer has joined and is about to train round 1 (the time
  of its round-0 checkpoint); the median peer and the last one. Mostly interpreter start-up, imports
  and building the experiment, every process competing for the machine's cores.
- round: for each round the slowest peer's training + mixing time (``peers/<i>/metrics.csv``), median
  over the rounds. Peers are not in lock-step: a peer that is ahead waits for a late neighbour, and
  that wait travels round the ring one hop per round, so this is a peer's round *latency*. The swarm's
  *pace* is the interval between the last peer finishing round r - 1 and the last finishing round r
  (from the checkpoints' times), median over rounds 2..R.
- not training: mix_s / (train_s + mix_s) summed over peers and rounds 2..R (round 1 also holds the
  wait for the last peers to start): fetching, verifying and averaging the neighbours' models, and
  above all waiting for them.
- accuracy: the swarm's final mean test accuracy (its checkpoints evaluated by ``Swarm.result``) next to
  ``ppaia.run`` of the same config, which it should equal: nobody is left out in synchronous mode.

    python benchmarks/swarm_round.py
"""

from __future__ import annotations

import asyncio
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import ppaia
from ppaia.network.checkpoint import round_file
from ppaia.network.swarm import Swarm

PEERS = 16
ROUNDS = 10
CONFIG = {
    "peers": PEERS,
    "rounds": ROUNDS,
    "eval_every": ROUNDS,  # peers evaluate only at the end; evaluation is outside train_s and mix_s
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
}
TIMEOUT = 900.0  # seconds before the swarm is stopped


def peer_rows(swarm: Swarm, index: int) -> list[dict[str, float]]:
    with open(swarm.data_dir(index) / "metrics.csv", newline="") as handle:
        return [{key: float(value or "nan") for key, value in row.items()} for row in csv.DictReader(handle)]


def run_swarm(config: ppaia.ExperimentConfig, root: Path) -> tuple[Swarm, float, float]:
    """Run the swarm to the end; (swarm, wall-clock start, seconds until every process exited)."""
    swarm = Swarm(config, root)
    started = time.time()
    swarm.start()
    try:
        while swarm.running():  # bounded by TIMEOUT; show progress now and then
            if time.time() - started > TIMEOUT:
                raise TimeoutError(f"the swarm did not finish within {TIMEOUT:.0f} s")
            statuses = asyncio.run(swarm.statuses())
            rounds = [info.round for info in statuses.values() if info]
            print(f"\r{time.time() - started:6.1f} s  rounds of the peers up: {sorted(rounds)}", end="")
            time.sleep(1.0)
        print()
        codes = swarm.wait(timeout=30)
    finally:
        swarm.stop()
    failed = {i: code for i, code in codes.items() if code != 0}
    if failed:
        raise RuntimeError(f"peers failed: {failed} (logs in {root}/peers)")
    return swarm, started, time.time() - started


def main() -> None:
    console = Console(width=160)
    config = ppaia.ExperimentConfig(**CONFIG)
    with tempfile.TemporaryDirectory(prefix="swarm-round-") as temporary:
        swarm, started, total_s = run_swarm(config, Path(temporary))
        done = [  # done[r][i]: when peer i checkpointed round r (seconds since the start)
            [os.path.getmtime(round_file(swarm.data_dir(i), r)) - started for i in range(PEERS)]
            for r in range(ROUNDS + 1)
        ]
        rows = [peer_rows(swarm, i) for i in range(PEERS)]
        result = swarm.result()
    simulated = ppaia.run(config)

    ready = done[0]
    slowest = [max(peer[r]["train_s"] + peer[r]["mix_s"] for peer in rows) for r in range(ROUNDS)]
    pace = [max(done[r]) - max(done[r - 1]) for r in range(2, ROUNDS + 1)]
    train = sum(row["train_s"] for peer in rows for row in peer[1:])
    mix = sum(row["mix_s"] for peer in rows for row in peer[1:])

    table = Table(
        title=f"swarm of {PEERS} peer processes · digits · MLP 64-64-10 · consensus/ring · {ROUNDS} rounds"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in (
        ("set-up: start → ready for round 1 (median peer)", f"{statistics.median(ready):.1f} s"),
        ("set-up: start → ready for round 1 (last peer)", f"{max(ready):.1f} s"),
        ("round: slowest peer's train + mix (median over rounds)", f"{statistics.median(slowest):.3f} s"),
        ("round: the swarm's pace, last peer to last peer (median)", f"{statistics.median(pace):.3f} s"),
        ("training per peer and round (mean, rounds 2..R)", f"{train / (PEERS * (ROUNDS - 1)):.3f} s"),
        ("share of a round not training: mix / (train + mix), rounds 2..R", f"{mix / (train + mix):.1%}"),
        ("whole run: start → every process exited (incl. linger)", f"{total_s:.1f} s"),
        (
            "simulator: seconds per round, all peers in one process",
            f"{simulated.final['wall_s'] / ROUNDS:.3f} s",
        ),
        (
            "final accuracy: swarm / simulator",
            f"{result.final['acc_mean']:.4f} / {simulated.final['acc_mean']:.4f}",
        ),
    ):
        table.add_row(name, value)
    console.print(table)
    console.print(
        f"{os.cpu_count()} CPU cores for {PEERS} processes. Per round, slowest peer: "
        + " ".join(f"{seconds:.2f}" for seconds in slowest)
        + "; pace (rounds 2..R): "
        + " ".join(f"{seconds:.2f}" for seconds in pace),
        style="dim",
    )


if __name__ == "__main__":
    main()
