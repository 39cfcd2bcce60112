"""A local open swarm: peers hosted in processes (many per process if asked), joining and leaving on a
schedule. What ``ppaia launch --open`` runs.

Each peer gets its own data file, written up front from the config's dataset split by its seed
(``peers/<i>/data.npz``; the test set in ``test.npz``), and joins by swarm name: nobody is told N, an
index or a member list. Peers are hosted ``per_process`` to a process (:class:`ppaia.network.host.Host`),
each process forked from the same forkserver as ``ppaia launch``'s peers. The config's ``churn``
schedule (:meth:`ppaia.churn.Churn.alive`, the simulator's own) says who is in the swarm in each round:
the launcher follows the swarm's round (:func:`~ppaia.network.openswarm.swarm_round`: one after the
newest round two peers completed, the round a joiner joins at) and lets in the peers due to
join or come back (with their data directory: they resume) and kills those due to leave (SIGKILL, as a
crash). Peers that share a schedule share processes, so a process is killed or started whole.

Starting a process takes seconds (torch, the data, the DHT's bootstrap, which waits on the nodes of
killed peers), and a swarm of small models runs a round in a fraction of one: a peer started at its
round would join many rounds late, or after the last. So a group due later is started ahead and held
at the door (in the DHT, not yet a member: :class:`ppaia.network.openswarm.OpenPeer`'s `door`) until
the swarm reaches its round; a killed group is started again, held, at once if it comes back. Every
group starts held, and those of round 1 are let in together once all of them are at the door (at most
`wait` seconds), as the simulator's first round has them all. Finished peers keep serving until every
peer let in has joined (at most their `linger`): one let in near the end still finds members to start
from, and ends with their newest models if the swarm is done.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import torch

from ppaia.churn import Churn
from ppaia.config import ExperimentConfig, load_config
from ppaia.experiment.shares import write_shares
from ppaia.network.errors import NetworkError, ProtocolError
from ppaia.network.host import Host, HostedPeer
from ppaia.network.identity import Identity
from ppaia.network.openswarm import OpenOptions, check_open, swarm_round
from ppaia.network.status import PeerStatus, Phase
from ppaia.network.swarm import HOST, _forkserver, free_ports
from ppaia.network.transfer import fetch_status

__all__ = ["Change", "Move", "OpenSwarm", "write_own_data"]


def write_own_data(config: ExperimentConfig, root: Path) -> tuple[list[str], str]:
    """Each peer's share of the config's dataset (split by its partition and seed, as the simulator
    splits it) as its own file (``peers/<i>/data.npz``), and the test set (``test.npz``): the ``--data``
    specs and the ``--test`` spec."""
    peers = [(i, root / "peers" / str(i)) for i in range(config.peers)]
    return write_shares(config, peers, root / "test.npz")


def run_host(
    config_file: str,
    swarm: str,
    peers: list[tuple[str, HostedPeer]],
    options: dict,
    log: str,
    door,
    ready,
    released,
) -> None:
    """A host process's body: run `peers` (name, spec) until they end; output appended to `log`. The
    peers enter the DHT at once, and the swarm when the launcher sets `door`; this process sets `ready`
    once all of them wait at it; finished, they linger until the launcher sets `released` (at most their
    `linger`): all three multiprocessing Events."""
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

    waiting = 0
    launcher = multiprocessing.parent_process()

    async def opened() -> None:
        nonlocal waiting
        waiting += 1
        if waiting == len(peers):
            ready.set()
        while not door.is_set():
            if launcher is not None and not launcher.is_alive():  # nobody will let it in: end
                raise LauncherGone("the launcher is gone before letting this peer in")
            await asyncio.sleep(0.1)

    async def main() -> dict[str, BaseException | None]:
        sampling = OpenOptions(**options.get("sampling", {}))
        host = Host(
            config, swarm, sampling=sampling, wait=options["wait"], door=opened, release=released.is_set
        )
        for name, spec in peers:
            host.join(name, spec)
        return await host.wait_all(options["timeout"])

    outcome = asyncio.run(main())
    failed = {name: repr(err) for name, err in outcome.items() if err is not None}
    if failed:
        print(f"error: peers failed: {failed}", flush=True)
    sys.exit(1 if failed else 0)


class LauncherGone(NetworkError):
    """A held peer's launcher ended (killed, crashed) before letting it in."""


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
        self.ports = free_ports(n)
        churn = self.config.churn or Churn()
        self.alive = churn.alive(n, self.config.rounds, self.config.seed)
        self.groups = self._groups()
        self.processes: dict[int, object] = {}  # group -> its process
        self.doors: dict[int, object] = {}  # group -> its process's door (set: its peers are let in)
        self.ready: dict[int, object] = {}  # group -> set once its process's peers wait at the door
        self.released = _forkserver().Event()  # set: every process's finished peers may stop lingering
        self.identity = Identity.generate()  # the launcher's key, to sign status requests
        self.round = 0
        self.last: dict[int, PeerStatus] = {}  # each peer's last status seen (traffic, membership)
        self.started: dict[int, float] = {}  # group -> when (unix time) it was last let in
        self.spawned: dict[int, float] = {}  # group -> when (unix time) its process was last started
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

    def start(self, group: int, *, held: bool = False) -> None:
        """Start `group`'s process; its peers join the swarm at once, or when :meth:`admit`ted if
        `held` (their start-up, seconds on a loaded machine, is then behind them)."""
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
        door = self.doors[group] = _forkserver().Event()
        ready = self.ready[group] = _forkserver().Event()
        process = _forkserver().Process(
            target=run_host,
            args=(str(self.config_file), self.swarm, hosted, options, log, door, ready, self.released),
        )
        process.start()
        self.processes[group] = process
        self.spawned[group] = time.time()
        if not held:
            self.admit(group)

    def admit(self, group: int) -> None:
        """Let `group`'s peers into the swarm."""
        self.doors[group].set()
        self.started[group] = time.time()

    def admitted(self, group: int) -> bool:
        return self.doors[group].is_set()

    def _startable(self, group: int) -> bool:
        """Whether `group` has no process running: never started, killed or crashed (one that exited
        with 0 finished)."""
        process = self.processes.get(group)
        return process is None or (not process.is_alive() and process.exitcode != 0)

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
        """Apply the schedule up to the swarm's round `round_`: let in (or start) the groups due in,
        kill those due out; a group due in later runs held until then (started ahead, so that its
        start-up does not make it join rounds late). What happened, for the log."""
        events = []
        now = min(max(round_, 1), self.config.rounds)
        due = {group: bool(self.alive[now, peers[0]]) for group, peers in enumerate(self.groups)}
        for group, peers in enumerate(self.groups):  # the kills first: nobody bootstraps from them
            if not due[group] and group in self.running() and self.admitted(group):
                self.kill(group)
                events.append(Change(time.time(), round_, tuple(peers), Move.LEAVE))
        for group, peers in enumerate(self.groups):
            running = group in self.running()
            move = Move.BACK if group in self.started else Move.JOIN
            if due[group] and (self._startable(group) or (running and not self.admitted(group))):
                if running:
                    self.admit(group)
                else:
                    self.start(group)
                events.append(Change(time.time(), round_, tuple(peers), move))
            elif not due[group] and self.alive[now + 1 :, peers[0]].any() and self._startable(group):
                self.start(group, held=True)
        self.round = round_
        self.changes += events
        return [str(event) for event in events]

    def run(
        self, poll: float = 0.3, watch: Callable[[dict[int, PeerStatus | None]], None] | None = None
    ) -> list[str]:
        """Run the swarm to the end, following the schedule; the events, in order. `watch`, if given, sees
        every poll's statuses (None: the peer did not answer)."""
        started = time.monotonic()
        try:
            for group, peers in enumerate(self.groups):  # all at once, held: start-up is behind them all
                if self.alive[1:, peers[0]].any():
                    self.start(group, held=True)
            first = [g for g, peers in enumerate(self.groups) if self.alive[1, peers[0]]]
            while time.monotonic() - started < self.wait:  # the first members start the swarm together
                if all(self.ready[group].is_set() for group in first):
                    break
                time.sleep(poll)
            events = self.follow(1)
            while any(self.admitted(group) for group in self.running()):  # else the held wait for nothing
                if time.monotonic() - started > self.timeout:
                    raise TimeoutError(f"the open swarm did not finish within {self.timeout:.0f} s")
                statuses = self._poll(watch)
                round_ = swarm_round(
                    [
                        s.completed.round
                        for s in statuses.values()
                        if s is not None and s.completed is not None
                    ]
                )
                if round_ > self.round:
                    events += self.follow(round_)
                if self.round >= self.config.rounds and not self.released.is_set():
                    self._release(statuses)
                time.sleep(poll)
        finally:
            self.stop()
        return events

    def _release(self, statuses: dict[int, PeerStatus | None]) -> None:
        """Once the schedule has let everyone in: release the finished peers from lingering when every
        peer let in has joined (it trains, mixes or has finished). Until then they keep serving, so
        that one let in near the end, whose joining took longer than the swarm's last rounds, still
        finds members to start from (at most their `linger`)."""
        joined = (Phase.TRAINING, Phase.MIXING, Phase.FINISHED)
        admitted = [i for g in self.running() if self.admitted(g) for i in self.groups[g]]
        if all(statuses.get(i) is not None and statuses[i].phase in joined for i in admitted):
            self.released.set()

    def _poll(self, watch) -> dict[int, PeerStatus | None]:
        """The hosted peers' statuses, shown to `watch` and kept (the last seen of each)."""
        statuses = asyncio.run(self.statuses())
        if watch is not None:
            watch(statuses)
        self.last |= {i: status for i, status in statuses.items() if status is not None}
        return statuses

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
