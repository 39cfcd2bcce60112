"""What every ledger party process shares: its keys, its slice of the experiment, the chain, the blobs.

A party is one process with its own data directory (its Ed25519 network key and its Ethereum key), its
own data (a file of its own, ``data``: a trainer's or client's training rows, a validator's validation
rows, read with :meth:`Setup.own`; without one, :meth:`Setup.peer`: peer i's share of the config's split), a
JSON-RPC connection to the registry, and a :class:`~ppaia.ledger.parties.storage.BlobPeer`. It polls
the chain's events (:class:`~ppaia.ledger.parties.chain.ChainLog`) and acts on them; every wait on
other parties is bounded by `timeout` seconds on the wall clock, after which the party concludes what
the protocol says (a trainer missing at a barrier is left out; a release that does not come means the
quorum cannot be reached: :class:`Halted`).

After the last round is released a party keeps serving its blobs for `linger` seconds (until it is
terminated, by default) so an auditor can fetch them. Its time split and its fetches are written to
``stats.json`` in its data directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from web3 import Web3

from ppaia.codec import decode, encode
from ppaia.config import ExperimentConfig
from ppaia.experiment import OwnData, Setup
from ppaia.ledger.client import LedgerError
from ppaia.ledger.parties.chain import ChainLog, LedgerState, Release, attach, load_account
from ppaia.ledger.parties.rules import quota_of
from ppaia.ledger.parties.storage import BlobPeer
from ppaia.network.identity import Identity

__all__ = ["STATS_FILE", "Behaviour", "Halted", "Party", "PartyOptions"]

log = logging.getLogger(__name__)

STATS_FILE = "stats.json"
T = TypeVar("T")


class Behaviour(StrEnum):
    """How a party plays, for tests: honest, or one of the misbehaviours the quorum rules must withstand."""

    HONEST = "honest"
    NOISE = "noise"  # trainer: submits random parameters
    LIAR = "liar"  # trainer: records the hash of its model on chain, serves other bytes under it
    AGAINST = "against"  # validator: votes every update invalid, with score 0
    SILENT = "silent"  # validator: never votes nor proposes


class Halted(LedgerError):
    """The run cannot go on: a release did not come within the timeout (the quorum cannot be reached)."""


@dataclass(frozen=True)
class PartyOptions:
    config: ExperimentConfig
    peer: int  # this party's index in the config (its data: peer `peer`'s share)
    data_dir: Path
    chain: str  # JSON-RPC URL
    contract: str  # the registry's address
    bootstrap: tuple[str, ...] = ()  # DHT seeds, host:port
    dht_port: int = 0
    host: str = "127.0.0.1"
    poll: float = 0.1  # seconds between reads of the chain
    timeout: float = 30.0  # the longest wait on other parties, seconds
    throttle: float = 0.0  # extra seconds per local update: a straggler
    behaviour: Behaviour = Behaviour.HONEST
    linger: float = math.inf  # seconds to keep serving blobs after the run
    data: str | None = (
        None  # this party's own data: a .npz/.csv path or dataset spec (as `ppaia peer --data`)
    )
    test: str | None = None  # and its test set, if it has no held-out share


@dataclass
class Timing:
    """Seconds a party spent per activity: chain (transactions), reads (of the chain's events), transfer,
    compute, and play (its whole run)."""

    seconds: Counter[str] = field(default_factory=Counter)

    async def timed(self, what: str, work: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await work
        finally:
            self.seconds[what] += time.perf_counter() - started


class Party:
    """The common runtime of the roles (see the module docstring); subclasses implement :meth:`play`."""

    role: ClassVar[str]
    aggregates: ClassVar[bool] = True  # False for a role that only trains: others weigh its model

    def __init__(self, options: PartyOptions) -> None:
        self.options = options
        self.config = options.config
        if options.data is None:
            self.setup = Setup.peer(self.config, options.peer)
        else:
            own = OwnData.load(options.data, options.test, self.config.seed)
            self.setup = Setup.own(self.config, options.peer, own, aggregates=self.aggregates)
        self.layout = self.setup.layout
        self.identity = Identity.load_or_create(options.data_dir)
        self.account = load_account(options.data_dir)
        self.ledger = attach(Web3(Web3.HTTPProvider(options.chain)), options.contract, self.account)
        self.log = ChainLog(self.ledger)
        self.state = LedgerState()
        # every blob of the run is a model of this layout: its encoding has exactly this many bytes
        size = len(encode(self.layout.unflatten(self.setup.params[0])))
        self.blobs = BlobPeer(self.identity, self.layout.expected(), max_bytes=size)
        self.timing = Timing()
        self.code = 1  # until play ends: an error the role does not handle (its traceback follows)

    @property
    def address(self) -> str:
        return self.account.address

    async def play(self) -> None:
        raise NotImplementedError

    async def run(self) -> int:
        """Play the role to the end, then serve blobs for `linger` seconds; 0 when the last round was
        released, 3 if the run halted (also written to stats.json, as soon as play ends)."""
        await self.blobs.start(self.options.bootstrap, dht_port=self.options.dht_port)
        try:
            started = time.perf_counter()
            try:
                await self.play()
                self.code = 0
            except Halted as err:
                log.error("%s %d: %s", self.role, self.options.peer, err)
                self.code = 3
            self.timing.seconds["play"] = time.perf_counter() - started
            self.write_stats()
            if math.isfinite(self.options.linger):
                await asyncio.sleep(self.options.linger)
            else:
                await asyncio.Event().wait()  # serve until terminated
        finally:
            self.write_stats()
            await self.blobs.stop()
        return self.code

    def write_stats(self) -> None:
        stats = {
            "role": self.role,
            "peer": self.options.peer,
            "peer_id": self.identity.peer_id,
            "account": self.address,
            "exit": self.code,
            "data": self.options.data,  # its own data file's spec; None: its share of the config's split
            "rows": len(self.setup.dataset.y_train),
            "seconds": dict(self.timing.seconds),
            "fetches": [vars(f) for f in self.blobs.stats.fetches],
            "refused": dict(self.blobs.stats.refused),
            "unavailable": self.blobs.stats.unavailable,
            "served": self.blobs.server.served["model"],
        }
        (self.options.data_dir / STATS_FILE).write_text(json.dumps(stats, indent=1))

    # --- the chain --------------------------------------------------------------------------------

    async def chain(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a ledger transaction off the event loop (blobs keep being served meanwhile), timed as
        chain (sent, mined and its receipt read)."""
        return await self.timing.timed("chain", asyncio.to_thread(call, *args, **kwargs))

    async def refresh(self) -> LedgerState:
        """Read the events mined since the last refresh (timed as reads: mostly waiting on others)."""
        self.state.apply(await self.timing.timed("reads", asyncio.to_thread(self.log.poll)))
        return self.state

    async def wait_for(self, condition: Callable[[LedgerState], bool], timeout: float | None = None) -> bool:
        """Poll the chain until `condition(state)` holds (True) or `timeout` seconds passed (False)."""
        deadline = time.monotonic() + (self.options.timeout if timeout is None else timeout)
        while not condition(await self.refresh()):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(self.options.poll)
        return True

    async def release_of(self, round_: int) -> Release:
        """Round `round_`'s release once it is on chain; Halted if it does not come within the timeout."""
        if not await self.wait_for(lambda s: s.release_of(round_) is not None):
            raise Halted(
                f"round {round_} was not released within {self.options.timeout:g} s: the quorum of "
                f"validators cannot be reached; the run stops at version {len(self.state.releases)}"
            )
        release = self.state.release_of(round_)
        assert release is not None
        return release

    async def registered(self, accounts: Callable[[LedgerState], list[str]], index: int) -> None:
        """Wait until the owner registered this party among `accounts` of its role, at position `index`:
        the i-th registered trainer is trainer i of the rule (its weights, scores, the order of the
        aggregate), so it must be the party holding peer i's data. The registry's quota of updates per
        trainer and round, set before anyone registered, must be the config's (:func:`quota_of`), so that
        every party plays the same sync scheme."""
        if not await self.wait_for(lambda s: self.address in accounts(s)):
            raise Halted(
                f"{self.address} was not registered as a {self.role} within {self.options.timeout:g} s"
            )
        position = accounts(self.state).index(self.address)
        if position != index:
            raise Halted(
                f"{self.address} is registered as {self.role} {position}, but holds the data of {self.role} "
                f"{index} (peer {self.options.peer}): register the parties in peer order"
            )
        if self.state.quota != quota_of(self.config.rule):
            raise Halted(
                f"the registry lets a trainer submit {self.state.quota} updates per round, the config "
                f"{quota_of(self.config.rule)}: set its quota before registering the parties"
            )

    # --- models as blobs --------------------------------------------------------------------------

    async def fetch(self, digest: bytes) -> torch.Tensor:
        """The flat model named `digest` on chain, fetched from any provider and verified (BlobUnavailable
        if none hands it over)."""
        data = await self.timing.timed("transfer", self.blobs.get(digest))
        return self.layout.join(decode(data, self.layout.expected()))

    async def publish(self, flat: torch.Tensor, *, serve_as: bytes | None = None) -> bytes:
        """Serve `flat` as a blob and provide it on the DHT; its digest."""
        data = encode(self.layout.unflatten(flat))
        return await self.timing.timed("transfer", self.blobs.put(data, serve_as=serve_as))

    async def compute(self, work: Callable[..., T], *args: Any) -> T:
        """CPU work (training, scoring) off the event loop, timed as compute."""
        return await self.timing.timed("compute", asyncio.to_thread(work, *args))
