"""A local open swarm: peers hosted in processes (many per process if asked), joining and leaving on a
schedule. What ``ppaia launch --open`` runs.

Each peer gets its own data file, written up front from the config's dataset split by its seed
(``peers/<i>/data.npz``; the test set in ``test.npz``), and joins by swarm name: nobody is told N, an
index or a member list. Peers are hosted ``per_process`` to a process (:class:`ppaia.network.host.Host`),
each process forked from the same forkserver as ``ppaia launch``'s peers. The config's ``churn``
schedule (:meth:`ppaia.churn.Churn.alive`, the simulator's own) says who is in the swarm in each round:
the launcher follows the swarm's round (the newest round any peer is in) and starts the peers due to
join or come back (with their data directory: they resume) and kills those due to leave (SIGKILL, as a
crash). Peers that share a schedule share processes, so a process is killed or started whole.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch

from ppaia.churn import Churn
from ppaia.config import ExperimentConfig, load_config
from ppaia.network.errors import ProtocolError
from ppaia.network.host import Host, HostedPeer
from ppaia.network.identity import Identity
from ppaia.network.openswarm import OpenOptions, check_open
from ppaia.network.status import PeerStatus
from ppaia.network.swarm import HOST, _forkserver, free_port
from ppaia.network.transfer import fetch_status
from ppaia.seeding import Stream, derive_seed

__all__ = ["Change", "Move", "OpenSwarm", "write_own_data"]


def write_own_data(config: ExperimentConfig, root: Path) -> tuple[list[str], str]:
    """Each peer's share of the config's dataset (split by its partition and seed, as the simulator
    splits it) as its own file, and the test set: the ``--data`` specs and the ``--test`` spec."""
    dataset = config.dataset.load(config.seed)
    labels = dataset.y_train.numpy()
    groups = None if dataset.groups_train is None else dataset.groups_train.numpy()
    parts = config.partition.split(
        labels, config.peers, derive_seed(config.seed, Stream.PARTITION), config.min_samples, groups=groups
    )
    root.mkdir(parents=True, exist_ok=True)
    classes = dataset.n_classes
    np.savez(root / "test.npz", x=dataset.x_test.numpy(), y=dataset.y_test.numpy())
    specs = []
    for i, part in enumerate(parts):
        folder = root / "peers" / str(i)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "data.npz", x=dataset.x_train[part].numpy(), y=dataset.y_train[part].numpy())
        specs.append(f"npz(path='{folder / 'data.npz'}', classes={classes})")
    return specs, f"npz(path='{root / 'test.npz'}', classes={classes})"


def run_host(
    config_file: str, swarm: str, peers: list[tuple[str, HostedPeer]], options: dict, log: str
) -> None:
    """A host process's body: run `peers` (name, spec) until they end; output appended to `log`."""
    handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(handle, stream.fileno())
    os.close(handle)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("kademlia").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    config = load_config(config_file)

    async def main() -> dict[str, BaseException | None]:
        host = Host(config, swarm, sampling=OpenOptions(**options.get("sampling", {})), wait=options["wait"])
        for name, spec in peers:
            host.join(name, spec)
        return await host.wait_all(options["timeout"])

    outcome = asyncio.run(main())
    failed = {name: repr(err) for name, err in outcome.items() if err is not None}
    if failed:
        print(f"error: peers failed: {failed}", flush=True)
    sys.exit(1 if failed else 0)


class Move(StrEnum):
    """What the launcher does to a group of peers when the schedule says so."""

    JOIN = "join"
    BACK = "come back"  # with its data directory: it resumes
    LEAVE = "leave (killed)"  # SIGKILL, as a crash


@dataclass(frozen=True)
class Change:
    """A move the launcher made: when (unix time), at which swarm round, to which peers."""

    at: float
    round: int
    peers: tuple[int, ...]
    move: Move

    def __str__(self) -> str:
        return f"round {self.round}: peers {list(self.peers)} {self.move}"


@dataclass
class OpenSwarm:
    """N open-swarm peers under `root`, `per_process` to a host process, following `config.churn`."""

    config: ExperimentConfig
    root: Path
    per_process: int = 1
    swarm: str = "open"
    wait: float = 30.0
    sampling: dict = field(default_factory=dict)
    timeout: float = 1800.0

    def __post_init__(self) -> None:
        check_open(self.config)
        self.root = Path(self.root)
        self.specs, self.test = write_own_data(self.config, self.root)
        self.config_file = self.root / "config.toml"
        self.config_file.write_text(self.config.to_toml())
        n = self.config.peers
        self.ports = [free_port() for _ in range(n)]
        churn = self.config.churn or Churn()
        self.alive = churn.alive(n, self.config.rounds, self.config.seed)
        self.groups = self._groups()
        self.processes: dict[int, object] = {}  # group -> its process
        self.identity = Identity.generate()  # the launcher's key, to sign status requests
        self.round = 0
        self.last: dict[int, PeerStatus] = {}  # each peer's last status seen (traffic, membership)
        self.started: dict[int, float] = {}  # group -> when (unix time) it was last started
        self.changes: list[Change] = []  # what following the schedule did, in order

    def _groups(self) -> list[list[int]]:
        """Peers hosted together: those with the same schedule, at most `per_process` per group."""
        by_schedule: dict[bytes, list[int]] = {}
        for i in range(self.config.peers):
            by_schedule.setdefault(self.alive[:, i].numpy().tobytes(), []).append(i)
        groups = []
        for peers in by_schedule.values():
            groups += [peers[k : k + self.per_process] for k in range(0, len(peers), self.per_process)]
        return sorted(groups)

    def data_dir(self, peer: int) -> Path:
        return self.root / "peers" / str(peer)

    def _seeds(self, exclude: list[int]) -> tuple[tuple[str, int], ...]:
        """Up to 3 running peers (not in `exclude`) to bootstrap from; none for the very first group."""
        running = [i for g, process in self.processes.items() if process.is_alive() for i in self.groups[g]]
        return tuple((HOST, self.ports[i]) for i in running if i not in exclude)[:3]

    def start(self, group: int) -> None:
        peers = self.groups[group]
        outside = self._seeds(peers)  # none: this group starts the swarm
        hosted = []
        for i in peers:  # a group's peers also seed from its first (the swarm's first peer: from nobody)
            seeds = outside + (((HOST, self.ports[peers[0]]),) if i != peers[0] else ())
            hosted.append(
                (str(i), HostedPeer(self.data_dir(i), self.specs[i], self.test, (HOST, self.ports[i]), seeds))
            )
        options = {"wait": self.wait, "timeout": self.timeout, "sampling": self.sampling}
        log = str(self.root / f"host-{group}.log")
        process = _forkserver().Process(
            target=run_host, args=(str(self.config_file), self.swarm, hosted, options, log)
        )
        process.start()
        self.processes[group] = process
        self.started[group] = time.time()

    def kill(self, group: int) -> None:
        process = self.processes[group]
        process.kill()
        process.join(timeout=10)

    def running(self) -> list[int]:
        return [g for g, process in self.processes.items() if process.is_alive()]

    def stop(self) -> None:
        for group in self.running():
            self.kill(group)

    async def statuses(self, timeout: float = 1.0) -> dict[int, PeerStatus | None]:
        """Each hosted peer's status (None if it does not answer)."""

        async def one(peer: int) -> PeerStatus | None:
            try:
                return await fetch_status(HOST, self.ports[peer], identity=self.identity, timeout=timeout)
            except ProtocolError:
                return None

        peers = [i for g in self.running() for i in self.groups[g]]
        answers = await asyncio.gather(*(one(i) for i in peers))
        return dict(zip(peers, answers, strict=True))

    def follow(self, round_: int) -> list[str]:
        """Apply the schedule up to the swarm's round `round_`: start the groups due in, kill those due
        out; what happened, for the log."""
        events = []
        for group, peers in enumerate(self.groups):
            due = bool(self.alive[max(round_, 1), peers[0]])
            process = self.processes.get(group)
            running = process is not None and process.is_alive()
            if due and not running and (process is None or process.exitcode != 0):
                self.start(group)
                events.append(
                    Change(time.time(), round_, tuple(peers), Move.JOIN if process is None else Move.BACK)
                )
            elif not due and running:
                self.kill(group)
                events.append(Change(time.time(), round_, tuple(peers), Move.LEAVE))
        self.round = round_
        self.changes += events
        return [str(event) for event in events]

    def run(
        self, poll: float = 0.3, watch: Callable[[dict[int, PeerStatus | None]], None] | None = None
    ) -> list[str]:
        """Run the swarm to the end, following the schedule; the events, in order. `watch`, if given, sees
        every poll's statuses (None: the peer did not answer)."""
        events = self.follow(1)
        started = time.monotonic()
        try:
            while self.running():
                if time.monotonic() - started > self.timeout:
                    raise TimeoutError(f"the open swarm did not finish within {self.timeout:.0f} s")
                statuses = asyncio.run(self.statuses())
                if watch is not None:
                    watch(statuses)
                self.last |= {i: status for i, status in statuses.items() if status is not None}
                rounds = [status.round for status in statuses.values() if status is not None]
                if rounds and max(rounds) > self.round:
                    events += self.follow(max(rounds))
                time.sleep(poll)
        finally:
            self.stop()
        return events

    def final(self) -> dict[int, dict[str, float]]:
        """Each peer's last round and accuracy, from its metrics.csv (peers that never ran: absent)."""
        out = {}
        for i in range(self.config.peers):
            path = self.data_dir(i) / "metrics.csv"
            if not path.exists():
                continue
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
            evaluated = [row for row in rows if row["accuracy"]]
            if evaluated:
                out[i] = {"round": int(rows[-1]["round"]), "accuracy": float(evaluated[-1]["accuracy"])}
        return out

    def summary(self) -> dict:
        """Each peer's last round and accuracy, and the bytes it moved as last seen in its status:
        models fetched, and membership traffic (view exchanges, both ways)."""
        traffic = {
            i: {
                "model_bytes_received": status.traffic.received,
                "membership_bytes": 0
                if status.membership is None
                else status.membership.sent + status.membership.received,
                "exchanges": 0 if status.membership is None else status.membership.exchanges,
                "round": status.round,
            }
            for i, status in self.last.items()
        }
        return {
            "peers": self.config.peers,
            "per_process": self.per_process,
            "final": self.final(),
            "traffic": traffic,
        }

    def write_summary(self) -> Path:
        path = self.root / "summary.json"
        path.write_text(json.dumps(self.summary(), indent=2))
        return path
