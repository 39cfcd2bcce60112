"""Open swarms on this machine: joining a running swarm, peers per host process, traffic as it grows.

Digits (a Dirichlet(1) split written as each peer's own file by ``ppaia launch --open``), MLP 64-32-10,
learned trust with k = 3 (``examples/open_swarm.toml``, without its schedule), synchronous, peers hosted
several to a process (:class:`ppaia.network.openlaunch.OpenSwarm`). Figures:

- join: a 16-peer swarm runs; one more peer is due at round 6 (its own process, started ahead and
  held at the door). From being let in to its first completed round (the first round line in its
  log), the round it joined at, and its process's start-up (started to waiting at the door).
- swarm of N (25, 50, 100) in 4 host processes, ``--rounds`` rounds: wall time; bytes per peer per round
  of model bodies fetched and of membership traffic (view exchanges, both ways), from each peer's last
  status, and membership per round in the rounds' steady state (from the statuses the launcher polls,
  from a quarter in to the last round: without the join, when view exchanges are paced by the clock,
  and the linger); membership bytes per peer per minute, per exchange, and exchanges per peer per
  minute (a peer's view upkeep runs twice a round, within a quarter to ten `period`s); the consensus
  distance (1/N)Σ‖θᵢ − θ̄‖² of the peers'
  models after each round (from their checkpoints), as the simulator computes it, and the simulator's
  for the same config and seed (k random live partners a round, as an open swarm samples them): after
  round 1, at its peak and after the last round. Every peer starts from the same initial model, so the
  distance first grows while the models move away from it on different data, and falls only once the
  partners' mixing outweighs what training pulls apart: a run of a few rounds shows only the growth.
  Also the distinct partners each peer met against what k uniform picks a round would meet (the
  simulator's sampling): partners drawn from a view that changes slowly repeat, and mix the swarm
  more slowly.
- peers per host process: the resident memory of one host process (``/proc``) holding M peers, for
  M = 1, 8 and 32, and what that makes per peer.

    python benchmarks/open_swarm.py [--quick] [--rounds R] [--sizes 25,50,100] [--only join,grow,memory]
                                    [--view V] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
import tomllib
from datetime import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file

import ppaia
from ppaia.network.checkpoint import round_file
from ppaia.network.openlaunch import OpenSwarm
from ppaia.simulation.engine import run as simulate
from ppaia.simulation.metrics import consensus_distance

EXAMPLE = Path(__file__).parents[1] / "examples" / "open_swarm.toml"
# the example's swarm (digits, Dirichlet(1), learned trust k = 3) without its schedule
BASE = {key: value for key, value in tomllib.loads(EXAMPLE.read_text()).items() if key != "churn"} | {
    "min_samples": 10,
    "eval_every": 100,  # the last round only: evaluation is not what is measured
}
SAMPLING = {"view": 12, "shuffle": 6, "period": 1.0}


def swarm(root: Path, peers: int, per_process: int, wait: float = 60.0, **changes) -> OpenSwarm:
    config = ppaia.ExperimentConfig.model_validate(BASE | {"peers": peers} | changes)
    return OpenSwarm(config, root, per_process=per_process, sampling=SAMPLING, wait=wait)


def stamp(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def join_time(root: Path) -> tuple[float, float, int]:
    """A 17th peer due at round 6: seconds from the launcher starting its process to its waiting at the
    door (its start-up: process, data, model, DHT bootstrap; the launcher starts it ahead), and from
    being let in to its first completed round (the join); the round it joined at."""
    run = swarm(root, 17, 4, rounds=14, churn={"joins": {"16": 6}})
    run.run()
    group = next(g for g, peers in enumerate(run.groups) if peers == [16])
    log = (root / f"host-{group}.log").read_text().splitlines()
    held = next(line for line in log if "held until its launcher lets it in" in line)
    first = next(line for line in log if re.search(r"round \d+/\d+", line))
    joined = int(re.search(r"joins at round (\d+)", "\n".join(log))[1])
    return stamp(held) - run.spawned[group], stamp(first) - run.started[group], joined


def distances(root: Path, peers: int, rounds: int) -> list[float]:
    """The consensus distance after each round 1..`rounds`, over the peers' checkpoints of that round."""
    out = []
    for round_ in range(1, rounds + 1):
        models = []
        for i in range(peers):
            path = round_file(root / "peers" / str(i), round_)
            if path.exists():
                models.append(torch.cat([t.flatten() for _, t in sorted(load_file(path).items())]))
        stacked = torch.stack(models)
        out.append(consensus_distance(stacked, torch.ones(len(models), dtype=torch.bool)))
    return out


def simulated(peers: int, rounds: int) -> list[float]:
    """The simulator's consensus distance after each round, same config and seed, k random partners."""
    changes = {"peers": peers, "rounds": rounds, "churn": {}, "eval_every": 1}  # a history row per round
    config = ppaia.ExperimentConfig.model_validate(BASE | changes)
    rows = {row["round"]: row["consensus_distance"] for row in simulate(config).history}
    return [rows[r] for r in range(1, rounds + 1)]


class Steady:
    """Each peer's membership bytes as its statuses show them from the round a quarter in to its last
    round still in progress: membership per round in the rounds' steady state, without the join
    (time-paced exchanges before the first round) and the linger after the last."""

    def __init__(self, rounds: int) -> None:
        self.window = (max(rounds // 4, 2), rounds - 1)
        self.first: dict[int, tuple[int, int]] = {}  # peer -> (round, bytes) when first seen in the window
        self.last: dict[int, tuple[int, int]] = {}

    def __call__(self, statuses) -> None:
        for i, status in statuses.items():
            low, high = self.window
            if status is None or status.membership is None or not low <= status.round <= high:
                continue
            seen = (status.round, status.membership.sent + status.membership.received)
            self.first.setdefault(i, seen)
            self.last[i] = seen

    def per_round(self) -> float:
        spans = [
            (self.last[i][1] - b) / (self.last[i][0] - r)
            for i, (r, b) in self.first.items()
            if self.last[i][0] > r
        ]
        return statistics.mean(spans) if spans else float("nan")


def growth(root: Path, peers: int, rounds: int) -> dict:
    run = swarm(root, peers, -(-peers // 4), rounds=rounds)
    steady = Steady(rounds)
    started = time.monotonic()
    run.run(watch=steady)
    wall = time.monotonic() - started
    traffic = run.summary()["traffic"]
    models = statistics.mean(t["model_bytes_received"] for t in traffic.values()) / rounds
    membership = statistics.mean(t["membership_bytes"] for t in traffic.values())
    exchanges = statistics.mean(t["exchanges"] for t in traffic.values())
    final = run.final()
    unfinished = [i for i in range(peers) if final.get(i, {}).get("round") != rounds]
    return {
        "wall_s": wall,
        "finished": peers - len(unfinished),
        "unfinished": {i: final.get(i, {}).get("round") for i in unfinished},  # peer -> its last round
        "errors": [
            line
            for log in sorted(root.glob("host-*.log"))
            for line in log.read_text().splitlines()
            if line.startswith("error:")
        ],
        "models_per_round": models,
        "membership_per_round": membership / rounds,
        "membership_steady": steady.per_round(),
        "membership_per_minute": membership / (wall / 60),
        "membership_per_exchange": membership / max(exchanges, 1),
        "exchanges_per_minute": exchanges / (wall / 60),
        "distance": distances(root, peers, rounds),
        "simulated": simulated(peers, rounds),
        "partners": partners_met(root, peers, rounds),
    }


def partners_met(root: Path, peers: int, rounds: int, k: int = 3) -> tuple[float, float] | None:
    """Distinct partners each peer met (its last trust row), on average, and what k uniform picks a
    round among the other peers would meet: fewer means partners drawn from a view that changes slowly
    (the simulator draws them uniformly). None for a rule that keeps no trust rows (gossip)."""
    met = []
    for i in range(peers):
        states = sorted((root / "peers" / str(i) / "rounds").glob("learner-*.json"))
        if states:
            met.append(len(json.loads(states[-1].read_text())["rule"] or {}))
    if not any(met):
        return None
    return statistics.mean(met), (peers - 1) * (1 - (1 - k / (peers - 1)) ** rounds)


def course(values: list[float]) -> str:
    """After round 1, at the peak (its round) and after the last round."""
    peak = max(range(len(values)), key=values.__getitem__)
    return f"{values[0]:.3f} / {values[peak]:.3f} (r{peak + 1}) / {values[-1]:.3f}"


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
    parser.add_argument("--rounds", type=int, default=18, help="rounds of the growing swarms")
    parser.add_argument("--sizes", default=None, help="swarm sizes to grow, e.g. 25,50,100")
    parser.add_argument("--only", default="join,grow,memory", help="which figures: join, grow, memory")
    parser.add_argument("--view", type=int, default=SAMPLING["view"], help="members each peer's view holds")
    parser.add_argument("--rule", default=BASE["rule"], help="e.g. gossip (default: the example's)")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    SAMPLING["view"] = args.view
    BASE["rule"] = args.rule
    only = set(args.only.split(","))
    sizes = (
        [int(n) for n in args.sizes.split(",")] if args.sizes else [25, 50] if args.quick else [25, 50, 100]
    )
    console = Console(width=180)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.out or Path(tmp)
        if "join" in only:
            start_up, seconds, joined = join_time(tmp / "join")
            console.print(
                f"join: a new peer completes its first round {seconds:.1f} s after it is let in (joined at "
                f"round {joined}; a running 16-peer swarm in 4 processes); its start-up before, at the "
                f"door: {start_up:.1f} s"
            )
        if "grow" in only:
            table = Table(title=f"open swarm growing ({args.rule}, 4 host processes, {args.rounds} rounds)")
            for column in (
                "peers", "finished", "wall s", "model B/peer/round", "membership B/peer/round (all)",
                "membership B/peer/round, rounds", "membership B/peer/min", "B/exchange",
                "exchanges/peer/min", "distance r1 / peak / last",
                "simulator r1 / peak / last",
            ):  # fmt: skip
                table.add_column(column, justify="right")
            for peers in sizes:
                f = growth(tmp / f"grow{peers}", peers, args.rounds)
                table.add_row(
                    str(peers), str(f["finished"]), f"{f['wall_s']:.1f}", f"{f['models_per_round']:,.0f}",
                    f"{f['membership_per_round']:,.0f}", f"{f['membership_steady']:,.0f}",
                    f"{f['membership_per_minute']:,.0f}",
                    f"{f['membership_per_exchange']:,.0f}", f"{f['exchanges_per_minute']:.1f}",
                    course(f["distance"]), course(f["simulated"]),
                )  # fmt: skip
                console.print(
                    f"{peers} peers, distance after each round: {[round(d, 4) for d in f['distance']]}"
                )
                console.print(f"  the simulator's: {[round(d, 4) for d in f['simulated']]}")
                if f["partners"] is not None:
                    met, uniform = f["partners"]
                    console.print(
                        f"  distinct partners met per peer: {met:.1f} (k uniform picks: {uniform:.1f})"
                    )
                if f["unfinished"]:
                    console.print(f"  did not finish (peer: last round): {f['unfinished']}; {f['errors']}")
            console.print(table)
        if "memory" in only:
            rows = Table(title="peers per host process (resident memory)")
            for column in ("peers in the process", "resident MiB", "MiB per peer"):
                rows.add_column(column, justify="right")
            for hosted in (1, 8) if args.quick else (1, 8, 32):
                peak = memory(tmp / f"mem{hosted}", hosted)
                rows.add_row(str(hosted), f"{peak / 2**20:.0f}", f"{peak / 2**20 / hosted:.0f}")
            console.print(rows)


if __name__ == "__main__":
    main()
