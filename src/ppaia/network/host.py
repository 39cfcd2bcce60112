"""Many peers of an open swarm in one process: each with its own key, sockets, data and event-loop tasks.

A peer process costs about 300 MB (torch), so a 2-core machine holds few of them; the peers themselves
are small. :class:`Host` runs any number of :class:`~ppaia.network.openswarm.OpenPeer` in one asyncio
loop. They share nothing but the process: each has its own data directory (held with its lock), key,
TCP and UDP sockets, DHT node, view and tasks, and they talk only through the network, like any other
peers. A peer that leaves (:meth:`Host.leave`) is cancelled: its sockets close at once, as when its
process is killed. Training, mixing and checkpoints run in the loop's worker threads, `workers` of
them (1 by default): small models spend most of their time in Python, holding the GIL, and every more
busy thread takes the event loop's share of it, so that the peers' network tasks (statuses, view
exchanges, model replies) miss their deadlines. Measured with 50 peers, 13 to a process: with the
default pool (6 threads) a fifth of the peers found no partner in 30 s while their views were full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ppaia.config import ExperimentConfig
from ppaia.experiment import OwnData
from ppaia.network.datadir import hold
from ppaia.network.dht import Address
from ppaia.network.openswarm import OpenOptions, OpenPeer
from ppaia.network.peer import PeerOptions

__all__ = ["Host", "HostedPeer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostedPeer:
    """One peer a host runs: its data directory, own data (and test set), address and seeds."""

    data_dir: Path
    data: str
    test: str | None
    listen: Address
    bootstrap: tuple[Address, ...] = ()


class Host:
    """Runs open-swarm peers of `config` in this process's event loop (see the module docstring)."""

    def __init__(
        self,
        config: ExperimentConfig,
        swarm: str,
        *,
        wait: float = 60.0,
        linger: float = 30.0,
        sampling: OpenOptions | None = None,
        workers: int = 1,
        door: Callable[[], Awaitable[None]] | None = None,
        release: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.workers = workers
        self.swarm = swarm
        self.wait = wait
        self.linger = linger
        self.sampling = sampling
        self.door = door  # each peer waits at it before it announces itself (see OpenPeer)
        self.release = release  # ... and lingers, once finished, until it says so (see OpenPeer)
        self.peers: dict[str, OpenPeer] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, contextlib.ExitStack] = {}  # each peer's data directory, while it runs

    def build(self, name: str, spec: HostedPeer) -> OpenPeer:
        """Peer `name`'s :class:`OpenPeer` (its data loaded, its directory locked), not started."""
        with contextlib.ExitStack() as locked:
            locked.enter_context(hold(spec.data_dir))
            peer = self._peer(spec)
            self._locks[name] = locked.pop_all()
        return peer

    def _peer(self, spec: HostedPeer) -> OpenPeer:
        own = OwnData.load(spec.data, spec.test, self.config.seed)
        options = PeerOptions(
            index=0,
            data_dir=spec.data_dir,
            listen=spec.listen,
            bootstrap=spec.bootstrap,
            swarm=self.swarm,
            wait=self.wait,
            linger=self.linger,
        )
        return OpenPeer(
            self.config, options, own, sampling=self.sampling, door=self.door, release=self.release
        )

    def join(self, name: str, spec: HostedPeer) -> OpenPeer:
        """Start peer `name` (again, with the same data directory, after it left)."""
        if not self.tasks:  # the first peer: its loop's worker threads are the host's
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=self.workers))
        peer = self.peers[name] = self.build(name, spec)
        log.info("hosted peer %s (%s) is peer %s", name, spec.data_dir, peer.label)
        self.tasks[name] = asyncio.create_task(self._run(name, peer))
        return peer

    async def _run(self, name: str, peer: OpenPeer) -> None:
        try:
            await peer.run()
        finally:
            self._locks.pop(name).close()

    async def leave(self, name: str) -> None:
        """Peer `name` leaves at once (its sockets close, as if its process were killed)."""
        task = self.tasks[name]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def wait_all(self, timeout: float) -> dict[str, BaseException | None]:
        """Wait until every running peer ends (at most `timeout` s, then cancel the rest): each peer's
        error, None for a peer that finished; a cancelled (left) peer is not listed."""
        running = [task for task in self.tasks.values() if not task.done()]
        if running:
            await asyncio.wait(running, timeout=timeout)
        outcome: dict[str, BaseException | None] = {}
        for name, task in self.tasks.items():
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                outcome[name] = TimeoutError(f"peer {name} did not finish within {timeout:g} s")
            elif not task.cancelled():
                outcome[name] = task.exception()
        return outcome
