"""One command for a whole ledger system on one machine: chain, contract, accounts, party processes.

:class:`LedgerSystem` starts a local hardhat node (:func:`~ppaia.ledger.devchain.dev_node`) unless it is
given the JSON-RPC URL of another node, deploys a fresh registry from the node's first account (the
owner), creates every party's data directory with its own keys and (trainers, validators, clients) its
own data file (peer i's share of the config's split: :func:`write_data_files`), funds each party's
Ethereum account from the owner's, registers the roles in order (trainers or clients by peer index, then
validators or the publisher), and starts one process per party. The first validator (the publisher) is
the DHT's seed; the others join through it.

The parties are separate processes (each its own keys, account, data, sockets and memory), started
from a fork server that imported the party code once: importing it takes seconds of CPU per process,
which on a small machine dominated a run. ``ppaia ledger <role>`` runs the same party code as a
process started by hand, e.g. on another machine.

It then waits for the last round's release, or for the committee to give up (a validator or the
publisher found the quorum unreachable, or none is running), audits the run from the chain and the
blobs the parties still serve, and stops the parties. Each party's output is in
``<root>/<role>-<peer>/log.txt``, its time split and fetches in ``stats.json`` next to it.

A FLoBC config (``rule = "flobc"``) gives T trainers and V validators; any other rule gives the publisher
flow: one publisher and ``peers`` clients running FedAvg.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ppaia.config import ExperimentConfig
from ppaia.experiment.shares import write_shares
from ppaia.ledger.client import Ledger, LedgerError
from ppaia.ledger.devchain import dev_node
from ppaia.ledger.parties import process as process_module
from ppaia.ledger.parties.audit import Auditor, AuditRow
from ppaia.ledger.parties.chain import ChainLog, LedgerState, load_account, register
from ppaia.ledger.parties.party import STATS_FILE, Behaviour, PartyOptions
from ppaia.ledger.parties.process import Role, party_process
from ppaia.ledger.parties.rules import quota_of
from ppaia.ledger.parties.storage import BlobPeer
from ppaia.network.identity import Identity
from ppaia.network.swarm import free_port
from ppaia.rules import RULES
from ppaia.rules.flobc import FLoBC

__all__ = ["LedgerSystem", "Outcome", "PartySpec", "Role", "parties_of"]

LOG_FILE = "log.txt"


class Outcome(StrEnum):
    DONE = "done"  # the last round was released
    HALTED = "halted"  # the committee gave up: a release did not come (see Halted)


@dataclass(frozen=True)
class PartySpec:
    role: Role
    peer: int
    behaviour: Behaviour = Behaviour.HONEST
    throttle: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.role}-{self.peer}"

    @property
    def committee(self) -> bool:
        """Validators and the publisher: the parties that release models."""
        return self.role in (Role.VALIDATOR, Role.PUBLISHER)


def system_config(config: ExperimentConfig) -> ExperimentConfig:
    """The config the parties run: FLoBC as it is, anything else as the publisher flow's FedAvg."""
    return (
        config
        if isinstance(config.rule, FLoBC)
        else config.model_copy(update={"rule": RULES.create("fedavg")})
    )


def parties_of(
    config: ExperimentConfig,
    throttle: Mapping[int, float] | None = None,
    behaviour: Mapping[int, Behaviour] | None = None,
) -> list[PartySpec]:
    """Every party of `config`'s system, trainers (clients) first; `throttle` and `behaviour` by peer."""
    throttle, behaviour = throttle or {}, behaviour or {}
    honest = Behaviour.HONEST
    if isinstance(config.rule, FLoBC):
        trainers = config.peers - config.rule.validators
        roles = [Role.TRAINER] * trainers + [Role.VALIDATOR] * config.rule.validators
        return [
            PartySpec(role, i, behaviour.get(i, honest), throttle.get(i, 0.0)) for i, role in enumerate(roles)
        ]
    clients = [
        PartySpec(Role.CLIENT, i, behaviour.get(i, honest), throttle.get(i, 0.0)) for i in range(config.peers)
    ]
    return [*clients, PartySpec(Role.PUBLISHER, 0)]


def write_data_files(
    config: ExperimentConfig, parties: list[PartySpec], data_dir: Callable[[PartySpec], Path], root: Path
) -> dict[str, tuple[str, str | None]]:
    """Give each party but the publisher a data file of its own, ``data.npz`` in its data directory:
    peer i's share of the config's split (:func:`~ppaia.experiment.shares.write_shares`). Returns each
    party's ``data`` and ``test`` specs. Without a held-out share (holdout 0) a party with its own data
    needs a test set: the config's, written once to ``root``."""
    owners = [party for party in parties if party.role is not Role.PUBLISHER]
    test = root / "test.npz" if config.holdout == 0 else None
    data, test_spec = write_shares(config, [(party.peer, data_dir(party)) for party in owners], test)
    return {party.name: (spec, test_spec) for party, spec in zip(owners, data, strict=True)}


class LedgerSystem:
    """A running ledger system (see the module docstring); use as a context manager."""

    def __init__(
        self,
        config: ExperimentConfig,
        root: str | Path,
        parties: list[PartySpec] | None = None,
        *,
        chain: str | None = None,
        timeout: float = 30.0,
        poll: float = 0.1,
        own_data: bool = True,
    ) -> None:
        self.config = system_config(config)
        self.own_data = own_data
        self.root = Path(root)
        self.parties = parties if parties is not None else parties_of(self.config)
        self.chain_url = chain
        self.timeout = timeout
        self.poll = poll
        self.processes: dict[str, multiprocessing.process.BaseProcess] = {}
        self._stack = contextlib.ExitStack()
        self.seed = ""

    def data_dir(self, party: PartySpec) -> Path:
        return self.root / party.name

    def __enter__(self) -> LedgerSystem:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        url = self.chain_url or self._stack.enter_context(dev_node())
        self.chain_url = url
        self.ledger = Ledger.connect(url)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.toml").write_text(self.config.to_toml())
        accounts = {p.name: load_account(self.data_dir(p)).address for p in self.parties}
        files = write_data_files(self.config, self.parties, self.data_dir, self.root) if self.own_data else {}
        register(
            self.ledger,
            [accounts[p.name] for p in self.parties if not p.committee],
            [accounts[p.name] for p in self.parties if p.committee],
            quota_of(self.config.rule),
        )
        seed_port = free_port()
        self.seed = f"127.0.0.1:{seed_port}"
        first = next(p for p in self.parties if p.committee)
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([process_module.__name__])  # imported once, then forked
        for party in [first, *(p for p in self.parties if p is not first)]:
            options = PartyOptions(
                self.config,
                party.peer,
                self.data_dir(party),
                url,
                self.ledger.address,
                () if party is first else (self.seed,),
                seed_port if party is first else 0,
                poll=self.poll,
                timeout=self.timeout,
                throttle=party.throttle,
                behaviour=party.behaviour,
                data=files.get(party.name, (None, None))[0],
                test=files.get(party.name, (None, None))[1],
            )
            log = self.data_dir(party) / LOG_FILE
            process = context.Process(target=party_process, args=(party.role, options, log), name=party.name)
            process.start()
            self.processes[party.name] = process

    def state(self) -> LedgerState:
        """The registry's history so far."""
        state = LedgerState()
        state.apply(ChainLog(self.ledger).poll())
        return state

    def halted(self) -> bool:
        """Whether a committee party gave up (exit code 3 in its stats), or none is running."""
        stats = self.stats()
        committee = [p for p in self.parties if p.committee]
        return any(stats.get(p.name, {}).get("exit") == 3 for p in committee) or not any(
            self.processes[p.name].is_alive() for p in committee
        )

    def wait(self, within: float) -> Outcome:
        """Wait for the last round's release (DONE), or for the committee to give up (HALTED: a
        validator or the publisher found the quorum unreachable, or none is running); TimeoutError after
        `within` seconds."""
        deadline = time.monotonic() + within
        last = self.config.rounds
        log = ChainLog(self.ledger)
        state = LedgerState()
        while True:
            state.apply(log.poll())
            if state.release_of(last) is not None:
                return Outcome.DONE
            if self.halted():
                return Outcome.HALTED
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the run did not end within {within:g} s (at version {len(state.releases)})"
                )
            time.sleep(0.2)

    def audit(self) -> list[AuditRow]:
        """Audit the run on chain, fetching the blobs from the parties over the DHT."""
        return asyncio.run(audit_chain(self.ledger, self.config, [self.seed]))

    def stats(self) -> dict[str, dict]:
        """Each party's stats.json (written once its run ended)."""
        out = {}
        for party in self.parties:
            path = self.data_dir(party) / STATS_FILE
            if path.exists():
                out[party.name] = json.loads(path.read_text())
        return out

    def log(self, party: PartySpec) -> str:
        return (self.data_dir(party) / LOG_FILE).read_text(errors="replace")

    def stop(self) -> None:
        """Terminate the parties (they write their stats and stop serving) and wait for them."""
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()  # SIGTERM: the party writes its stats and stops serving
        for process in self.processes.values():
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            self._stack.close()


async def audit_chain(ledger: Ledger, config: ExperimentConfig, seeds: list[str]) -> list[AuditRow]:
    """:func:`audit` of the registry `ledger`, its blobs fetched over the DHT joined through `seeds`."""
    state = LedgerState()
    state.apply(ChainLog(ledger).poll())
    if not state.releases:
        raise LedgerError("nothing was released on this registry")
    auditor = Auditor(config)
    peer = BlobPeer(Identity.generate(), auditor.layout.expected())
    await peer.start(seeds)
    try:
        return await auditor(state, peer.get)
    finally:
        await peer.stop()
