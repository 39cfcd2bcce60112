"""Open swarms on this machine: joining a running swarm, peers per host process, traffic as it grows.

Digits (a Dirichlet(1) split written as each peer's own file by ``ppaia launch --open``), MLP 64-32-10,
learned trust with k = 3, synchronous, peers hosted several to a process
(:class:`ppaia.network.openlaunch.OpenSwarm`). Figures:

- join: a 16-peer swarm runs; one more peer is due at round 6 (its own process). From the launcher
  starting its process to its first completed round (the first round line in its log), and the round
  it joined at.
- swarm of N (25, 50, 100) in 4 host processes, 6 rounds: wall time; bytes per peer per round of model
  bodies fetched and of membership traffic (view exchanges, both ways), from each peer's last status;
  membership bytes per peer per minute; the consensus distance (mean distance of the peers' models to
  their mean) after round 1 and after the last round, from the peers' checkpoints.
- peers per host process: the resident memory of one host process (``/proc``) holding M peers, for
  M = 1, 8 and 32, and what that makes per peer.

    python benchmarks/open_swarm.py [--quick]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file

import ppaia
from ppaia.network.checkpoint import round_file
from ppaia.network.openlaunch import OpenSwarm

BASE = {
    "rounds": 6,
    "seed": 3,
    "model": "mlp(hidden=[32])",
    "lr": 0.2,
    "local_epochs": 1,
    "batch_size": 16,
    "holdout": 0.2,
    "partition": "dirichlet(1.0)",
    "min_samples": 10,
    "rule": "learned_trust(partners=3)",
    "eval_every": 100,  # the last round only: evaluation is not what is measured
}
SAMPLING = {"view": 12, "shuffle": 6, "period": 1.0}


def swarm(root: Path, peers: int, per_process: int, wait: float = 60.0, **changes) -> OpenSwarm:
    config = ppaia.ExperimentConfig.model_validate(BASE | {"peers": peers} | changes)
    return OpenSwarm(config, root, per_process=per_process, sampling=SAMPLING, wait=wait)


def stamp(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def join_time(root: Path) -> tuple[float, int]:
    """Seconds from starting a 17th peer's process (due at round 6) to its first completed round."""
    run = swarm(root, 17, 4, rounds=14, churn={"joins": {"16": 6}})
    run.run()
    group = next(g for g, peers in enumerate(run.groups) if peers == [16])
    log = (root / f"host-{group}.log").read_text().splitlines()
    first = next(line for line in log if re.search(r"round \d+/\d+", line))
    joined = int(re.search(r"joins at round (\d+)", "\n".join(log))[1])
    return stamp(first) - run.started[group], joined


def distance(root: Path, peers: int, round_: int) -> float:
    models = []
    for i in range(peers):
        path = round_file(root / "peers" / str(i), round_)
        if path.exists():
            models.append(torch.cat([t.flatten() for _, t in sorted(load_file(path).items())]))
    stacked = torch.stack(models)
    return float((stacked - stacked.mean(0)).norm(dim=1).mean())


def growth(root: Path, peers: int) -> dict[str, float]:
    run = swarm(root, peers, -(-peers // 4))
    started = time.monotonic()
    run.run()
    wall = time.monotonic() - started
    traffic = run.summary()["traffic"]
    rounds = BASE["rounds"]
    models = statistics.mean(t["model_bytes_received"] for t in traffic.values()) / rounds
    membership = statistics.mean(t["membership_bytes"] for t in traffic.values())
    finished = sum(row["round"] == rounds for row in run.final().values())
    return {
        "wall_s": wall,
        "finished": finished,
        "models_per_round": models,
        "membership_per_round": membership / rounds,
        "membership_per_minute": membership / (wall / 60),
        "distance_first": distance(root, peers, 1),
        "distance_last": distance(root, peers, rounds),
    }


def resident(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def memory(root: Path, hosted: int) -> int:
    """Peak resident bytes of the one host process of a swarm of `hosted` peers, sampled while it runs."""
    run = swarm(root, hosted, hosted, wait=3.0, rounds=4)
    run.follow(1)
    (process,) = run.processes.values()
    peak = 0
    try:
        while process.is_alive():
            peak = max(peak, resident(process.pid))
            time.sleep(0.2)
    finally:
        run.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="25 and 50 peers only; M up to 8")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seconds, joined = join_time(tmp / "join")
        console.print(
            f"join: a new peer completes its first round {seconds:.1f} s after its process starts "
            f"(joined at round {joined}; a running 16-peer swarm in 4 processes)"
        )
        table = Table(title="open swarm growing (4 host processes, 6 rounds)")
        for column in (
            "peers", "finished", "wall s", "model B/peer/round", "membership B/peer/round",
            "membership B/peer/min", "distance r1", f"distance r{BASE['rounds']}",
        ):  # fmt: skip
            table.add_column(column, justify="right")
        for peers in (25, 50) if args.quick else (25, 50, 100):
            f = growth(tmp / f"grow{peers}", peers)
            table.add_row(
                str(peers), str(f["finished"]), f"{f['wall_s']:.1f}", f"{f['models_per_round']:,.0f}",
                f"{f['membership_per_round']:,.0f}", f"{f['membership_per_minute']:,.0f}",
                f"{f['distance_first']:.3f}", f"{f['distance_last']:.3f}",
            )  # fmt: skip
        console.print(table)
        rows = Table(title="peers per host process (resident memory)")
        for column in ("peers in the process", "resident MiB", "MiB per peer"):
            rows.add_column(column, justify="right")
        for hosted in (1, 8) if args.quick else (1, 8, 32):
            peak = memory(tmp / f"mem{hosted}", hosted)
            rows.add_row(str(hosted), f"{peak / 2**20:.0f}", f"{peak / 2**20 / hosted:.0f}")
        console.print(rows)


if __name__ == "__main__":
    main()
