"""A party's side of the chain: its own Ethereum account, and the contract's history read as events.

Each party holds its own secp256k1 key in its data directory (``eth.key``, mode 0600, created on first
start) and signs its transactions itself; the node only relays them, so any Ethereum JSON-RPC node
works, not only one that holds the parties' accounts. Whoever deploys the registry (the launcher, as
its owner) funds the parties' accounts and registers their roles.

:class:`ChainLog` reads the registry's events incrementally (``eth_getLogs`` over the blocks mined since
the last poll, at most LOG_BLOCKS blocks a request, so a long chain's history is never one answer) and
:class:`LedgerState` folds them into what every party and the auditor reason about: who is registered
(in registration order: trainer i is the i-th registered trainer), every update with its votes, every
proposal and release, every score set. Each event carries its position ``seq`` in the chain's order,
so "as of the release" is a comparison anyone can repeat.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.middleware import SignAndSendRawMiddlewareBuilder

from ppaia.ledger.client import Ledger, LedgerError

__all__ = [
    "ETH_KEY_FILE",
    "ChainEvent",
    "ChainLog",
    "LedgerState",
    "Proposal",
    "Release",
    "UpdateRecord",
    "Vote",
    "attach",
    "fund",
    "load_account",
    "register",
]

ETH_KEY_FILE = "eth.key"
LOG_BLOCKS = 2_000  # blocks per eth_getLogs request: public nodes cap a request's range or its answer
FUNDING_WEI = 10**20  # 100 ether: ample gas for a long run on a dev chain


def load_account(data_dir: str | Path) -> LocalAccount:
    """The party's Ethereum account, its key kept in `data_dir` (created there, mode 0600, at first)."""
    path = Path(data_dir) / ETH_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load_key(path)
    account = Account.create()
    with os.fdopen(descriptor, "wb") as file:
        file.write(bytes(account.key))
    return account


def _load_key(path: Path) -> LocalAccount:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise LedgerError(f"{path}: key file has mode {mode:o}; others must not read it (use 0600)")
    raw = path.read_bytes()
    if len(raw) != 32:
        raise LedgerError(f"{path}: expected a 32-byte secp256k1 private key, found {len(raw)} bytes")
    return Account.from_key(raw)


def attach(w3: Web3, address: str, account: LocalAccount) -> Ledger:
    """The registry at `address`, with transactions signed locally by `account`."""
    w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(account), layer=0)
    return Ledger(w3, address)


def fund(ledger: Ledger, sender: str, accounts: Iterable[str], wei: int = FUNDING_WEI) -> None:
    """Send each of `accounts` `wei` from `sender` (an account of the node) so it can pay for gas."""
    w3 = ledger.w3
    for account in accounts:
        tx = w3.eth.send_transaction({"from": sender, "to": account, "value": wei})
        w3.eth.wait_for_transaction_receipt(tx)


def register(ledger: Ledger, trainers: Iterable[str], validators: Iterable[str], quota: int = 1) -> None:
    """As the registry's owner (an account of the node): set the trainers' `quota` of updates per round
    (more than 1: BAP's resubmissions; before any update), fund the parties' accounts and register them,
    trainers then validators, each in the order given (the order is their index: trainer i is the i-th
    registered trainer)."""
    owner = ledger.owner()
    trainers, validators = list(trainers), list(validators)
    if quota != ledger.quota():
        ledger.set_quota(quota, sender=owner)
    fund(ledger, owner, [*trainers, *validators])
    for account in trainers:
        ledger.register_trainer(account, sender=owner)
    for account in validators:
        ledger.register_validator(account, sender=owner)


@dataclass(frozen=True)
class ChainEvent:
    """One registry event: its name, arguments and position `seq` in the chain's order."""

    name: str
    seq: int
    block: int
    args: dict[str, Any]


class ChainLog:
    """The registry's events, read incrementally from block 0 on."""

    def __init__(self, ledger: Ledger, page: int = LOG_BLOCKS) -> None:
        self.ledger = ledger
        self.page = page
        self._next_block = 0
        self._seq = 0
        self._events: dict[bytes, str] = {}
        for entry in ledger.contract.abi:
            if entry.get("type") == "event":
                types = ",".join(arg["type"] for arg in entry["inputs"])
                self._events[bytes(Web3.keccak(text=f"{entry['name']}({types})"))] = entry["name"]

    def poll(self) -> list[ChainEvent]:
        """The events mined since the last poll, in chain order."""
        w3, contract = self.ledger.w3, self.ledger.contract
        head = w3.eth.block_number
        logs = []
        for first in range(self._next_block, head + 1, self.page):  # if one fails, all are asked again
            last = min(head, first + self.page - 1)
            logs += w3.eth.get_logs({"address": contract.address, "fromBlock": first, "toBlock": last})
        self._next_block = max(self._next_block, head + 1)
        events = []
        for raw in sorted(logs, key=lambda entry: (entry["blockNumber"], entry["logIndex"])):
            name = self._events.get(bytes(raw["topics"][0])) if raw["topics"] else None
            if name is None:
                continue
            decoded = contract.events[name]().process_log(raw)
            events.append(ChainEvent(name, self._seq, raw["blockNumber"], dict(decoded["args"])))
            self._seq += 1
        return events


@dataclass(frozen=True)
class Vote:
    validator: str
    valid: bool
    score: int  # fixed point
    seq: int


@dataclass
class UpdateRecord:
    """A submitted update with its votes; `accepted_at` is the seq of its UpdateAccepted event."""

    id: int
    trainer: str
    round: int
    base: int  # the round whose release it trained from: round - 1, or older if it is stale
    digest: bytes
    seq: int
    votes: list[Vote] = field(default_factory=list)
    accepted_at: int | None = None

    def votes_before(self, seq: int) -> list[Vote]:
        return [vote for vote in self.votes if vote.seq < seq]

    def accepted_before(self, seq: int) -> bool:
        return self.accepted_at is not None and self.accepted_at < seq


@dataclass(frozen=True)
class Proposal:
    validator: str
    round: int
    digest: bytes
    score: int
    seq: int


@dataclass(frozen=True)
class Release:
    version: int
    round: int
    digest: bytes
    score: int
    seq: int


@dataclass(frozen=True)
class ScoreSet:
    trainer: str
    validator: str
    score: int
    seq: int


@dataclass
class LedgerState:
    """The registry's history folded into tables (see the module docstring)."""

    trainers: list[str] = field(default_factory=list)
    validators: list[str] = field(default_factory=list)
    registered_at: dict[str, int] = field(default_factory=dict)  # account -> seq of its registration
    updates: dict[int, UpdateRecord] = field(default_factory=dict)
    proposals: list[Proposal] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    score_sets: list[ScoreSet] = field(default_factory=list)
    quota: int = 1  # updates a trainer may submit per round
    seq: int = 0  # one past the last event folded in

    def apply(self, events: Iterable[ChainEvent]) -> None:
        for event in events:
            self._apply(event.name, event.args, event.seq)
            self.seq = event.seq + 1

    def _apply(self, name: str, a: dict[str, Any], seq: int) -> None:
        if name == "TrainerRegistered":
            self.trainers.append(a["trainer"])
            self.registered_at[a["trainer"]] = seq
        elif name == "ValidatorRegistered":
            self.validators.append(a["validator"])
            self.registered_at[a["validator"]] = seq
        elif name == "UpdateSubmitted":
            uid = a["update_id"]
            self.updates[uid] = UpdateRecord(
                uid, a["trainer"], a["round"], a["base_round"], bytes(a["update_hash"]), seq
            )
        elif name == "Voted":
            self.updates[a["update_id"]].votes.append(Vote(a["validator"], a["valid"], a["score"], seq))
        elif name == "UpdateAccepted":
            self.updates[a["update_id"]].accepted_at = seq
        elif name == "ModelProposed":
            self.proposals.append(
                Proposal(a["validator"], a["round"], bytes(a["model_hash"]), a["score"], seq)
            )
        elif name == "ModelReleased":
            self.releases.append(Release(a["version"], a["round"], bytes(a["model_hash"]), a["score"], seq))
        elif name == "ScoreSet":
            self.score_sets.append(ScoreSet(a["trainer"], a["validator"], a["score"], seq))
        elif name == "QuotaSet":
            self.quota = a["quota"]

    def quorum(self, validators: int | None = None) -> int:
        """⌊2V/3⌋ + 1 of the V registered validators (as the contract computes it)."""
        v = len(self.validators) if validators is None else validators
        return 2 * v // 3 + 1

    def validators_at(self, seq: int) -> list[str]:
        """The validators registered before position `seq`."""
        return [v for v in self.validators if self.registered_at[v] < seq]

    def release_of(self, round_: int) -> Release | None:
        return next((r for r in self.releases if r.round == round_), None)

    @property
    def latest(self) -> Release | None:
        return self.releases[-1] if self.releases else None

    def updates_of(self, round_: int) -> list[UpdateRecord]:
        """Round `round_`'s updates, in trainer registration order."""
        order = {trainer: i for i, trainer in enumerate(self.trainers)}
        return sorted((u for u in self.updates.values() if u.round == round_), key=lambda u: order[u.trainer])

    def submitters(self, round_: int) -> set[str]:
        """The trainers with an update in round `round_` (each counted once, however many it submitted)."""
        return {u.trainer for u in self.updates.values() if u.round == round_}

    def proposals_of(self, round_: int) -> list[Proposal]:
        return [p for p in self.proposals if p.round == round_]
