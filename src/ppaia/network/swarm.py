"""A local swarm: N peer processes on 127.0.0.1, their live status, and the run's outputs.

:class:`Swarm` starts ``ppaia peer`` processes (peer 0 first; the others bootstrap from it),
can kill and restart any of them, polls their status over the wire protocol, and at the end evaluates
the models every peer checkpointed after each round — with the simulator's own evaluator — into a
:class:`RunResult`, so ``ppaia launch`` writes the same files as ``ppaia run``. A peer that died keeps
its last checkpointed model in later rounds' metrics (its initial model if it never checkpointed).
A round file that fails its integrity check counts as never written, and is reported in
:attr:`Swarm.damaged` instead of ending the run (its peer keeps its last model that verifies).
``bytes_sent`` counts model transfers as the simulator does (one model per sender in each peer's row),
not bytes measured on the sockets.

**Start-up.** The peers are separate processes, each with its own memory, sockets and log, but they
are forked from one *forkserver* (:mod:`multiprocessing`) that has already imported torch, ppaia and
what set-up imports lazily (:data:`PRELOAD`): a fresh interpreter spends most of its start-up importing
(5 to 6 s of CPU each), which N processes on a few cores would otherwise pay N times over. The
forkserver only imports (it runs no torch operation, so no thread pool is forked); each peer then runs
the ``ppaia peer`` command as if started from a shell, its output appended to its ``peer.log``.
"""

from __future__ import annotations

import asyncio
import csv
import multiprocessing
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ppaia.config import ExperimentConfig
from ppaia.experiment import Setup
from ppaia.experiment.local import round_context
from ppaia.network.checkpoint import Checkpoint
from ppaia.network.errors import ListenError, ProtocolError
from ppaia.network.identity import Identity
from ppaia.network.members import write_members
from ppaia.network.status import PeerStatus
from ppaia.network.transfer import fetch_status
from ppaia.simulation.engine import BYTES_PER_VALUE, RunResult, measure

__all__ = ["Swarm", "free_port", "free_ports"]

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A port that is free for both TCP and UDP on `host` right now (a peer uses both); ListenError if
    `host` cannot be listened on at all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind((host, 0))
            except OSError as err:  # not this machine's address, ...
                raise ListenError("TCP", host, 0, err) from err
            port = tcp.getsockname()[1]
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
            return port
    raise OSError(f"no free TCP+UDP port on {host}")


def free_ports(n: int, host: str = HOST) -> list[int]:
    """`n` distinct ports, each free for TCP and UDP on `host` right now: :func:`free_port` alone may
    hand out a port twice (the OS may reuse one as soon as its probe closes), and two peers of a
    launcher on one port means one cannot listen."""
    ports: dict[int, None] = {}
    for _ in range(100 * n):
        if len(ports) == n:
            break
        ports[free_port(host)] = None
    if len(ports) < n:
        raise OSError(f"no {n} distinct free TCP+UDP ports on {host}")
    return list(ports)


# What a peer imports: the CLI, and the modules that torch and the data loaders import lazily on first
# use during set-up (torch's meta device and torch.func pull in dynamo and sympy; digits needs
# scikit-learn and scipy). Measured: a peer's set-up takes 2.6 s after the CLI alone, 0.05 s after all.
PRELOAD = [
    "ppaia.cli.main",
    "torch._meta_registrations",
    "torch.func",
    "torch._dynamo",
    "sympy",
    "scipy.optimize",
    "sklearn.datasets",
    "sklearn.model_selection",
]


def _forkserver() -> multiprocessing.context.BaseContext:
    """The context whose server, started once per launcher, has imported what every peer imports."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def run_peer(arguments: list[str], log: str) -> None:
    """A peer process's body: ``ppaia peer ARGUMENTS``, with its output appended to the file `log`."""
    handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(handle, stream.fileno())
    os.close(handle)
    from ppaia.cli.main import app  # already imported by the forkserver: a dictionary lookup

    app(args=["peer", *arguments], prog_name="ppaia")  # exits with the command's code


@dataclass
class Swarm:
    """N local peer processes running one config; their data directories live under `root`."""

    config: ExperimentConfig
    root: Path
    synchronous: bool = True
    extra_args: tuple[str, ...] = ()
    peer_args: dict[int, tuple[str, ...]] = field(default_factory=dict)  # one peer's own options (--data)
    ports: list[int] = field(default_factory=list)
    processes: dict[int, multiprocessing.Process] = field(default_factory=dict)
    damaged: dict[int, list[str]] = field(default_factory=dict)  # peer -> its refused checkpoints (result)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file = self.root / "config.toml"
        self.config_file.write_text(self.config.to_toml())
        self.ports = free_ports(self.config.peers)
        self.identity = Identity.generate()  # the launcher's own key, to sign status requests
        # every peer's key, made now, so the swarm is closed: each peer follows only these keys
        self.members_file = self.root / "peers" / "members.toml"  # next to the peers' data directories
        write_members(
            self.members_file,
            [Identity.load_or_create(self.data_dir(i)).peer_id for i in range(self.n_peers)],
        )

    @property
    def n_peers(self) -> int:
        return self.config.peers

    def data_dir(self, index: int) -> Path:
        return self.root / "peers" / str(index)

    def start(self, index: int | None = None) -> None:
        """Start every peer (peer 0 first, the bootstrap seed), or (re)start peer `index`."""
        for i in range(self.n_peers) if index is None else [index]:
            data_dir = self.data_dir(i)
            data_dir.mkdir(parents=True, exist_ok=True)
            command = [
                "--config", str(self.config_file),
                "--listen", f"{HOST}:{self.ports[i]}",
                "--data-dir", str(data_dir),
                "--partition", f"{i}/{self.n_peers}",
                "--threads", "1",  # N processes share the machine's cores
                "--members", str(self.members_file),
                *([] if self.synchronous else ["--async"]),
                *self.extra_args,
                *self.peer_args.get(i, ()),
            ]  # fmt: skip
            if i != 0:
                command += ["--bootstrap", f"{HOST}:{self.ports[0]}"]
            process = _forkserver().Process(target=run_peer, args=(command, str(data_dir / "peer.log")))
            process.start()
            self.processes[i] = process

    def kill(self, index: int) -> None:
        """Kill peer `index` at once (SIGKILL: no clean-up, as in a crash)."""
        process = self.processes[index]
        process.kill()
        process.join(timeout=10)

    def running(self) -> list[int]:
        return [i for i, process in self.processes.items() if process.is_alive()]

    def exit_codes(self) -> dict[int, int | None]:
        """Each peer's exit code (negative: the signal that ended it), None while it runs."""
        return {i: process.exitcode for i, process in self.processes.items()}

    def stop(self) -> None:
        """Kill every process still running."""
        for process in self.processes.values():
            if process.is_alive():
                process.kill()
        for process in self.processes.values():
            process.join(timeout=10)

    async def statuses(self, timeout: float = 1.0) -> dict[int, PeerStatus | None]:
        """Each running peer's status (None if it does not answer, or with an invalid status)."""

        async def one(index: int) -> PeerStatus | None:
            try:
                return await fetch_status(HOST, self.ports[index], identity=self.identity, timeout=timeout)
            except ProtocolError:
                return None

        indices = self.running()
        answers = await asyncio.gather(*(one(i) for i in indices))
        return dict(zip(indices, answers, strict=True))

    def wait(self, timeout: float) -> dict[int, int]:
        """Wait until every process exited (killing all on timeout); each peer's exit code."""
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            process.join(timeout=max(deadline - time.monotonic(), 0.01))
            if process.is_alive():
                self.stop()
                raise TimeoutError(f"the swarm did not finish within {timeout:.0f} s")
        return {i: process.exitcode for i, process in self.processes.items()}

    def log(self, index: int) -> str:
        path = self.data_dir(index) / "peer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _elapsed(self) -> dict[int, float]:
        """round -> seconds from the first round's start to the slowest peer finishing it (summed per
        peer over its rounds; a restarted peer's repeated rounds count once)."""
        per_peer = [_timings(self.data_dir(i) / "metrics.csv") for i in range(self.n_peers)]
        elapsed, totals = {}, [0.0] * self.n_peers
        for round_ in range(1, self.config.rounds + 1):
            for i, timings in enumerate(per_peer):
                totals[i] += timings.get(round_, 0.0)
            elapsed[round_] = max(totals)
        return elapsed

    def result(self) -> RunResult:
        """The run's metrics from every peer's checkpoints, computed as ``ppaia run`` computes them.
        Checkpoints that fail their checks are left out and listed in :attr:`damaged`."""
        setup = Setup.batch(self.config)  # every peer's initial model, test set and counts
        expected = setup.layout.expected()
        rounds = []
        self.damaged = {}
        for i in range(self.n_peers):
            models, refused = Checkpoint(self.data_dir(i), self.config, i).rounds(expected)
            rounds.append(models)
            if refused:  # paths relative to the root, which `ppaia launch` renames to its output folder
                self.damaged[i] = [str(err).replace(f"{self.root}{os.sep}", "") for err in refused]
        model_bytes = setup.layout.size * BYTES_PER_VALUE
        setup.rule.reset(self.n_peers)
        elapsed = self._elapsed()
        history: list[dict[str, float]] = []
        total = sent = 0
        params = accuracy = loss = None
        for round_ in range(self.config.rounds + 1):
            if round_ > 0:
                plan = setup.rule.plan(round_context(setup, round_))
                sent = plan.models_sent() * model_bytes
                total += sent
            if not self.config.evaluates(round_):
                continue
            params = torch.stack(
                [
                    setup.params[i] if (model := _at(peer, round_)) is None else setup.layout.join(model)
                    for i, peer in enumerate(rounds)
                ]
            )
            row, accuracy, loss = measure(setup, round_, params, history, None)
            row |= {
                "bytes_sent": sent,
                "bytes_cumulative": total,
                "wall_s": elapsed.get(round_, 0.0),
            }
            history.append(row)
        spent = [_spent(self.data_dir(i) / "metrics.csv") for i in range(self.n_peers)]
        snapshots = {}
        if any(spent):  # peers with DP report the ε they spent; a peer without reports 0
            last = torch.tensor([max(rounds.items())[1] if rounds else 0.0 for rounds in spent])
            snapshots["epsilon"] = [(self.config.rounds, last)]
        return RunResult(
            self.config,
            history,
            accuracy,
            loss,
            params,
            setup.train_counts,
            setup.histogram,
            ~setup.honest,
            setup.setup_s,
            snapshots=snapshots,
        )


def _spent(path: Path) -> dict[int, float]:
    """round -> the privacy (ε) the peer had spent after it, from its metrics.csv (empty without DP)."""
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        return {int(row["round"]): float(row["epsilon"]) for row in csv.DictReader(handle) if row["epsilon"]}


def _timings(path: Path) -> dict[int, float]:
    """round -> seconds the peer spent on it (training + mixing), from its metrics.csv."""
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        return {
            int(row["round"]): float(row["train_s"]) + float(row["mix_s"]) for row in csv.DictReader(handle)
        }


def _at(models: dict[int, dict[str, torch.Tensor]], round_: int) -> dict[str, torch.Tensor] | None:
    """A peer's model after `round_`, or its last one before (a peer that died stays as it was); None
    if it never checkpointed (it keeps its initial model)."""
    done = [r for r in models if r <= round_]
    return models[max(done)] if done else None
